// Our side of a SPDY session on its transport. Frames written during one event-loop turn
// (the SYN_REPLYs for a chunk of SYN_STREAMs; the DATA and FIN of every pod read of one
// poll phase, for every stream) leave together when the turn ends, in setImmediate, which
// runs right after the poll phase, so nothing waits for a timer or a later turn.
//
// Control frames, DATA headers and small payloads are copied into a buffer the writer owns
// (the slab), so a turn of a port-forward connection's frames is one transport write of one
// buffer. Before, each frame was its own Writable write on the corked transport, and each
// small payload held the pod socket's read buffer until the transport had written it, so
// the pipe stopped reading the pod after every reply and started again (two epoll_ctl
// calls and a read syscall more per connection). A copied payload is taken at once: its
// callback runs before data() returns. Bulk payloads are not copied: they are written as
// views, and their callback waits for the transport, which is what paces a pod that
// sends faster than the client reads. Copying stops too while the transport has a backlog,
// so a client that does not read stops the pod however small its reads.

import { FLAG_FIN, FRAME_HEADER_BYTES, MAX_DATA_FRAME_BYTES } from './constants';
import type { WriteCallback } from '../../pipe-client';
import type { FrameOutput } from './frame-output';

/** A DATA payload up to this size is copied (an interactive reply, a request, a line). */
export const COPIED_PAYLOAD_BYTES = 4 * 1024;
/** Bytes copied but not yet written by the transport past which payloads go as views again. */
const COPY_BACKLOG_BYTES = 64 * 1024;
/** The slab's size: about a hundred connections' frames (a SYN_REPLY is 14-20 bytes), or four small payloads. */
const SLAB_BYTES = 16 * 1024;

let slabsAllocated = 0;

/** Slabs allocated so far, by every writer (tests watch it). */
export function slabAllocations(): number {
  return slabsAllocated;
}

export class FrameWriter {
  readonly #output: FrameOutput;
  /** Where frames are copied; [#start, #end) is this turn's, not yet given to the transport. */
  #slab: Buffer | undefined;
  #start = 0;
  #end = 0;
  /** This turn's output before the slab's current bytes, in order (only when a view or a new slab came in between). */
  #segments: Buffer[] = [];
  #segmentCallbacks: (WriteCallback | undefined)[] = [];
  #scheduled = false;
  /** Writes of the current slab's bytes the output has not called back yet. */
  #slabWrites = 0;
  /** The callback of every write of the current slab's bytes (one per slab, not per write): it counts them down. */
  #slabWritten: WriteCallback = noop;

  constructor(output: FrameOutput) {
    this.#output = output;
  }

  /** A control frame, built whole by the caller; copied. */
  send(frame: Buffer): void {
    frame.copy(this.#reserve(frame.length), this.#end);
    this.#end += frame.length;
  }

  /** An empty DATA frame with FIN. */
  fin(streamId: number): void {
    this.#header(streamId, 0, FLAG_FIN);
  }

  /**
   * DATA for one stream. `callback` runs once the payload is ours or the transport's to
   * write: at once for a copied payload, else when the transport has taken the view (the
   * caller must not touch the chunk before). A chunk longer than a frame can say (24 bits)
   * goes out as several frames.
   */
  data(streamId: number, chunk: Buffer, callback: WriteCallback): void {
    if (chunk.length <= COPIED_PAYLOAD_BYTES && this.#backlog() < COPY_BACKLOG_BYTES) {
      this.#header(streamId, chunk.length, 0);
      chunk.copy(this.#slab!, this.#end); // #header reserved room for the payload too
      this.#end += chunk.length;
      callback();
      return;
    }
    let offset = 0;
    while (chunk.length - offset > MAX_DATA_FRAME_BYTES) {
      this.#header(streamId, MAX_DATA_FRAME_BYTES, 0);
      this.#view(chunk.subarray(offset, offset + MAX_DATA_FRAME_BYTES), undefined);
      offset += MAX_DATA_FRAME_BYTES;
    }
    const last = offset === 0 ? chunk : chunk.subarray(offset);
    this.#header(streamId, last.length, 0);
    this.#view(last, callback);
  }

  /** Frames wait for the end of this turn (an upgrade waits for them to leave). */
  get pending(): boolean {
    return this.#scheduled;
  }

  /** Bytes of ours the kernel has not taken yet: this turn's, and what the output holds. */
  get backlog(): number {
    return this.#backlog();
  }

  // A DATA header; room is reserved for a payload that will be copied after it.
  #header(streamId: number, length: number, flags: number): void {
    const copied = length <= COPIED_PAYLOAD_BYTES ? length : 0;
    const slab = this.#reserve(FRAME_HEADER_BYTES + copied);
    const at = this.#end;
    slab.writeUInt32BE(streamId & 0x7fffffff, at);
    slab.writeUInt32BE(((flags << 24) | length) >>> 0, at + 4);
    this.#end = at + FRAME_HEADER_BYTES;
  }

  #view(chunk: Buffer, callback: WriteCallback | undefined): void {
    this.#cutSegment();
    this.#segments.push(chunk);
    this.#segmentCallbacks.push(callback);
  }

  // What the slab holds of this turn goes to the segments (a view is to follow it).
  #cutSegment(): void {
    if (this.#end === this.#start) return;
    this.#segments.push(this.#slab!.subarray(this.#start, this.#end));
    this.#segmentCallbacks.push(undefined);
    this.#start = this.#end;
  }

  /** The slab with `bytes` free at #end, the turn's flush scheduled. */
  #reserve(bytes: number): Buffer {
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.#flush);
    }
    let slab = this.#slab;
    // Nothing of this turn yet, and every write of the slab's bytes called back: the
    // output holds none of them (the pipe relies on the same of its writes), so the slab
    // starts over. A fresh 16 KiB per four small payloads would be external
    // memory, which V8 counts towards its old-generation limit.
    if (slab !== undefined && this.#slabWrites === 0 && this.#start === this.#end && this.#segments.length === 0) this.#start = this.#end = 0;
    if (slab !== undefined && slab.length - this.#end >= bytes) return slab;
    this.#cutSegment();
    // The old slab is left to the writes that still hold it.
    slab = Buffer.allocUnsafe(Math.max(SLAB_BYTES, bytes));
    slabsAllocated++;
    this.#slab = slab;
    this.#slabWrites = 0;
    const current = slab;
    // A write of an old slab's bytes does not count.
    this.#slabWritten = () => {
      if (this.#slab === current) this.#slabWrites--;
    };
    this.#start = this.#end = 0;
    return slab;
  }

  #backlog(): number {
    return this.#output.backlog + this.#end - this.#start;
  }

  /** This turn's frames now, then our FIN after them (the session ends its transport). */
  end(): void {
    this.#flush();
    this.#output.end();
  }

  // This turn's frames are taken off the writer before the output has them: its callbacks
  // may run before it returns, and one may hand the writer the next frames.
  readonly #flush = (): void => {
    this.#scheduled = false;
    if (this.#segments.length === 0) {
      if (this.#end === this.#start) return;
      const chunk = this.#slab!.subarray(this.#start, this.#end);
      this.#start = this.#end;
      this.#slabWrites++;
      this.#output.writeOne(chunk, this.#slabWritten);
      return;
    }
    this.#cutSegment();
    const segments = this.#segments;
    const callbacks = this.#segmentCallbacks;
    this.#segments = [];
    this.#segmentCallbacks = [];
    // Writes call back in order: once the last of this flush has, so have the slab's.
    const last = segments.length - 1;
    this.#slabWrites++;
    const slabDone = this.#slabWritten;
    const lastCallback = callbacks[last];
    callbacks[last] = lastCallback === undefined ? slabDone : (err?: Error | null) => {
      slabDone();
      lastCallback(err);
    };
    this.#output.writeMany(segments, callbacks);
  };
}

function noop(): void {}
