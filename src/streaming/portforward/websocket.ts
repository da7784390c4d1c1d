// Port-forward over WebSocket channels (PROTOCOL.md section 5): the handshake and the
// session's lifecycle. The framing of channels is channel-codec.ts. One pod connection per
// port of the grant; the WebSocket closes (1000) once every port's forward has ended.

import type { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { WebSocket } from 'ws';
import { frozenNow, type AdoptedSession, type MovableSession, type MovedSession } from '../../handover/movable';
import { holdReads, releaseReads, releaseSocket, socketFd } from '../../handover/sockets';
import { Pipe, type PipeState } from '../../pipe';
import { DuplexClient } from '../../pipe-client';
import type { PodIdentity } from '../../policy/port-policy';
import { BudgetedBound } from '../../buffer-budget';
import { FEW_STREAMS_BULK_SLAB_BYTES, readIntoOwnedSlabs, type ChunkTracker } from '../owned-reads';
import { sendPlainOnSocket } from '../plain-answer';
import type { PortForwardProtocol } from '../protocol';
import type { SessionGrant } from '../tokens';
import {
  CHANNEL_SUBPROTOCOLS,
  ChannelDecoder,
  CLOSE_NORMAL,
  encodingOf,
  portPrefix,
  sendOnChannel,
  V4_BASE64,
  V4_BINARY,
  type ChannelEncoding,
} from './channel-codec';
import { forwardConnection, pipeForward, type ForwardDeps, type ForwardRequest } from './forward';
import { movedGrant } from './spdy';
import type { ForwardVerdict } from './verdict';
import { adoptWebSocket, feedPending, receiverPending } from './ws-handover';
import { acceptWebSocket, consumeIntoSpanBuffers, isWebSocketUpgrade, keepAlive, offeredSubprotocols, receiverHolds, SPDY_TUNNEL_PROTOCOL } from './ws-server';

/** Bytes a data channel may hold that its pod socket has not taken, before the WebSocket is no longer read. */
const CHANNEL_RECEIVE_BUFFER_BYTES = 1024 * 1024;
/** What a channel may hold before the buffer budget is asked for CHANNEL_RECEIVE_BUFFER_BYTES. */
const CHANNEL_BASE_RECEIVE_BYTES = 64 * 1024;
/** After our close frame, how long the client gets to answer before the socket is destroyed. */
const CLOSE_LINGER_MS = 1_000;

/** What a channel asks of its session. */
interface ChannelOwner {
  /** The channel's reader wants more: the session may read the WebSocket again. */
  channelWantsData(channel: ChannelStream): void;
  /** The channel is gone: it holds nothing back any more. */
  channelDestroyed(channel: ChannelStream): void;
  /** A payload this channel pushed has been consumed for good (the pod socket wrote it). */
  chunkReleased(chunk: Buffer): void;
}

/** One channel of a WebSocket as a Duplex: writes become messages prefixed by the channel. */
class ChannelStream extends Duplex {
  constructor(
    private readonly socket: WebSocket,
    private readonly channel: number,
    private readonly encoding: ChannelEncoding,
    private readonly owner: ChannelOwner,
    /** How much unread data it may hold before the WebSocket is no longer read. */
    readonly receiveBound: BudgetedBound,
  ) {
    super({ allowHalfOpen: true, readableHighWaterMark: receiveBound.limit });
  }

  /** The pipe is done with a chunk it read from here: its read slab may be reused. */
  releaseChunk(chunk: Buffer): void {
    this.owner.chunkReleased(chunk);
  }

  override _read(): void {
    this.owner.channelWantsData(this);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, callback: (err?: Error | null) => void): void {
    sendOnChannel(this.socket, this.channel, this.encoding, chunk, callback);
  }

  // v4 has no per-channel close: the end of one direction shows only when the socket closes.
  override _final(callback: (err?: Error | null) => void): void {
    callback();
  }

  override _destroy(err: Error | null, callback: (err: Error | null) => void): void {
    this.owner.channelDestroyed(this);
    callback(err);
  }
}

export class WebSocketPortForwardProtocol implements PortForwardProtocol {
  readonly description = `WebSocket with subprotocol ${V4_BINARY}, ${V4_BASE64} or none`;

  constructor(private readonly deps: ForwardDeps) {}

  accepts(req: IncomingMessage): boolean {
    return isWebSocketUpgrade(req) && !offeredSubprotocols(req).includes(SPDY_TUNNEL_PROTOCOL);
  }

  serve(req: IncomingMessage, socket: Duplex, head: Buffer, grant: SessionGrant): void {
    const offered = offeredSubprotocols(req);
    const protocol = offered.length === 0 ? '' : offered.find((p) => CHANNEL_SUBPROTOCOLS.includes(p));
    if (protocol === undefined) {
      this.#refuse(socket, 'unsupported-subprotocol', `requested WebSocket subprotocols ${JSON.stringify(offered)} are not supported; supported: ${V4_BINARY}, ${V4_BASE64} or none`);
      return;
    }
    if (grant.ports.length === 0) {
      this.#refuse(socket, 'no-ports', 'port-forward over WebSocket needs the ports in the PortForward request (kubelet takes them from the "port" query parameter)');
      return;
    }
    // Reads into reused slabs, as the SPDY transports (owned-reads.ts): a binary message's
    // payload is a view of one, released once the pod socket has written it.
    let accepted: WebSocket | undefined;
    const chunks =
      socket instanceof Socket
        ? readIntoOwnedSlabs(socket, this.deps.budget, (chunk) => accepted === undefined || receiverHolds(accepted, chunk), () => FEW_STREAMS_BULK_SLAB_BYTES)
        : undefined;
    void acceptWebSocket(req, socket, head, protocol).then((ws) => {
      accepted = ws;
      if (chunks !== undefined) consumeIntoSpanBuffers(ws, chunks);
      new ChannelSession(ws, grant, encodingOf(protocol), this.deps, chunks, chunks === undefined ? undefined : (socket as Socket)).start();
    });
  }

  #refuse(socket: Duplex, reason: string, body: string): void {
    this.deps.metrics.handshakeFailures.inc({ protocol: 'websocket', reason });
    sendPlainOnSocket(socket, { status: 400, body });
  }
}

/** Where one port's forward is: dialling, piping, or over (its channels ended). */
type PortForward = { state: 'dialling' } | { state: 'piping'; pipe: Pipe; pod: PodIdentity; started: number } | { state: 'ended' };

/** A channel session as an upgrade hands it over: each port's forward, piping or over. */
export interface ChannelSessionState {
  forwards: ({ port: number; ended: true } | { port: number; ended?: false; started: number; pod: PodIdentity; pipe: PipeState })[];
}

/** One WebSocket: a data and an error channel per port of the grant. */
class ChannelSession implements ChannelOwner, MovableSession {
  readonly protocol = 'websocket';
  readonly #data: ChannelStream[] = [];
  readonly #errors: ChannelStream[] = [];
  readonly #forwards: PortForward[] = [];
  readonly #decoder: ChannelDecoder;
  #closed = false;
  /** Metrics and streams released (once, whoever closed first). */
  #released = false;
  #stopKeepAlive: (() => void) | undefined;
  #frozenAt = 0n;
  /** An upgrade is taking its state: the WebSocket stays paused, thaw() decides. */
  #frozen = false;
  /** Adopted pipes, started with the session. */
  readonly #adoptedPipes: Pipe[] = [];

  constructor(
    private readonly ws: WebSocket,
    private readonly grant: SessionGrant,
    private readonly encoding: ChannelEncoding,
    private readonly deps: ForwardDeps,
    private readonly chunks: ChunkTracker | undefined,
    /** The client connection, when it can move to an upgrade's new process (plain TCP). */
    private readonly movableSocket: Socket | undefined,
  ) {
    this.#decoder = new ChannelDecoder(encoding, grant.ports.length);
  }

  get socket(): Socket {
    return this.movableSocket!;
  }

  #startKeepAlive(): void {
    this.#stopKeepAlive = keepAlive(this.ws, this.deps.pingIntervalMs, this.deps.idleTimeoutMs, () => this.#close(CLOSE_NORMAL, 'idle timeout'));
  }

  /** The channels, the WebSocket's events and the metrics: a new session's and an adopted one's. */
  #open(adopted: boolean): void {
    const { ws, grant, deps } = this;
    deps.metrics.sessionsActive.inc({ protocol: 'websocket' });
    // An adopted session was counted by the old process (its counters carry over).
    if (!adopted) deps.metrics.sessionsTotal.inc({ protocol: 'websocket' });
    ws.on('message', (data: Buffer, isBinary: boolean) => this.#onMessage(data, isBinary));
    ws.on('error', (err) => deps.log.debug('WebSocket error', { err }));
    ws.on('close', () => this.#onClose());
    for (let i = 0; i < grant.ports.length; i++) {
      const data = new ChannelStream(ws, 2 * i, this.encoding, this, this.#receiveBound());
      const error = new ChannelStream(ws, 2 * i + 1, this.encoding, this, this.#receiveBound());
      // A client that vanishes fails the channels' writes (EPIPE from ws). The pipe hears it
      // on the data channel while it runs; before it starts (the port prefix, the dial) and
      // on the error channel, the WebSocket's own close ends everything.
      data.on('error', () => undefined);
      error.on('error', () => undefined);
      this.#data.push(data);
      this.#errors.push(error);
    }
    if (this.movableSocket !== undefined) {
      deps.sessions.add(this);
      ws.once('close', () => deps.sessions.delete(this));
    }
  }

  start(): void {
    this.#open(false);
    this.#startKeepAlive();
    const forwards = this.grant.ports.map((port, i) => {
      this.#data[i]!.write(portPrefix(port));
      this.#errors[i]!.write(portPrefix(port));
      return this.#forward(i);
    });
    void Promise.all(forwards).then(() => this.#close(CLOSE_NORMAL, ''));
  }

  // ---- upgrade handover ---------------------------------------------------------------

  freeze(): void {
    this.#frozenAt = frozenNow();
    this.#frozen = true;
    this.#stopKeepAlive?.();
    this.ws.pause();
    holdReads(this.socket);
  }

  /** As the SPDY session's (spdy.ts): the pods are read until what the client sent is delivered, then flushed the other way. */
  quiesce(): boolean {
    const ws = this.ws;
    if (this.#closed || ws.readyState !== ws.OPEN || this.socket.readableLength > 0) return false;
    if (!this.#podsFrozen) {
      for (const f of this.#forwards) if (f.state === 'dialling' || (f.state === 'piping' && !f.pipe.podBoundDrained)) return false;
      for (const f of this.#forwards) if (f.state === 'piping') f.pipe.freeze();
      this.#podsFrozen = true;
    }
    if (this.socket.writableLength > 0) return false;
    for (const f of this.#forwards) if (f.state === 'piping' && !f.pipe.isQuiet) return false;
    for (const c of this.#data) if (c.readableLength > 0 || c.writableLength > 0) return false;
    for (const c of this.#errors) if (c.writableLength > 0) return false;
    return receiverPending(ws) !== undefined;
  }

  #podsFrozen = false;

  thaw(): void {
    this.#frozen = false;
    this.#podsFrozen = false;
    releaseReads(this.socket);
    for (const f of this.#forwards) if (f.state === 'piping') f.pipe.thaw();
    if (!this.#closed) this.#startKeepAlive();
    this.#resumeUnlessHeld(undefined);
  }

  exportState(fds: number[]): MovedSession {
    fds.push(socketFd(this.socket));
    const socketIndex = fds.length - 1;
    const forwards = this.#forwards.map((f, i): ChannelSessionState['forwards'][number] => {
      const port = this.grant.ports[i]!;
      if (f.state === 'piping') return { port, started: f.started, pod: f.pod, pipe: f.pipe.exportState(fds) };
      return { port, ended: true };
    });
    return {
      protocol: 'websocket',
      grant: movedGrant(this.grant),
      socketFd: socketIndex,
      frozenAt: String(this.#frozenAt),
      ws: { protocol: this.ws.protocol, pending: receiverPending(this.ws)!.toString('base64') },
      channels: { forwards },
    };
  }

  release(): void {
    this.deps.sessions.delete(this);
    for (const f of this.#forwards) if (f.state === 'piping') f.pipe.release();
    this.deps.metrics.sessionsActive.dec({ protocol: 'websocket' });
    this.#released = true;
    releaseSocket(this.socket);
  }

  /** An upgrade's new process: the channels and their pipes as the old process left them, paused. */
  adopt(state: ChannelSessionState, fds: number[]): void {
    this.#open(true);
    const forwards = state.forwards.map((f, i) => {
      if (f.ended === true) {
        this.#forwards[i] = { state: 'ended' };
        this.#data[i]!.end();
        this.#errors[i]!.end();
        return Promise.resolve();
      }
      const data = this.#data[i]!;
      const pipe = new Pipe(new DuplexClient(data), fds[f.pipe.podFd]!, { graceMs: this.deps.halfCloseGraceMs, budget: this.deps.budget }, f.pipe);
      this.#forwards[i] = { state: 'piping', pipe, pod: f.pod, started: f.started };
      this.#adoptedPipes.push(pipe);
      return pipeForward(this.deps, this.#request(i), f.pod, pipe, f.started).then((verdict) => this.#forwarded(i, verdict));
    });
    void Promise.all(forwards).then(() => this.#close(CLOSE_NORMAL, ''));
  }

  /** An adopted session: go. */
  startAdopted(): void {
    for (const pipe of this.#adoptedPipes) pipe.start();
    this.#adoptedPipes.length = 0;
    this.#startKeepAlive();
    this.#resumeUnlessHeld(undefined);
  }

  #receiveBound(): BudgetedBound {
    return new BudgetedBound(this.deps.budget, CHANNEL_BASE_RECEIVE_BYTES, CHANNEL_RECEIVE_BUFFER_BYTES);
  }

  #request(i: number, onPiped?: ForwardRequest['onPiped']): ForwardRequest {
    return { grant: this.grant, port: this.grant.ports[i]!, client: new DuplexClient(this.#data[i]!), protocol: 'websocket', isAborted: () => this.#closed, onPiped };
  }

  async #forward(i: number): Promise<void> {
    const forward: PortForward = { state: 'dialling' };
    this.#forwards[i] = forward;
    const verdict = await forwardConnection(
      this.deps,
      this.#request(i, (pipe, pod) => (this.#forwards[i] = { state: 'piping', pipe, pod, started: Date.now() })),
    );
    await this.#forwarded(i, verdict);
  }

  async #forwarded(i: number, verdict: ForwardVerdict): Promise<void> {
    this.#forwards[i] = { state: 'ended' };
    const data = this.#data[i]!;
    const error = this.#errors[i]!;
    if (verdict.errorText !== undefined && !error.destroyed) error.write(Buffer.from(verdict.errorText));
    // v4 has no per-channel reset or close (verdict.resetData): both channels just end, and
    // everything queued on them goes out before the WebSocket closes.
    if (!data.destroyed) data.end();
    if (!error.destroyed) error.end();
    const flushed = (s: Duplex): Promise<void> => finished(s, { readable: false }).catch(() => undefined);
    await Promise.all([flushed(data), flushed(error)]);
    if (verdict.endSession) this.#close(CLOSE_NORMAL, '');
  }

  #onMessage(message: Buffer, isBinary: boolean): void {
    const index = this.#decoder.decode(message, isBinary);
    if (index < 0) return this.#close(this.#decoder.closeCode, this.#decoder.reason);
    const payload = this.#decoder.payload;
    const stream = this.#data[index]!;
    if (payload.length === 0 || stream.destroyed) return;
    this.chunks?.retain(payload);
    if (!stream.push(payload)) {
      const bound = stream.receiveBound;
      if (stream.readableLength >= bound.limit && !(bound.grow() && stream.readableLength < bound.limit)) this.ws.pause();
    }
  }

  // The WebSocket is read again only when no other channel is over its bound: reading it
  // for one channel would grow another's buffer without limit. Derived from the channels'
  // own buffers, so there is no state to keep in step (a set of stalled channels measured
  // 25% more server CPU per GiB on upload, for reasons not pinned down).
  channelWantsData(channel: ChannelStream): void {
    channel.receiveBound.release(); // under its base again: the loan goes back
    if (this.#frozen) return; // an upgrade is taking the session: thaw() decides
    this.#resumeUnlessHeld(channel);
  }

  #resumeUnlessHeld(channel: ChannelStream | undefined): void {
    if (!this.ws.isPaused) return;
    for (const other of this.#data) {
      if (other !== channel && !other.destroyed && other.readableLength >= other.receiveBound.limit) return;
    }
    this.ws.resume();
  }

  channelDestroyed(channel: ChannelStream): void {
    this.channelWantsData(channel);
  }

  chunkReleased(chunk: Buffer): void {
    this.chunks?.release(chunk);
  }

  #close(code: number, reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    this.deps.sessions.delete(this); // closing: nothing to move
    if (code !== CLOSE_NORMAL) this.deps.log.warn('closing port-forward WebSocket', { sandboxId: this.grant.sandboxId, code, reason });
    if (this.ws.readyState === this.ws.OPEN) this.ws.close(code, reason);
    this.#onClose();
  }

  #onClose(): void {
    this.#stopKeepAlive?.();
    if (this.#released) return;
    this.#released = true;
    this.#closed = true;
    this.deps.metrics.sessionsActive.dec({ protocol: 'websocket' });
    // A client close is the end of what the client sends (v4 has no other way to say it,
    // and upstream reads it as EOF): the pod gets everything already received, then FIN.
    // Nothing can reach the client any more, so once its bytes are taken the channel goes
    // (the pipe then ends the pod side cleanly instead of reading it for nobody).
    for (const stream of this.#data) {
      if (stream.destroyed) continue;
      stream.once('end', () => stream.destroy());
      stream.push(null);
    }
    for (const stream of this.#errors) stream.destroy();
    setTimeout(() => this.ws.terminate(), CLOSE_LINGER_MS).unref();
  }
}

/** An upgrade's new process: a channel session from its state, paused until start(). */
export function adoptChannels(moved: MovedSession, socket: Socket, fds: number[], deps: ForwardDeps): AdoptedSession {
  let ws: WebSocket | undefined;
  const chunks = readIntoOwnedSlabs(socket, deps.budget, (chunk) => ws === undefined || receiverHolds(ws, chunk), () => FEW_STREAMS_BULK_SLAB_BYTES);
  ws = adoptWebSocket(socket, moved.ws!.protocol);
  if (chunks !== undefined) consumeIntoSpanBuffers(ws, chunks);
  const adoptedWs = ws;
  const session = new ChannelSession(ws, moved.grant, encodingOf(moved.ws!.protocol), deps, chunks, socket);
  ws.pause();
  session.adopt(moved.channels!, fds);
  const pending = Buffer.from(moved.ws!.pending, 'base64');
  return {
    protocol: 'websocket',
    frozenAt: BigInt(moved.frozenAt),
    start: () => {
      feedPending(adoptedWs, pending);
      session.startAdopted();
    },
  };
}
