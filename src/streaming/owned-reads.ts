// Reads of an upgraded client socket into buffers the session owns, instead of Node's
// fresh 64 KiB allocation per read. An upload through kubectl is read here: a profile
// showed a fifth of its CPU in allocating, collecting and parsing 64 KiB at a time.
//
// Node gives a socket `onread` (a caller's buffer for every read) only when it creates it,
// and the HTTP server hands the upgraded socket over already made. Its internal symbols
// for that mode are found on a socket made with `onread` and set on the upgraded one; if
// this Node has none of them, the socket keeps its own reads (slower, not wrong).
//
// Each read lands in the unused rest of a slab; the bytes read are handed on as a view of
// it ('data', as before), so a DATA payload reaches the pod socket without a copy. Once
// its rest is too small the slab is retired, and reused only when every view of it has
// been released (ReadSlabs below). Slabs are small (16 KiB) while reads are short; a read
// that fills what it was given means bytes are waiting, and the next slabs are bulk ones
// (64 KiB, or 1 MiB where few streams share the connection), with some released ones kept
// for reuse, while the buffer budget lends them; a run of short reads gives them back.

import { Socket } from 'node:net';
import { BudgetedBound, type BufferBudget } from '../buffer-budget';

const SMALL_SLAB_BYTES = 16 * 1024;
/** Bulk slabs where many streams share a connection: see ReadSlabs. */
export const SHARED_BULK_SLAB_BYTES = 64 * 1024;
/** Bulk slabs where few streams do (WebSocket v4: a data channel per requested port). */
export const FEW_STREAMS_BULK_SLAB_BYTES = 1024 * 1024;
/** Open SPDY streams up to which a session counts as few-stream: two forwarded connections. */
const FEW_SPDY_STREAMS = 4;

/** Free bulk slabs kept for reuse come to this much per socket (on loan)... */
const FREE_BULK_BYTES = 2 * 1024 * 1024;
/**
 * ...or this many, if more: a pod socket's write completes a burst of 1 MiB slabs at once
 * (with 2 kept, a 1 GiB upload still saw 4 mark-compacts; with 4, 1).
 */
const MIN_FREE_BULK_SLABS = 4;
/** A rest of a slab smaller than this is not offered to a read: a new slab is taken. */
const MIN_READ_BYTES = 4 * 1024;
/** Reads shorter than this in a row before the bulk slabs are given back. */
const SHRINK_AFTER_SHORT_READS = 32;
const SHORT_READ_BYTES = 64 * 1024;

/** The bulk slab size for a SPDY session with this many open streams. */
export function spdyBulkSlabBytes(openStreams: number): number {
  return openStreams <= FEW_SPDY_STREAMS ? FEW_STREAMS_BULK_SLAB_BYTES : SHARED_BULK_SLAB_BYTES;
}

interface OnreadSymbols {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

let symbols: OnreadSymbols | null | undefined;

/** The symbols under which net.Socket keeps its `onread` options (null: not this Node). */
function onreadSymbols(): OnreadSymbols | null {
  if (symbols !== undefined) return symbols;
  const probe = new Socket({ onread: { buffer: () => Buffer.alloc(1), callback: () => true } } as object);
  const find = (name: string): symbol | undefined => Object.getOwnPropertySymbols(probe).find((s) => s.description === name);
  const [buffer, callback, generator] = [find('kBuffer'), find('kBufferCb'), find('kBufferGen')];
  symbols = buffer && callback && generator ? { buffer, callback, generator } : null;
  probe.destroy();
  return symbols;
}

interface UserBufferHandle {
  useUserBuffer?(buffer: Uint8Array): void;
  reading?: boolean;
}

/** What holders of views of read slabs say, so that a slab is reused once nothing holds it. */
export interface ChunkTracker {
  /** A view of a slab is handed on (a DATA payload to its stream). */
  retain(chunk: Buffer): void;
  /** A view is done with (the parser has parsed it; the pod socket has written it). */
  release(chunk: Buffer): void;
  /**
   * A buffer of `n` bytes for a WebSocket message that spans two reads (ws must copy it
   * into one): a recycled one where possible, tracked like a slab, so that it is reused
   * once retained and released again (ws-server.ts).
   */
  spanBuffer(n: number): Buffer;
}

/**
 * Make a plain TCP socket read into session-owned slabs, emitting 'data' with views of
 * them; the socket's pause() and resume() work as before. Each emitted chunk counts as held
 * until released. Returns the slabs, or undefined (changing nothing) for a socket that
 * cannot (TLS, or a Node without the symbols).
 */
export function readIntoOwnedSlabs(
  socket: Socket,
  budget: BufferBudget | undefined,
  /**
   * For a consumer of 'data' that keeps views of a chunk after its handler returned
   * (a WebSocket receiver holding a frame's first part): whether it still holds any of
   * this chunk. Without it, the consumer releases each chunk itself.
   */
  holds?: (chunk: Buffer) => boolean,
  /** The bulk slab size, asked at each new slab (it may follow the number of streams). */
  bulkSlabBytes: () => number = () => SHARED_BULK_SLAB_BYTES,
): ChunkTracker | undefined {
  const s = onreadSymbols();
  const handle = (socket as unknown as { _handle: UserBufferHandle | null })._handle;
  if (s === null || handle === null || typeof handle.useUserBuffer !== 'function' || socket.constructor !== Socket) return undefined;
  const slabs = new ReadSlabs(budget, bulkSlabBytes);
  const target = socket as unknown as Record<symbol, unknown>;
  target[s.generator] = slabs.next;
  const held: Buffer[] = []; // chunks `holds` said were still held
  target[s.callback] = (nread: number, buffer: Buffer): boolean => {
    slabs.used(nread, buffer.length);
    const chunk = nread === buffer.length ? buffer : buffer.subarray(0, nread);
    socket.emit('data', chunk);
    if (holds !== undefined) {
      held.push(chunk);
      for (let i = 0; i < held.length; i++) {
        if (holds(held[i]!)) continue;
        slabs.release(held[i]!);
        held.splice(i--, 1);
      }
    }
    return true; // a pause() during 'data' has stopped reading itself
  };
  const first = slabs.next();
  target[s.buffer] = first;
  handle.useUserBuffer(first);
  socket.once('close', () => slabs.close());
  return slabs;
}

interface Slab {
  buffer: Buffer;
  /** Views of it still held (by the parser, a stream, a pod socket's write queue). */
  refs: number;
  /** A span buffer (spanBuffer), not a read slab. */
  span?: true;
}

/**
 * Retired slabs still held by a view, remembered so that they can be reused once released;
 * past this, the oldest is left to the GC (a view nobody will release, e.g. of a stream
 * reset with data unread, must not keep a slab alive through us).
 */
const MAX_HELD_SLABS = 64;

/** Released small slabs kept for reuse (bulk ones: FREE_BULK_BYTES worth, on loan). */
const MAX_FREE_SMALL_SLABS = 1;

/**
 * Span buffers released and kept for the next message that spans reads: one is being
 * written to the pod while ws fills the next. Kept only while the slabs are bulk ones;
 * at most 2 x MAX_WEBSOCKET_MESSAGE_BYTES (4 MiB) per socket, and only for a client
 * whose messages are larger than a read.
 */
const MAX_FREE_SPAN_BUFFERS = 2;
/**
 * Span buffers handed out and not back yet, remembered so that they can be recycled; past
 * this the oldest is left to the GC (one never retained: a fragment ws concatenates).
 */
const MAX_OUT_SPAN_BUFFERS = 8;

/**
 * The slabs of one socket. A slab is reused once every view of it has been released, so a
 * steady upload reads into the same few slabs instead of allocating a stream of new
 * memory, which V8 answers with a major GC every 64 MiB (a profile of a 1 GiB upload:
 * 27 mark-compacts, a third of the server's CPU). A slab holds the frames of every
 * stream of its connection and lives as long as its slowest view: where many streams
 * share one, bulk slabs are 64 KiB, Node's own read size, since 1 MiB slabs pinned that
 * way raised the peak RSS of 1000 concurrent uploads over 4 sessions from 180 to 285 MiB.
 * Where few do (a SPDY session with at most two connections, WebSocket v4 with a data
 * channel per requested port) they are 1 MiB: fewer, larger reads (a kubectl upload
 * 1.56 -> 1.16-1.4 s/GiB in the proxy bench), and fewer ws messages span two slabs.
 */
export class ReadSlabs implements ChunkTracker {
  #current: Slab;
  #offset = 0;
  #shortReads = 0;
  /** Small slabs, or bulk ones and their free list on loan from the budget. */
  readonly #bound: BudgetedBound;
  /** Every slab whose views may still be released: the current, the held, the free. */
  readonly #tracked = new Map<ArrayBufferLike, Slab>();
  /** Retired slabs with views out, oldest first. */
  readonly #held: Slab[] = [];
  /** Retired slabs with none, ready to be read into again. */
  readonly #free: Slab[] = [];
  /** Span buffers out (handed to ws, or held by views), oldest first; and released ones. */
  readonly #spansOut: Slab[] = [];
  readonly #spansFree: Slab[] = [];

  readonly #bulkSlabBytes: () => number;

  constructor(budget: BufferBudget | undefined, bulkSlabBytes: () => number = () => SHARED_BULK_SLAB_BYTES) {
    this.#bulkSlabBytes = bulkSlabBytes;
    // The loan covers the largest slabs and their free list.
    this.#bound = new BudgetedBound(budget, SMALL_SLAB_BYTES, FEW_STREAMS_BULK_SLAB_BYTES * (1 + MIN_FREE_BULK_SLABS));
    this.#current = this.#newSlab(this.#slabBytes());
  }

  /** Node asks for the buffer of the next read after each read. */
  readonly next = (): Buffer => {
    const size = this.#slabBytes();
    const current = this.#current;
    if (current.buffer.length - this.#offset >= MIN_READ_BYTES && current.buffer.length === size) {
      return current.buffer.subarray(this.#offset);
    }
    this.#retire(current);
    let slab = this.#free.pop();
    if (slab !== undefined && slab.buffer.length !== size) {
      this.#tracked.delete(slab.buffer.buffer); // the size changed: the free list goes
      this.#dropFree();
      slab = undefined;
    }
    this.#current = slab ?? this.#newSlab(size);
    this.#offset = 0;
    return this.#current.buffer;
  };

  used(nread: number, offered: number): void {
    this.#offset += nread;
    this.#current.refs++; // the chunk goes to the parser
    if (nread === offered) {
      // Bytes are waiting: bulk slabs from the next read on, if the budget lends them.
      this.#shortReads = 0;
      if (!this.#isBulk() && this.#bound.grow()) this.#dropFree();
    } else if (nread < SHORT_READ_BYTES && this.#isBulk() && ++this.#shortReads >= SHRINK_AFTER_SHORT_READS) {
      // Back to small slabs: the bulk ones go as they are released.
      this.#shortReads = 0;
      this.#bound.release();
      this.#dropFree();
    }
  }

  retain(chunk: Buffer): void {
    const slab = this.#tracked.get(chunk.buffer);
    if (slab !== undefined) slab.refs++;
  }

  spanBuffer(n: number): Buffer {
    let span: Slab | undefined;
    const free = this.#spansFree;
    for (let i = 0; i < free.length; i++) {
      const length = free[i]!.buffer.length;
      if (length >= n && length <= 2 * n) {
        span = free[i]!;
        free.splice(i, 1);
        break;
      }
    }
    if (span === undefined) {
      span = { buffer: Buffer.allocUnsafe(n), refs: 0, span: true };
      this.#tracked.set(span.buffer.buffer, span);
    }
    this.#spansOut.push(span);
    if (this.#spansOut.length > MAX_OUT_SPAN_BUFFERS) this.#tracked.delete(this.#spansOut.shift()!.buffer.buffer);
    return span.buffer.length === n ? span.buffer : span.buffer.subarray(0, n);
  }

  release(chunk: Buffer): void {
    const slab = this.#tracked.get(chunk.buffer);
    if (slab === undefined || --slab.refs !== 0 || slab === this.#current) return;
    if (slab.span) return this.#spanReleased(slab);
    const at = this.#held.indexOf(slab);
    if (at >= 0) this.#held.splice(at, 1);
    this.#keepFree(slab);
  }

  close(): void {
    this.#bound.release();
    this.#tracked.clear();
    this.#held.length = 0;
    this.#free.length = 0;
    this.#spansOut.length = 0;
    this.#spansFree.length = 0;
  }

  /** Nothing holds a span buffer any more: kept for the next spanning message, if there is room. */
  #spanReleased(span: Slab): void {
    const at = this.#spansOut.indexOf(span);
    if (at >= 0) this.#spansOut.splice(at, 1);
    if (this.#isBulk() && this.#spansFree.length < MAX_FREE_SPAN_BUFFERS) this.#spansFree.push(span);
    else this.#tracked.delete(span.buffer.buffer);
  }

  #isBulk(): boolean {
    return this.#bound.limit > SMALL_SLAB_BYTES;
  }

  #slabBytes(): number {
    return this.#isBulk() ? this.#bulkSlabBytes() : SMALL_SLAB_BYTES;
  }

  #newSlab(size: number): Slab {
    const slab = { buffer: Buffer.allocUnsafe(size), refs: 0 };
    this.#tracked.set(slab.buffer.buffer, slab);
    return slab;
  }

  #retire(slab: Slab): void {
    if (slab.refs === 0) return this.#keepFree(slab);
    this.#held.push(slab);
    if (this.#held.length > MAX_HELD_SLABS) this.#tracked.delete(this.#held.shift()!.buffer.buffer);
  }

  /** A slab nothing holds: kept for reuse if it has the current size and there is room. */
  #keepFree(slab: Slab): void {
    const size = this.#slabBytes();
    const room = this.#isBulk() ? Math.max(MIN_FREE_BULK_SLABS, Math.floor(FREE_BULK_BYTES / size)) : MAX_FREE_SMALL_SLABS;
    if (slab.buffer.length === size && this.#free.length < room) this.#free.push(slab);
    else this.#tracked.delete(slab.buffer.buffer);
  }

  /** The slab size changed: free slabs of the old size go to the GC. */
  #dropFree(): void {
    for (const slab of this.#free) this.#tracked.delete(slab.buffer.buffer);
    this.#free.length = 0;
    for (const span of this.#spansFree) this.#tracked.delete(span.buffer.buffer);
    this.#spansFree.length = 0;
  }
}
