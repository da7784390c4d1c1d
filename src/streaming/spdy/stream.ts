// One SPDY stream as a Node Duplex: what the peer sends on it is readable, what we write
// becomes DATA frames, end() sends FIN, destroy() before both sides closed sends
// RST_STREAM. The session does the framing; the stream keeps its own state, which changes
// only through the transition methods below (the session calls them, and sends what they
// say must be sent).

import { Duplex } from 'node:stream';
import type { BudgetedBound } from '../../buffer-budget';
import { RstCode } from './constants';
import { StreamResetError } from './errors';
import type { HeaderMap } from './headers';

/** What a stream asks of its session (implemented by SpdySession). */
export interface StreamOwner {
  writeData(stream: SpdyStream, chunk: Buffer, callback: (err?: Error | null) => void): void;
  writeFin(stream: SpdyStream, callback: (err?: Error | null) => void): void;
  streamWantsData(stream: SpdyStream): void;
  streamDestroyed(stream: SpdyStream, err: Error | null): void;
  /** A DATA payload this stream pushed has been consumed for good (see releaseChunk). */
  chunkReleased(chunk: Buffer): void;
}

/**
 * Bytes a stream may hold that its reader has not taken, before the session stops reading
 * the connection (SPDY has no flow control Go peers honour: TCP is the only brake).
 */
export const STREAM_RECEIVE_BUFFER_BYTES = 1024 * 1024;
/** What a stream may hold before the buffer budget is asked for STREAM_RECEIVE_BUFFER_BYTES. */
export const STREAM_BASE_RECEIVE_BYTES = 64 * 1024;

/**
 * Where a stream is in its life (SPDY/3 draft 2.3). "local" is our side: half-closed-local
 * means we sent FIN and the peer may still send. A reset is final, whoever sent it.
 */
export type StreamState =
  | 'open'
  | 'half-closed-local'
  | 'half-closed-remote'
  | 'closed'
  | 'reset-by-peer'
  | 'reset-locally';

export class SpdyStream extends Duplex {
  #state: StreamState = 'open';
  /** SYN_REPLY sent (orthogonal to the state: a peer may half-close before we reply). */
  #replied = false;

  constructor(
    readonly id: number,
    readonly headers: HeaderMap,
    private readonly owner: StreamOwner,
    /** How much unread data it may hold before the session stops reading the connection. */
    readonly receiveBound: BudgetedBound,
  ) {
    super({
      allowHalfOpen: true,
      // push() says false past the base bound; the session then asks the budget.
      readableHighWaterMark: receiveBound.limit,
      // Writes are handed straight to the connection; the pipe waits for each callback.
      writableHighWaterMark: 64 * 1024,
    });
  }

  /**
   * An upgrade's new process: the stream as the old one left it (open or half-closed: a
   * closed or reset stream is not handed over). A peer's FIN already received ends the
   * readable side at once.
   */
  static adopted(id: number, headers: HeaderMap, owner: StreamOwner, bound: BudgetedBound, state: StreamState, replied: boolean): SpdyStream {
    const stream = new SpdyStream(id, headers, owner, bound);
    stream.#state = state;
    stream.#replied = replied;
    if (stream.remoteClosed) stream.push(null);
    return stream;
  }

  get state(): StreamState {
    return this.#state;
  }

  get replied(): boolean {
    return this.#replied;
  }

  /** The peer sent FIN or a reset went either way: no DATA may arrive. */
  get remoteClosed(): boolean {
    return this.#state !== 'open' && this.#state !== 'half-closed-local';
  }

  /** We sent FIN or a reset went either way: no DATA may leave. */
  get localClosed(): boolean {
    return this.#state !== 'open' && this.#state !== 'half-closed-remote';
  }

  get isReset(): boolean {
    return this.#state === 'reset-by-peer' || this.#state === 'reset-locally';
  }

  // ---- transitions: each returns whether it applied, i.e. whether its frame must go ----

  /** SYN_REPLY: once, and never after a reset. */
  markReplied(): boolean {
    if (this.#replied || this.isReset) return false;
    this.#replied = true;
    return true;
  }

  /** The peer's FIN: the readable side ends. */
  remoteFin(): boolean {
    if (this.remoteClosed) return false;
    this.#state = this.#state === 'half-closed-local' ? 'closed' : 'half-closed-remote';
    this.push(null);
    return true;
  }

  /** Our FIN (an empty DATA frame with FIN). */
  localFin(): boolean {
    if (this.localClosed) return false;
    this.#state = this.#state === 'half-closed-remote' ? 'closed' : 'half-closed-local';
    return true;
  }

  /**
   * The peer's RST_STREAM: readers see a StreamResetError; no RST goes back. A CANCEL after
   * our FIN is the peer being done with a stream whose other half has ended, not a failure:
   * client-go (1.29+) resets every data stream so once the pod's side has ended (to drop
   * what it has not sent yet). The stream then just closes, as if the client side had
   * closed, and nothing reports an error for a connection that went as it should.
   */
  resetByPeer(code: number): void {
    if (this.isReset) return;
    const oursEnded = this.#state === 'half-closed-local';
    this.#state = 'reset-by-peer';
    this.destroy(oursEnded && code === RstCode.Cancel ? undefined : StreamResetError.of(code));
  }

  /** Our RST_STREAM: applies unless the stream already closed both ways or was reset. */
  resetLocally(): boolean {
    if (this.isReset || this.#state === 'closed') return false;
    this.#state = 'reset-locally';
    return true;
  }

  // ---- Duplex --------------------------------------------------------------------------

  /**
   * The reader is done with a chunk it read from this stream (the pod socket has written
   * it), so the buffer it is a view of may be reused (streaming/owned-reads.ts).
   */
  releaseChunk(chunk: Buffer): void {
    this.owner.chunkReleased(chunk);
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
