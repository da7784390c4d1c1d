// One SPDY stream, as a pipe's client side (pipe-client.ts): what the peer sends on it is
// delivered to its reader, what we write becomes DATA frames, end() sends FIN, destroy()
// before both sides closed sends RST_STREAM. The session does the framing; the stream
// keeps its own state, which changes only through the transition methods below (the
// session calls them, and sends what they say must be sent).
//
// Not a Node Duplex (pipe-client.ts says why): its fields are all made in the constructor,
// so every stream has one shape, and it holds no per-connection state objects or
// listeners. What it keeps of Duplex's contract: delivery in order, a reader's pause()
// honoured at once (a payload arriving while paused is queued), resume() and attach()
// delivering what waits on a later tick, the end after the last byte, an error or close
// reported on a later tick, write callbacks in the order of the writes.

import type { BudgetedBound } from '../../buffer-budget';
import type { PipeClient, PipeClientEvents, WriteCallback } from '../../pipe-client';
import { RstCode } from './constants';
import { StreamResetError } from './errors';
import type { HeaderMap } from './headers';

/** What a stream asks of its session (implemented by SpdySession). */
export interface StreamOwner {
  /** `callback` runs when the payload is the session's (copied) or the transport has taken it. */
  writeData(stream: SpdyStream, chunk: Buffer, callback: WriteCallback): void;
  writeFin(stream: SpdyStream): void;
  /** The stream's unread bytes went under its low-water mark: the parser may go on. */
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

/** Bytes written and not yet called back past which write() says false. */
const WRITABLE_HIGH_WATER_MARK = 64 * 1024;

export class SpdyStream implements PipeClient {
  #state: StreamState = 'open';
  /** SYN_REPLY sent (orthogonal to the state: a peer may half-close before we reply). */
  #replied = false;
  // ---- the readable side: DATA from the peer
  #reader: PipeClientEvents | undefined = undefined;
  /** Delivering (not paused); with no reader, payloads are dropped. */
  #flowing = false;
  #discarding = false;
  /** Payloads not delivered yet (paused, or no reader yet), oldest first. */
  #unread: Buffer[] | undefined = undefined;
  #unreadBytes = 0;
  /** The peer's FIN came and is delivered after the unread payloads. */
  #endPending = false;
  #flowScheduled = false;
  /** Under this many unread bytes the session may hand the stream more (its base bound). */
  readonly #lowWater: number;
  // ---- the writable side: DATA to the peer
  /** Lengths and callbacks of writes not yet called back, in pairs, oldest first. */
  readonly #writes: (number | WriteCallback | undefined)[] = [];
  #writableLength = 0;
  #writableEnded = false;
  #destroyed = false;
  #errored: Error | null = null;
  readonly releasesChunks = true;

  constructor(
    readonly id: number,
    readonly headers: HeaderMap,
    private readonly owner: StreamOwner,
    /** How much unread data it may hold before the session stops reading the connection. */
    readonly receiveBound: BudgetedBound,
  ) {
    // push() says false past the base bound; the session then asks the budget.
    this.#lowWater = receiveBound.limit;
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
    if (stream.remoteClosed) stream.#endPending = true;
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

  /** The peer's FIN: the readable side ends (after what is unread). */
  remoteFin(): boolean {
    if (this.remoteClosed) return false;
    this.#state = this.#state === 'half-closed-local' ? 'closed' : 'half-closed-remote';
    if (this.#flowing && this.#unreadBytes === 0) this.#deliverEnd();
    else this.#endPending = true;
    return true;
  }

  /** Our FIN (an empty DATA frame with FIN). */
  localFin(): boolean {
    if (this.localClosed) return false;
    this.#state = this.#state === 'half-closed-remote' ? 'closed' : 'half-closed-local';
    return true;
  }

  /**
   * The peer's RST_STREAM: the reader sees a StreamResetError; no RST goes back. A CANCEL
   * after our FIN is the peer being done with a stream whose other half has ended, not a
   * failure: client-go (1.29+) resets every data stream so once the pod's side has ended
   * (to drop what it has not sent yet). The stream then just closes, as if the client
   * side had closed, and nothing reports an error for a connection that went as it should.
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

  // ---- the readable side ----------------------------------------------------------------

  /**
   * A DATA payload from the session: delivered now if the reader takes it, else kept.
   * False once the stream keeps its low-water mark or more (the session then decides
   * whether the parser waits for it).
   */
  push(payload: Buffer): boolean {
    if (this.#destroyed) {
      this.owner.chunkReleased(payload);
      return true;
    }
    if (this.#flowing && this.#unreadBytes === 0) {
      this.#deliver(payload);
      return true;
    }
    (this.#unread ??= []).push(payload);
    this.#unreadBytes += payload.length;
    return this.#unreadBytes < this.#lowWater;
  }

  get readableLength(): number {
    return this.#unreadBytes;
  }

  attach(reader: PipeClientEvents): void {
    this.#reader = reader;
    this.#discarding = false;
    this.resume();
  }

  discard(): void {
    this.#discarding = true;
    this.resume();
  }

  pause(): void {
    this.#flowing = false;
  }

  resume(): void {
    if (this.#destroyed) return;
    this.#flowing = true;
    if ((this.#unreadBytes > 0 || this.#endPending) && !this.#flowScheduled) {
      this.#flowScheduled = true;
      process.nextTick(SpdyStream.#flow, this);
    }
  }

  /** The reader is done with a chunk it was given: its read slab may be reused (owned-reads.ts). */
  releaseChunk(chunk: Buffer): void {
    this.owner.chunkReleased(chunk);
  }

  // What waits, in order, while the reader lets it (it may pause in onData).
  static #flow(stream: SpdyStream): void {
    stream.#flowScheduled = false;
    const unread = stream.#unread;
    while (stream.#flowing && stream.#unreadBytes > 0) {
      const payload = unread!.shift()!;
      stream.#unreadBytes -= payload.length;
      stream.#deliver(payload);
    }
    if (stream.#flowing && stream.#endPending) {
      stream.#endPending = false;
      stream.#deliverEnd();
    }
    if (!stream.#destroyed && stream.#unreadBytes < stream.#lowWater) stream.owner.streamWantsData(stream);
  }

  #deliver(payload: Buffer): void {
    if (this.#discarding || this.#reader === undefined) this.owner.chunkReleased(payload);
    else this.#reader.onData(payload);
  }

  #deliverEnd(): void {
    if (!this.#discarding) this.#reader?.onEnd();
  }

  // ---- the writable side ----------------------------------------------------------------

  /** DATA (a SYN_REPLY first if none went yet). Text is sent as UTF-8 (an error stream's message). */
  write(chunk: Buffer | string, callback?: WriteCallback): boolean {
    const payload = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (this.#destroyed || this.#writableEnded) {
      if (callback !== undefined) process.nextTick(callback, new Error('SPDY stream is closed'));
      return false;
    }
    if (payload.length === 0) {
      if (callback !== undefined) process.nextTick(callback);
      return true;
    }
    this.#writableLength += payload.length;
    this.#writes.push(payload.length, callback);
    this.owner.writeData(this, payload, this.#written);
    return this.#writableLength < WRITABLE_HIGH_WATER_MARK;
  }

  // The session calls writes back in the order they were made (the transport writes in order).
  readonly #written = (err?: Error | null): void => {
    this.#writableLength -= this.#writes.shift() as number;
    const callback = this.#writes.shift() as WriteCallback | undefined;
    if (callback !== undefined) callback(err);
  };

  get writableLength(): number {
    return this.#writableLength;
  }

  /** FIN, after `chunk` if given. */
  end(chunk?: Buffer | string): void {
    if (this.#writableEnded || this.#destroyed) return;
    if (chunk !== undefined) this.write(chunk);
    this.#writableEnded = true;
    this.owner.writeFin(this);
  }

  get writableEnded(): boolean {
    return this.#writableEnded;
  }

  // ---- ending -----------------------------------------------------------------------------

  /**
   * Done with the stream: unread payloads are dropped and the session forgets it (with an
   * RST_STREAM unless both sides had closed). The reader hears of it on a later tick.
   */
  destroy(err?: Error): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#errored = err ?? null;
    this.#flowing = false;
    this.#endPending = false;
    const unread = this.#unread;
    if (unread !== undefined) for (const payload of unread.splice(0)) this.owner.chunkReleased(payload);
    this.#unreadBytes = 0;
    this.owner.streamDestroyed(this, this.#errored);
    if (this.#reader !== undefined) process.nextTick(tellDestroyed, this.#reader, this.#errored);
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  get errored(): Error | null {
    return this.#errored;
  }
}

function tellDestroyed(reader: PipeClientEvents, err: Error | null): void {
  if (err === null) reader.onClose();
  else reader.onError(err);
}
