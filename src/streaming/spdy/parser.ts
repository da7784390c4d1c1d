// The SPDY/3.1 frame parser: a Writable holding an explicit state machine over a byte
// stream in which frames may arrive split anywhere or many per chunk (in the manner of
// ws's Receiver). DATA payloads are handed on as views of the received chunks, piece by
// piece as they arrive, never copied or accumulated; control frame bodies are small and
// bounded (checked from the 8-byte header, before anything is allocated), and are
// gathered whole. Every violation is a ProtocolError naming the rule it broke, and leaves
// one way: the parser is destroyed with it ('error').
//
// Backpressure: the sink may pause() the parser from inside a call (a header block is
// inflating, a stream is over its receive bound). The write callback of the chunk being
// parsed is then held until resume(), so the Writable buffers at most its high water mark
// more and write() returns false: the transport is paused and nothing queues without bound.

import { Writable } from 'node:stream';
import {
  CONTROL_FRAME_MARKER,
  FLAG_FIN,
  FRAME_HEADER_BYTES,
  FrameType,
  MAX_COMPRESSED_HEADER_BLOCK_BYTES,
  MAX_SMALL_CONTROL_FRAME_BYTES,
  SPDY_VERSION,
} from './constants';
import { ProtocolError } from './errors';
import { controlFrameHeader, dataFrameHeader } from './frames';

export interface FrameSink {
  /** A piece of a DATA frame's payload (maybe empty); `fin` only on the frame's last piece. */
  onData(streamId: number, payload: Buffer, fin: boolean): void;
  /** A whole control frame of a known type. The body is valid until this returns (it may be a view of a read slab): copy what must outlive it. */
  onControl(type: FrameType, flags: number, body: Buffer): void;
  /** The parser holds no more of this written chunk (a DATA piece it handed out may live on). */
  chunkDone?(chunk: Buffer): void;
}

/** Bytes the Writable queues in front of a paused parser before write() returns false. */
export const PARSER_HIGH_WATER_MARK = 64 * 1024;

const enum State {
  Header,
  ControlBody,
  DataPayload,
  Skip,
  /** Failed or destroyed: nothing more is handed out. */
  Stopped,
}

const EMPTY = Buffer.alloc(0);
/** A control frame type SPDY/3.1 does not define: skipped (pendingBytes). */
const UNKNOWN_CONTROL_TYPE = 0xff;

const KNOWN_CONTROL_TYPES = new Set<number>([
  FrameType.SynStream,
  FrameType.SynReply,
  FrameType.RstStream,
  FrameType.Settings,
  FrameType.Ping,
  FrameType.GoAway,
  FrameType.Headers,
  FrameType.WindowUpdate,
]);

function maxControlBody(type: number): number {
  return type === FrameType.SynStream || type === FrameType.SynReply || type === FrameType.Headers
    ? MAX_COMPRESSED_HEADER_BLOCK_BYTES + 10
    : MAX_SMALL_CONTROL_FRAME_BYTES;
}

type WriteCallback = (err?: Error | null) => void;

export class FrameParser extends Writable {
  readonly #sink: FrameSink;
  readonly #chunks: Buffer[] = [];
  #buffered = 0;
  #state = State.Header;
  /** The sink asked to wait (pause()); the loop stops after the call that asked. */
  #paused = false;
  /** The loop is on the stack: a resume() from inside a sink call must not re-enter it. */
  #running = false;
  /** The write callback held while paused: this is what stalls the transport. */
  #held: WriteCallback | undefined;
  // the frame being read
  #controlType = 0;
  #flags = 0;
  #streamId = 0;
  #remaining = 0;

  constructor(sink: FrameSink, highWaterMark = PARSER_HIGH_WATER_MARK) {
    super({ highWaterMark, decodeStrings: false });
    this.#sink = sink;
  }

  /** Stop handing out frames (call from a sink method, or between writes). */
  pause(): void {
    this.#paused = true;
  }

  /** Hand out frames again: the bytes already received first, then further writes. */
  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    if (this.#running) return; // called from inside a sink call: the loop goes on by itself
    this.#run();
    if (this.#paused || this.#held === undefined || this.destroyed) return;
    const callback = this.#held;
    this.#held = undefined;
    callback();
  }

  get isPaused(): boolean {
    return this.#paused;
  }

  /** Bytes received and not yet parsed (the Writable's own queue not counted). */
  get buffered(): number {
    return this.#buffered;
  }

  /**
   * For an upgrade's handover, between writes with nothing queued: the bytes received and
   * not yet handed out, as a byte stream that a fresh parser turns into the same frames. A
   * frame already begun is given a header of its own for what is left of it (a DATA frame's
   * rest is a DATA frame of that length, with its FIN; the rest of a skipped frame, an
   * unknown control frame).
   */
  pendingBytes(): Buffer {
    const rest = Buffer.concat(this.#chunks);
    let header: Buffer;
    switch (this.#state) {
      case State.Header:
        return rest;
      case State.DataPayload:
        header = dataFrameHeader(this.#streamId, this.#remaining, (this.#flags & FLAG_FIN) !== 0);
        break;
      case State.ControlBody:
        header = controlFrameHeader(this.#controlType, this.#flags, this.#remaining);
        break;
      case State.Skip:
        header = controlFrameHeader(UNKNOWN_CONTROL_TYPE, 0, this.#remaining);
        break;
      case State.Stopped:
        throw new Error('the SPDY parser has stopped: nothing to hand over');
    }
    return Buffer.concat([header, rest]);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: WriteCallback): void {
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
    }
    if (!this.#paused) this.#run();
    if (this.#paused && !this.destroyed) this.#held = callback;
    else callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.#state = State.Stopped;
    this.#chunks.length = 0;
    this.#buffered = 0;
    this.#held = undefined;
    callback(err);
  }

  #run(): void {
    this.#running = true;
    let progress = true;
    while (progress && !this.#paused) {
      switch (this.#state) {
        case State.Header:
          progress = this.#readHeader();
          break;
        case State.ControlBody:
          progress = this.#readControlBody();
          break;
        case State.DataPayload:
          progress = this.#readDataPayload();
          break;
        case State.Skip:
          progress = this.#skip();
          break;
        case State.Stopped:
          progress = false;
          break;
      }
    }
    this.#running = false;
  }

  /** The one exit for a framing violation. */
  #fail(message: string): false {
    this.#state = State.Stopped;
    this.destroy(ProtocolError.session(message));
    return false;
  }

  // Each state's method either consumes what it needs and returns true, or returns false
  // until more bytes arrive. The next state is set before the sink is called: the sink may
  // pause or destroy the parser.

  #readHeader(): boolean {
    if (this.#buffered < FRAME_HEADER_BYTES) return false;
    const header = this.#consume(FRAME_HEADER_BYTES);
    const word = header.readUInt32BE(0);
    const flagsAndLength = header.readUInt32BE(4);
    this.#flags = flagsAndLength >>> 24;
    const length = flagsAndLength & 0xffffff;
    if ((word & 0x80000000) === 0) {
      this.#streamId = word;
      if (this.#streamId === 0) return this.#fail('DATA frame on stream 0');
      this.#remaining = length;
      this.#state = State.DataPayload;
      if (length === 0) {
        this.#state = State.Header;
        this.#sink.onData(this.#streamId, EMPTY, (this.#flags & FLAG_FIN) !== 0);
      }
      return true;
    }
    const version = (word >>> 16) & 0x7fff;
    if (word >>> 16 !== CONTROL_FRAME_MARKER) {
      return this.#fail(`unsupported SPDY version ${version} (only ${SPDY_VERSION} is spoken)`);
    }
    const type = word & 0xffff;
    this.#remaining = length;
    if (!KNOWN_CONTROL_TYPES.has(type)) {
      this.#state = State.Skip; // unknown control frame types are ignored, as the spec says
      return true;
    }
    if (length > maxControlBody(type)) {
      return this.#fail(`control frame type ${type} of ${length} bytes exceeds the limit of ${maxControlBody(type)}`);
    }
    this.#controlType = type;
    this.#state = State.ControlBody;
    return true;
  }

  #readControlBody(): boolean {
    if (this.#buffered < this.#remaining) return false;
    // A view, not a copy: every control frame is done with before onControl returns (a
    // header block is inflated synchronously), and the read slab it may lie in is not read
    // into again before this turn's parsing ends.
    const body = this.#remaining === 0 ? EMPTY : this.#consume(this.#remaining);
    this.#state = State.Header;
    this.#sink.onControl(this.#controlType, this.#flags, body);
    return true;
  }

  // The chunk is reported done only after the sink has the piece (and has retained it, if
  // it keeps views): reported first, a read slab whose last reference this was would be
  // free for the next read while the piece is still on its way to the pod (owned-reads.ts).
  #readDataPayload(): boolean {
    if (this.#buffered === 0) return false;
    const first = this.#chunks[0]!;
    const whole = first.length <= this.#remaining;
    const piece = whole ? first : first.subarray(0, this.#remaining);
    if (whole) this.#chunks.shift();
    else this.#chunks[0] = first.subarray(this.#remaining);
    this.#buffered -= piece.length;
    this.#remaining -= piece.length;
    const last = this.#remaining === 0;
    if (last) this.#state = State.Header;
    this.#sink.onData(this.#streamId, piece, last && (this.#flags & FLAG_FIN) !== 0);
    if (whole) this.#sink.chunkDone?.(first);
    return true;
  }

  #skip(): boolean {
    while (this.#remaining > 0 && this.#buffered > 0) {
      this.#remaining -= this.#consumeUpTo(this.#remaining).length;
    }
    if (this.#remaining > 0) return false;
    this.#state = State.Header;
    return true;
  }

  /** Exactly n bytes (n <= buffered): a view when they lie in one chunk, else a copy. */
  #consume(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length > n) {
      this.#chunks[0] = first.subarray(n);
      this.#buffered -= n;
      return first.subarray(0, n);
    }
    if (first.length === n) {
      this.#chunks.shift();
      this.#sink.chunkDone?.(first);
      this.#buffered -= n;
      return first;
    }
    const out = Buffer.allocUnsafe(n);
    let offset = 0;
    while (offset < n) {
      const chunk = this.#chunks[0]!;
      const take = Math.min(chunk.length, n - offset);
      chunk.copy(out, offset, 0, take);
      offset += take;
      if (take === chunk.length) {
        this.#chunks.shift();
        this.#sink.chunkDone?.(chunk);
      } else {
        this.#chunks[0] = chunk.subarray(take);
      }
    }
    this.#buffered -= n;
    return out;
  }

  /** Up to n bytes from the first chunk only: a view, never a copy. */
  #consumeUpTo(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length <= n) {
      this.#chunks.shift();
      this.#sink.chunkDone?.(first);
      this.#buffered -= first.length;
      return first;
    }
    this.#chunks[0] = first.subarray(n);
    this.#buffered -= n;
    return first.subarray(0, n);
  }
}
