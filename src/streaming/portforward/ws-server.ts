// The WebSocket handshake shared by the channel protocol and the SPDY tunnel: one `ws`
// server in noServer mode, with the limits set explicitly (ws's default maxPayload is
// 100 MiB per message).

import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import type { ChunkTracker } from '../owned-reads';
import { headerTokens, upgradesTo } from '../upgrade-headers';

/** kubectl >= 1.31 and crictl --transport websocket: SPDY frames in binary messages. */
export const SPDY_TUNNEL_PROTOCOL = 'SPDY/3.1+portforward.k8s.io';

/** Largest message we accept: kubectl and client-node send <= 32 KiB; leave room. */
export const MAX_WEBSOCKET_MESSAGE_BYTES = 4 * 1024 * 1024;

export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  return upgradesTo(req, 'websocket');
}

/** The subprotocols the client offered, in its order of preference. */
export function offeredSubprotocols(req: IncomingMessage): string[] {
  return headerTokens(req, 'sec-websocket-protocol');
}

/**
 * Complete the handshake answering with `protocol` ('' for none). We pick the subprotocol
 * ourselves and hide the request's header from ws: ws rejects "SPDY/3.1+portforward.k8s.io"
 * with 400 since '/' is not an RFC 6455 token character, yet that is what kubectl sends.
 */
export function acceptWebSocket(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  protocol: string,
): Promise<WebSocket> {
  const server = new WebSocketServer({
    noServer: true,
    clientTracking: false,
    perMessageDeflate: false,
    maxPayload: MAX_WEBSOCKET_MESSAGE_BYTES,
  });
  delete req.headers['sec-websocket-protocol'];
  if (protocol !== '') server.on('headers', (headers: string[]) => headers.push(`Sec-WebSocket-Protocol: ${protocol}`));
  return new Promise((resolve) => server.handleUpgrade(req, socket, head, (ws) => resolve(ws)));
}

/**
 * Keepalive for a port-forward WebSocket: every `intervalMs` without a message or pong from
 * the client we send a ping (so proxies see traffic on idle forwards); after `idleTimeoutMs`
 * without any, `onIdle` is called. Returns the function that stops it.
 */
export function keepAlive(ws: WebSocket, intervalMs: number, idleTimeoutMs: number, onIdle: () => void): () => void {
  let sawTraffic = true;
  let idleMs = 0;
  const traffic = (): void => {
    sawTraffic = true;
  };
  ws.on('message', traffic);
  ws.on('pong', traffic);
  const tick = Math.max(1, Math.min(intervalMs, idleTimeoutMs));
  const timer = setInterval(() => {
    if (sawTraffic) {
      sawTraffic = false;
      idleMs = 0;
    } else if ((idleMs += tick) >= idleTimeoutMs) {
      onIdle();
      return;
    }
    if (ws.readyState === ws.OPEN) ws.ping();
  }, tick);
  timer.unref();
  return () => clearInterval(timer);
}

/** The parts of ws's Receiver (ws 8, lib/receiver.js) that may hold views of read chunks. */
interface ReceiverInternals {
  _buffers?: unknown;
  _fragments?: unknown;
  _allowSynchronousEvents?: unknown;
  _writableState?: { length: number };
  _bufferedBytes?: unknown;
  consume?: unknown;
}

/** Smaller spanning messages are left to ws: rare over bulk slabs, and cheap. */
const MIN_RECYCLED_SPAN_BYTES = 64 * 1024;

/**
 * Let ws copy a message that spans two reads into one of the slabs' recycled span buffers
 * (ReadSlabs.spanBuffer) instead of a fresh allocation. ws's Receiver.consume(n) returns a
 * view when the bytes are in one read and otherwise allocates n bytes and copies: for a
 * client whose messages are larger than a read (1 MiB messages over 1 MiB slabs) that was
 * every message, and the stream of fresh 1 MiB buffers kept V8 in major GCs: 40% of the
 * server's CPU in a perf profile of a 1 GiB WebSocket v4 upload (2.4 s/GiB). Only the
 * allocation changes: the same bytes are copied the same way. A Receiver that does not
 * look like ws 8's is left alone.
 */
export function consumeIntoSpanBuffers(ws: WebSocket, chunks: ChunkTracker): void {
  const r = (ws as unknown as { _receiver?: ReceiverInternals })._receiver;
  if (r === undefined || typeof r.consume !== 'function' || !Array.isArray(r._buffers) || typeof r._bufferedBytes !== 'number') return;
  const consume = r.consume as (this: ReceiverInternals, n: number) => Buffer;
  r.consume = function consumeSpanning(this: ReceiverInternals, n: number): Buffer {
    const buffers = this._buffers as Buffer[];
    if (n < MIN_RECYCLED_SPAN_BYTES || n <= buffers[0]!.length) return consume.call(this, n);
    const dst = chunks.spanBuffer(n);
    this._bufferedBytes = (this._bufferedBytes as number) - n;
    for (let at = 0; at < n; ) {
      const buf = buffers[0]!;
      const want = n - at;
      if (want >= buf.length) {
        dst.set(buf, at);
        buffers.shift();
        at += buf.length;
      } else {
        dst.set(buf.subarray(0, want), at);
        buffers[0] = buf.subarray(want);
        at += want;
      }
    }
    return dst;
  };
}

/**
 * Whether ws still holds any part of a chunk it was given: the unparsed rest of the reads
 * (`_buffers`), the frames of a message not yet complete (`_fragments`), or writes queued
 * behind one in progress. Complete messages were emitted (synchronously) and are the
 * listener's. Anything unexpected (another ws, deferred events) answers "held", which only
 * keeps the slab from being reused.
 */
export function receiverHolds(ws: WebSocket, chunk: Buffer): boolean {
  const r = (ws as unknown as { _receiver?: ReceiverInternals })._receiver;
  if (r === undefined || r._allowSynchronousEvents !== true || r._writableState?.length !== 0) return true;
  const buffers = r._buffers;
  const fragments = r._fragments;
  if (!Array.isArray(buffers) || !Array.isArray(fragments)) return true;
  const memory = chunk.buffer;
  for (const b of buffers as Buffer[]) if (b.buffer === memory) return true;
  for (const b of fragments as Buffer[]) if (b.buffer === memory) return true;
  return false;
}
