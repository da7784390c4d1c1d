// SPDY tunnelled in WebSocket (subprotocol SPDY/3.1+portforward.k8s.io, PROTOCOL.md
// section 6): binary messages carry the SPDY byte stream, frames may span messages. The
// same SpdyPortForwardSession as plain SPDY serves it, over a Duplex that turns messages
// into bytes and writes into binary messages. Upstream runtimes answer 403 and kubectl
// falls back to plain SPDY; we serve it.

import type { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import { frozenNow, type AdoptedSession, type MovableSession, type MovedSession } from '../../handover/movable';
import { holdReads, releaseReads, releaseSocket, socketFd } from '../../handover/sockets';
import { readIntoOwnedSlabs, spdyBulkSlabBytes, type ChunkTracker } from '../owned-reads';
import type { PortForwardProtocol } from '../protocol';
import type { SessionGrant } from '../tokens';
import type { ForwardDeps } from './forward';
import { movedGrant, SpdyPortForwardSession } from './spdy';
import { adoptWebSocket, feedPending, receiverPending } from './ws-handover';
import { acceptWebSocket, consumeIntoSpanBuffers, isWebSocketUpgrade, keepAlive, offeredSubprotocols, receiverHolds, SPDY_TUNNEL_PROTOCOL } from './ws-server';

/** Close code when the client breaks the tunnel's rules (a text message). */
const CLOSE_UNSUPPORTED_DATA = 1003;

/** A WebSocket as a byte stream: each binary message is a chunk; each write a message. */
class WebSocketByteStream extends Duplex {
  /** An upgrade is taking the session: the WebSocket stays paused whatever the reader wants. */
  frozen = false;

  constructor(
    private readonly ws: WebSocket,
    /** The socket's read slabs, when messages are views of them (owned-reads.ts). */
    chunks: ChunkTracker | undefined,
  ) {
    super({ allowHalfOpen: false, readableHighWaterMark: 1024 * 1024 });
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        ws.close(CLOSE_UNSUPPORTED_DATA, 'the SPDY tunnel carries binary messages only');
        return;
      }
      chunks?.retain(data); // the SPDY parser releases it (chunkDone)
      if (!this.push(data)) ws.pause();
    });
    ws.on('close', () => {
      this.push(null);
      this.destroy();
    });
    ws.on('error', (err) => this.destroy(err));
  }

  override _read(): void {
    if (this.ws.isPaused && !this.frozen) this.ws.resume();
  }

  /** Resume reading the WebSocket after a freeze, unless the reader still holds enough. */
  thaw(): void {
    this.frozen = false;
    if (this.readableLength < this.readableHighWaterMark) this.ws.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (this.ws.readyState !== this.ws.OPEN) return callback(new Error('WebSocket is closed'));
    this.ws.send(chunk, { binary: true }, callback);
  }

  // A corked DATA frame (header + payload): the tunnel is a byte stream, so each chunk may
  // be its own message; the payload is never copied into a bigger one.
  override _writev(chunks: { chunk: Buffer }[], callback: (err?: Error | null) => void): void {
    if (this.ws.readyState !== this.ws.OPEN) return callback(new Error('WebSocket is closed'));
    const last = chunks.length - 1;
    for (let i = 0; i < last; i++) this.ws.send(chunks[i]!.chunk, { binary: true });
    this.ws.send(chunks[last]!.chunk, { binary: true }, callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (this.ws.readyState === this.ws.OPEN) this.ws.close(1000, '');
    callback();
  }

  override _destroy(err: Error | null, callback: (err: Error | null) => void): void {
    if (this.ws.readyState === this.ws.OPEN || this.ws.readyState === this.ws.CONNECTING) this.ws.terminate();
    callback(err);
  }
}

export class SpdyTunnelProtocol implements PortForwardProtocol {
  readonly description = `WebSocket with subprotocol ${SPDY_TUNNEL_PROTOCOL} (SPDY tunnelled in WebSocket)`;

  constructor(private readonly deps: ForwardDeps) {}

  accepts(req: IncomingMessage): boolean {
    return isWebSocketUpgrade(req) && offeredSubprotocols(req).includes(SPDY_TUNNEL_PROTOCOL);
  }

  serve(req: IncomingMessage, socket: Duplex, head: Buffer, grant: SessionGrant): void {
    // The socket reads into reused slabs as plain SPDY's does; ws keeps the first part of a
    // frame that spans reads, so a chunk is released once ws holds none of it.
    let accepted: WebSocket | undefined;
    let pf: SpdyPortForwardSession | undefined;
    const holds = (chunk: Buffer): boolean => accepted === undefined || receiverHolds(accepted, chunk);
    const slabBytes = (): number => spdyBulkSlabBytes(pf?.session.streamCount ?? 0);
    const chunks = socket instanceof Socket ? readIntoOwnedSlabs(socket, this.deps.budget, holds, slabBytes) : undefined;
    void acceptWebSocket(req, socket, head, SPDY_TUNNEL_PROTOCOL).then((ws) => {
      accepted = ws;
      if (chunks !== undefined) consumeIntoSpanBuffers(ws, chunks);
      const bytes = new WebSocketByteStream(ws, chunks);
      pf = new SpdyPortForwardSession(bytes, grant, this.deps, 'spdy-websocket', chunks);
      if (chunks !== undefined) new MovableTunnel(socket as Socket, ws, bytes, pf, grant, this.deps).startKeepAlive();
      else keepTunnelAlive(ws, pf, this.deps);
    });
  }
}

// WebSocket pings keep proxies on the way open; the SPDY session has its own idle timeout.
function keepTunnelAlive(ws: WebSocket, pf: SpdyPortForwardSession, deps: ForwardDeps): () => void {
  const stop = keepAlive(ws, deps.pingIntervalMs, Number.MAX_SAFE_INTEGER, () => undefined);
  void pf.session.ended.then(stop);
  return stop;
}

/** A tunnel as an upgrade moves it: the socket, its WebSocket, the byte stream, the SPDY session. */
class MovableTunnel implements MovableSession {
  readonly protocol = 'spdy-websocket';
  #frozenAt = 0n;
  #stopKeepAlive: (() => void) | undefined;

  constructor(
    readonly socket: Socket,
    private readonly ws: WebSocket,
    private readonly bytes: WebSocketByteStream,
    private readonly pf: SpdyPortForwardSession,
    private readonly grant: SessionGrant,
    private readonly deps: ForwardDeps,
  ) {
    deps.sessions.add(this);
    void pf.session.ended.then(() => deps.sessions.delete(this));
  }

  startKeepAlive(): this {
    this.#stopKeepAlive = keepTunnelAlive(this.ws, this.pf, this.deps);
    return this;
  }

  freeze(): void {
    this.#frozenAt = frozenNow();
    this.#stopKeepAlive?.(); // no ping may go out while the state is taken
    this.bytes.frozen = true;
    this.ws.pause();
    holdReads(this.socket);
    this.pf.freeze();
  }

  quiesce(): boolean {
    const ws = this.ws;
    // the byte stream's unread messages first: they are still on their way to the pods
    if (ws.readyState !== ws.OPEN || this.socket.readableLength > 0 || this.bytes.readableLength > 0 || !this.pf.quiesce()) return false;
    return this.bytes.writableLength === 0 && receiverPending(ws) !== undefined;
  }

  thaw(): void {
    this.pf.thaw();
    releaseReads(this.socket);
    this.bytes.thaw();
    this.startKeepAlive();
  }

  exportState(fds: number[]): MovedSession {
    fds.push(socketFd(this.socket));
    const socketIndex = fds.length - 1;
    return {
      protocol: 'spdy-websocket',
      grant: movedGrant(this.grant),
      socketFd: socketIndex,
      frozenAt: String(this.#frozenAt),
      ws: { protocol: SPDY_TUNNEL_PROTOCOL, pending: receiverPending(this.ws)!.toString('base64') },
      spdy: this.pf.exportState(fds),
    };
  }

  release(): void {
    this.deps.sessions.delete(this);
    this.pf.release();
    releaseSocket(this.socket);
  }
}

/** An upgrade's new process: a tunnel from its state, paused until start(). */
export function adoptTunnel(moved: MovedSession, socket: Socket, fds: number[], deps: ForwardDeps): AdoptedSession {
  let pf: SpdyPortForwardSession | undefined;
  let ws: WebSocket | undefined;
  const holds = (chunk: Buffer): boolean => ws === undefined || receiverHolds(ws, chunk);
  const chunks = readIntoOwnedSlabs(socket, deps.budget, holds, () => spdyBulkSlabBytes(pf?.session.streamCount ?? 0));
  ws = adoptWebSocket(socket, moved.ws!.protocol);
  if (chunks !== undefined) consumeIntoSpanBuffers(ws, chunks);
  const pending = Buffer.from(moved.ws!.pending, 'base64');
  const adoptedWs = ws;
  const bytes = new WebSocketByteStream(ws, chunks);
  bytes.frozen = true;
  const adopted = new SpdyPortForwardSession(bytes, moved.grant, deps, 'spdy-websocket', chunks, { state: moved.spdy!, fds });
  pf = adopted;
  const movable = new MovableTunnel(socket, ws, bytes, adopted, moved.grant, deps);
  return {
    protocol: 'spdy-websocket',
    frozenAt: BigInt(moved.frozenAt),
    start() {
      adopted.start();
      feedPending(adoptedWs, pending);
      bytes.thaw();
      movable.startKeepAlive();
    },
  };
}
