// SPDY tunnelled in WebSocket (subprotocol SPDY/3.1+portforward.k8s.io, PROTOCOL.md
// section 6): binary messages carry the SPDY byte stream, frames may span messages. The
// same SpdyPortForwardSession as plain SPDY serves it, over a Duplex that turns messages
// into bytes and writes into binary messages. Upstream runtimes answer 403 and kubectl
// falls back to plain SPDY; we serve it.

import type { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import { readIntoOwnedSlabs, spdyBulkSlabBytes, type ChunkTracker } from '../owned-reads';
import type { PortForwardProtocol } from '../protocol';
import type { SessionGrant } from '../tokens';
import type { ForwardDeps } from './forward';
import { SpdyPortForwardSession } from './spdy';
import { acceptWebSocket, isWebSocketUpgrade, keepAlive, offeredSubprotocols, receiverHolds, SPDY_TUNNEL_PROTOCOL } from './ws-server';

/** Close code when the client breaks the tunnel's rules (a text message). */
const CLOSE_UNSUPPORTED_DATA = 1003;

/** A WebSocket as a byte stream: each binary message is a chunk; each write a message. */
class WebSocketByteStream extends Duplex {
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
    if (this.ws.isPaused) this.ws.resume();
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
      pf = new SpdyPortForwardSession(new WebSocketByteStream(ws, chunks), grant, this.deps, 'spdy-websocket', chunks);
      // WebSocket pings keep proxies on the way open; the SPDY session has its own idle timeout.
      const stop = keepAlive(ws, this.deps.pingIntervalMs, Number.MAX_SAFE_INTEGER, () => undefined);
      void pf.session.ended.then(stop);
    });
  }
}
