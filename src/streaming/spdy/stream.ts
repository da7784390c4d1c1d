// One SPDY stream as a Node Duplex: what the peer sends on it is readable, what we write
// becomes DATA frames, end() sends FIN, destroy() before both sides closed sends
// RST_STREAM. The session does the framing; the stream only keeps per-stream state.

import { Duplex } from 'node:stream';
import type { HeaderMap } from './headers';

/** What a stream asks of its session (implemented by SpdySession). */
export interface StreamOwner {
  writeData(stream: SpdyStream, chunk: Buffer, callback: (err?: Error | null) => void): void;
  writeFin(stream: SpdyStream, callback: (err?: Error | null) => void): void;
  streamWantsData(stream: SpdyStream): void;
  streamDestroyed(stream: SpdyStream, err: Error | null): void;
}

/**
 * Bytes a stream may hold that its reader has not taken, before the session stops reading
 * the connection (SPDY has no flow control Go peers honour: TCP is the only brake).
 */
export const STREAM_RECEIVE_BUFFER_BYTES = 1024 * 1024;

export class SpdyStream extends Duplex {
  /** SYN_REPLY sent. */
  replied = false;
  /** The peer sent FIN (or RST). */
  remoteClosed = false;
  /** We sent FIN (or RST). */
  localClosed = false;
  /** The peer reset it: no RST goes back. */
  resetByPeer = false;
  /** The RST code to send when we reset it (SpdySession.reset). */
  resetCode: number | undefined;

  constructor(
    readonly id: number,
    readonly headers: HeaderMap,
    private readonly owner: StreamOwner,
  ) {
    super({
      allowHalfOpen: true,
      readableHighWaterMark: STREAM_RECEIVE_BUFFER_BYTES,
      // Writes are handed straight to the connection; the pipe waits for each callback.
      writableHighWaterMark: 64 * 1024,
    });
  }

  override _read(): void {
    this.owner.streamWantsData(this);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.owner.writeData(this, chunk, callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.owner.writeFin(this, callback);
  }

  override _destroy(err: Error | null, callback: (err: Error | null) => void): void {
    this.owner.streamDestroyed(this, err);
    callback(err);
  }
}
