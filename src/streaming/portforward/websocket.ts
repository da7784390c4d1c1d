// Port-forward over WebSocket channels (PROTOCOL.md section 5): the handshake and the
// session's lifecycle. The framing of channels is channel-codec.ts. One pod connection per
// port of the grant; the WebSocket closes (1000) once every port's forward has ended.

import type { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { WebSocket } from 'ws';
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
import { forwardConnection, type ForwardDeps } from './forward';
import { acceptWebSocket, isWebSocketUpgrade, keepAlive, offeredSubprotocols, receiverHolds, SPDY_TUNNEL_PROTOCOL } from './ws-server';

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
      new ChannelSession(ws, grant, encodingOf(protocol), this.deps, chunks).start();
    });
  }

  #refuse(socket: Duplex, reason: string, body: string): void {
    this.deps.metrics.handshakeFailures.inc({ protocol: 'websocket', reason });
    sendPlainOnSocket(socket, { status: 400, body });
  }
}

/** One WebSocket: a data and an error channel per port of the grant. */
class ChannelSession implements ChannelOwner {
  readonly #data: ChannelStream[] = [];
  readonly #errors: ChannelStream[] = [];
  readonly #decoder: ChannelDecoder;
  #closed = false;
  /** Metrics and streams released (once, whoever closed first). */
  #released = false;
  readonly #stopKeepAlive: () => void;

  constructor(
    private readonly ws: WebSocket,
    private readonly grant: SessionGrant,
    private readonly encoding: ChannelEncoding,
    private readonly deps: ForwardDeps,
    private readonly chunks: ChunkTracker | undefined,
  ) {
    this.#decoder = new ChannelDecoder(encoding, grant.ports.length);
    this.#stopKeepAlive = keepAlive(ws, deps.pingIntervalMs, deps.idleTimeoutMs, () =>
      this.#close(CLOSE_NORMAL, 'idle timeout'),
    );
  }

  start(): void {
    const { ws, grant, deps } = this;
    deps.metrics.sessionsActive.inc({ protocol: 'websocket' });
    deps.metrics.sessionsTotal.inc({ protocol: 'websocket' });
    ws.on('message', (data: Buffer, isBinary: boolean) => this.#onMessage(data, isBinary));
    ws.on('error', (err) => deps.log.debug('WebSocket error', { err }));
    ws.on('close', () => this.#onClose());
    const forwards = grant.ports.map((port, i) => {
      const data = new ChannelStream(ws, 2 * i, this.encoding, this, this.#receiveBound());
      const error = new ChannelStream(ws, 2 * i + 1, this.encoding, this, this.#receiveBound());
      // A client that vanishes fails the channels' writes (EPIPE from ws). The pipe hears it
      // on the data channel while it runs; before it starts (the port prefix, the dial) and
      // on the error channel, the WebSocket's own close ends everything.
      data.on('error', () => undefined);
      error.on('error', () => undefined);
      this.#data.push(data);
      this.#errors.push(error);
      data.write(portPrefix(port));
      error.write(portPrefix(port));
      return this.#forward(port, data, error);
    });
    void Promise.all(forwards).then(() => this.#close(CLOSE_NORMAL, ''));
  }

  #receiveBound(): BudgetedBound {
    return new BudgetedBound(this.deps.budget, CHANNEL_BASE_RECEIVE_BYTES, CHANNEL_RECEIVE_BUFFER_BYTES);
  }

  async #forward(port: number, data: ChannelStream, error: ChannelStream): Promise<void> {
    const verdict = await forwardConnection(this.deps, {
      grant: this.grant,
      port,
      client: data,
      protocol: 'websocket',
      isAborted: () => this.#closed,
    });
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
    if (code !== CLOSE_NORMAL) this.deps.log.warn('closing port-forward WebSocket', { sandboxId: this.grant.sandboxId, code, reason });
    if (this.ws.readyState === this.ws.OPEN) this.ws.close(code, reason);
    this.#onClose();
  }

  #onClose(): void {
    this.#stopKeepAlive();
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
