// The SPDY/3.1 frame parser: an explicit state machine over a byte stream in which frames
// may arrive split anywhere or many per chunk (in the manner of ws's receiver). DATA
// payloads are handed on as views of the received chunks, piece by piece as they arrive,
// never copied or accumulated; control frame bodies are small and bounded, and are
// gathered whole. Every violation is a SessionError naming the rule it broke.

import {
  CONTROL_FRAME_MARKER,
  FLAG_FIN,
  FRAME_HEADER_BYTES,
  FrameType,
  MAX_COMPRESSED_HEADER_BLOCK_BYTES,
  MAX_SMALL_CONTROL_FRAME_BYTES,
  SPDY_VERSION,
} from './constants';
import { SessionError } from './errors';

export interface FrameSink {
  /** A piece of a DATA frame's payload (maybe empty); `fin` only on the frame's last piece. */
  onData(streamId: number, payload: Buffer, fin: boolean): void;
  /** A whole control frame of a known type; the body is the parser's own copy. */
  onControl(type: FrameType, flags: number, body: Buffer): void;
}

const enum State {
  Header,
  ControlBody,
  DataPayload,
  Skip,
}

const EMPTY = Buffer.alloc(0);

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

export class FrameParser {
  readonly #sink: FrameSink;
  readonly #chunks: Buffer[] = [];
  #buffered = 0;
  #state = State.Header;
  #paused = false;
  #failed = false;
  // the frame being read
  #controlType = 0;
  #flags = 0;
  #streamId = 0;
  #remaining = 0;

  constructor(sink: FrameSink) {
    this.#sink = sink;
  }

  /** Feed bytes from the transport. Throws SessionError on a framing violation. */
  push(chunk: Buffer): void {
    if (this.#failed) return;
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
    }
    this.#run();
  }

  /** Stop handing out frames (e.g. while a header block inflates); bytes keep queueing. */
  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.#run();
  }

  /** Bytes received and not yet parsed. */
  get buffered(): number {
    return this.#buffered;
  }

  #run(): void {
    try {
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
        }
      }
    } catch (err) {
      this.#failed = true;
      throw err;
    }
  }

  #readHeader(): boolean {
    if (this.#buffered < FRAME_HEADER_BYTES) return false;
    const header = this.#consume(FRAME_HEADER_BYTES);
    const word = header.readUInt32BE(0);
    const flagsAndLength = header.readUInt32BE(4);
    this.#flags = flagsAndLength >>> 24;
    const length = flagsAndLength & 0xffffff;
    if ((word & 0x80000000) === 0) {
      this.#streamId = word;
      if (this.#streamId === 0) throw new SessionError('DATA frame on stream 0');
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
      throw new SessionError(`unsupported SPDY version ${version} (only ${SPDY_VERSION} is spoken)`);
    }
    const type = word & 0xffff;
    this.#remaining = length;
    if (!KNOWN_CONTROL_TYPES.has(type)) {
      this.#state = State.Skip; // unknown control frame types are ignored, as the spec says
      return true;
    }
    if (length > maxControlBody(type)) {
      throw new SessionError(`control frame type ${type} of ${length} bytes exceeds the limit of ${maxControlBody(type)}`);
    }
    this.#controlType = type;
    this.#state = State.ControlBody;
    return true;
  }

  #readControlBody(): boolean {
    if (this.#buffered < this.#remaining) return false;
    const body = this.#remaining === 0 ? EMPTY : Buffer.from(this.#consume(this.#remaining));
    this.#state = State.Header;
    this.#sink.onControl(this.#controlType, this.#flags, body);
    return true;
  }

  #readDataPayload(): boolean {
    if (this.#buffered === 0) return false;
    const piece = this.#consumeUpTo(this.#remaining);
    this.#remaining -= piece.length;
    const last = this.#remaining === 0;
    if (last) this.#state = State.Header;
    this.#sink.onData(this.#streamId, piece, last && (this.#flags & FLAG_FIN) !== 0);
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
      if (take === chunk.length) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(take);
    }
    this.#buffered -= n;
    return out;
  }

  /** Up to n bytes from the first chunk only: a view, never a copy. */
  #consumeUpTo(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length <= n) {
      this.#chunks.shift();
      this.#buffered -= first.length;
      return first;
    }
    this.#chunks[0] = first.subarray(n);
    this.#buffered -= n;
    return first.subarray(0, n);
  }
}
