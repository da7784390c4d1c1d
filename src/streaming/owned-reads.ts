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
// that fills what it was given means bytes are waiting, and the next slabs are 1 MiB while
// the buffer budget lends the difference (fewer, larger reads: the pod side's bench went
// from 1.16 to 0.52 s/GiB with the same change); a run of short reads gives it back.

import { Socket } from 'node:net';
import { BudgetedBound, type BufferBudget } from '../buffer-budget';

const SMALL_SLAB_BYTES = 16 * 1024;
const BULK_SLAB_BYTES = 1024 * 1024;
/** A rest of a slab smaller than this is not offered to a read: a new slab is taken. */
const MIN_READ_BYTES = 4 * 1024;
/** Reads shorter than this in a row before the bulk slabs are given back. */
const SHRINK_AFTER_SHORT_READS = 32;
const SHORT_READ_BYTES = 64 * 1024;

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
): ChunkTracker | undefined {
  const s = onreadSymbols();
  const handle = (socket as unknown as { _handle: UserBufferHandle | null })._handle;
  if (s === null || handle === null || typeof handle.useUserBuffer !== 'function' || socket.constructor !== Socket) return undefined;
  const slabs = new ReadSlabs(budget);
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
}

/**
 * Retired slabs kept for reuse; past this, the oldest is left to the GC. A tunnelled
 * upload has up to 7 slabs in flight (a 256 MiB kubectl upload: 17 slabs made, 247
 * reused with 8; 93 made with 4).
 */
const MAX_RETIRED_SLABS = 8;

/**
 * The slabs of one socket. A slab is reused once every view of it has been released, so a
 * steady upload reads into the same few slabs instead of allocating a stream of new
 * memory, which V8 answers with a major GC every 64 MiB (a profile of a 1 GiB upload:
 * 27 mark-compacts, a third of the server's CPU). A view that is never released (its
 * stream was reset with it unread) only keeps its slab from being reused.
 */
export class ReadSlabs implements ChunkTracker {
  #current: Slab;
  #offset = 0;
  #shortReads = 0;
  readonly #bound: BudgetedBound;
  /** Every slab whose views may still be released: the current one and the retired. */
  readonly #tracked = new Map<ArrayBufferLike, Slab>();
  readonly #retired: Slab[] = [];

  constructor(budget: BufferBudget | undefined) {
    this.#bound = new BudgetedBound(budget, SMALL_SLAB_BYTES, BULK_SLAB_BYTES);
    this.#current = this.#newSlab();
  }

  /** Node asks for the buffer of the next read after each read. */
  readonly next = (): Buffer => {
    const size = this.#bound.limit;
    if (this.#current.buffer.length - this.#offset < MIN_READ_BYTES || this.#current.buffer.length !== size) {
      this.#retire(this.#current);
      this.#current = this.#reusable(size) ?? this.#newSlab();
      this.#offset = 0;
    }
    return this.#current.buffer.subarray(this.#offset);
  };

  used(nread: number, offered: number): void {
    this.#offset += nread;
    this.#current.refs++; // the chunk goes to the parser
    if (nread === offered) {
      // Bytes are waiting: bulk slabs from the next read on, if the budget lends them.
      this.#shortReads = 0;
      this.#bound.grow();
    } else if (nread < SHORT_READ_BYTES && this.#bound.limit > SMALL_SLAB_BYTES && ++this.#shortReads >= SHRINK_AFTER_SHORT_READS) {
      this.#shortReads = 0;
      this.#bound.release();
      this.#forgetRetired();
    }
  }

  retain(chunk: Buffer): void {
    const slab = this.#tracked.get(chunk.buffer);
    if (slab !== undefined) slab.refs++;
  }

  release(chunk: Buffer): void {
    const slab = this.#tracked.get(chunk.buffer);
    if (slab !== undefined) slab.refs--;
  }

  close(): void {
    this.#bound.release();
    this.#tracked.clear();
    this.#retired.length = 0;
  }

  // Back to small slabs: the retired bulk ones will not be read into again. Some may still
  // be pinned by a view nobody will release (a stream reset with data unread): left to
  // the GC now, so that at most MAX_RETIRED_SLABS bulk slabs outlive a burst, and only
  // while the budget lends the session its bulk size.
  #forgetRetired(): void {
    for (const slab of this.#retired) this.#tracked.delete(slab.buffer.buffer);
    this.#retired.length = 0;
  }

  #newSlab(): Slab {
    const slab = { buffer: Buffer.allocUnsafe(this.#bound.limit), refs: 0 };
    this.#tracked.set(slab.buffer.buffer, slab);
    return slab;
  }

  #retire(slab: Slab): void {
    this.#retired.push(slab);
    if (this.#retired.length > MAX_RETIRED_SLABS) this.#tracked.delete(this.#retired.shift()!.buffer.buffer);
  }

  /** A retired slab of this size that nothing holds; retired ones of another size go. */
  #reusable(size: number): Slab | undefined {
    const retired = this.#retired;
    for (let i = 0; i < retired.length; i++) {
      const slab = retired[i]!;
      if (slab.refs !== 0) continue;
      retired.splice(i, 1);
      if (slab.buffer.length === size) return slab;
      this.#tracked.delete(slab.buffer.buffer);
      i--;
    }
    return undefined;
  }
}
