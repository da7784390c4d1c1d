// SPDY/3 header blocks: u32 count, then (u32 length, name, u32 length, value) pairs, names
// lower-case, several values joined by NUL. Blocks are zlib streams that continue across
// the frames of one direction of a connection, each block ending with a sync flush.
//
// Inbound: one zlib inflate context (with the SPDY/3 dictionary) per connection for its
// whole life. Node's zlib keeps a context only in its stream API, which inflates on the
// thread pool: a round trip through it per SYN_STREAM cost a fifth of the server's CPU per
// new connection, and held the connection back behind dials queued on the same pool. So
// the stream's native handle is driven synchronously (writeSync, as zlib.inflateSync does
// internally, but keeping the context): a port-forward header block inflates in a few
// microseconds. Output is capped at MAX_HEADER_BLOCK_BYTES: past it the context is
// destroyed and the session ends.
//
// Outbound: a port-forward server only ever sends empty SYN_REPLY blocks, so our
// "compressor" emits zlib *stored* blocks: a valid zlib stream that any inflater reads,
// built synchronously, with no context to keep beyond "was the zlib header sent". Each
// block ends, as zlib's Z_SYNC_FLUSH output does, with an empty stored block: Go's flate
// reader hands out a stored block's bytes only when it reaches the next block header, and
// without that marker it would read past the frame and fail every later frame.

import { createInflate, createInflateRaw, constants as zlibConstants, type Inflate, type InflateRaw } from 'node:zlib';
import { MAX_HEADER_BLOCK_BYTES, MAX_HEADER_COUNT } from './constants';
import { SPDY3_HEADER_DICTIONARY } from './dictionary';
import { ProtocolError } from './errors';

export type HeaderMap = Map<string, string>;

/** Parse an inflated header block. Names are lower-cased (peers must send them so). */
export function parseHeaderBlock(block: Buffer): HeaderMap {
  const fail = (rule: string): never => {
    throw ProtocolError.session(`malformed header block: ${rule}`);
  };
  if (block.length < 4) fail('shorter than its count');
  const count = block.readUInt32BE(0);
  if (count > MAX_HEADER_COUNT) fail(`${count} headers exceed the limit of ${MAX_HEADER_COUNT}`);
  const headers: HeaderMap = new Map();
  let offset = 4;
  const readString = (what: string): string => {
    if (offset + 4 > block.length) fail(`${what} length runs past the block`);
    const length = block.readUInt32BE(offset);
    offset += 4;
    if (length > block.length - offset) fail(`${what} of ${length} bytes runs past the block`);
    const value = block.toString('latin1', offset, offset + length);
    offset += length;
    return value;
  };
  for (let i = 0; i < count; i++) {
    const name = readString('header name').toLowerCase();
    if (name.length === 0) fail('empty header name');
    const value = readString(`value of header "${name}"`);
    if (headers.has(name)) fail(`duplicate header "${name}"`);
    headers.set(name, value);
  }
  if (offset !== block.length) fail(`${block.length - offset} bytes after the last header`);
  return headers;
}

export function serializeHeaderBlock(headers: Iterable<[string, string]>): Buffer {
  const entries = [...headers].map(([name, value]): [string, string] => [name.toLowerCase(), value]);
  let size = 4;
  for (const [name, value] of entries) size += 8 + Buffer.byteLength(name, 'latin1') + Buffer.byteLength(value, 'latin1');
  const out = Buffer.allocUnsafe(size);
  out.writeUInt32BE(entries.length, 0);
  let offset = 4;
  for (const [name, value] of entries) {
    for (const s of [name, value]) {
      const length = out.write(s, offset + 4, 'latin1');
      out.writeUInt32BE(length, offset);
      offset += 4 + length;
    }
  }
  return out;
}

/** zlib header: deflate, 32 KiB window, no preset dictionary (stored blocks need none). */
const ZLIB_HEADER = Buffer.from([0x78, 0x01]);
const MAX_STORED_BLOCK = 0xffff;
/** An empty, non-final stored block: the sync-flush marker. */
const SYNC_FLUSH_MARKER = Buffer.from([0x00, 0x00, 0x00, 0xff, 0xff]);

export class HeaderBlockEncoder {
  #started: boolean;

  /** `started`: the zlib header went out already (an upgrade's adopted connection). */
  constructor(started = false) {
    this.#started = started;
  }

  /** Whether the zlib header has gone out: all there is to hand over. */
  get started(): boolean {
    return this.#started;
  }

  /** The compressed form of one header block, continuing this connection's zlib stream. */
  encode(headers: Iterable<[string, string]>): Buffer {
    const raw = serializeHeaderBlock(headers);
    const parts: Buffer[] = [];
    if (!this.#started) {
      parts.push(ZLIB_HEADER);
      this.#started = true;
    }
    for (let offset = 0; offset < raw.length; offset += MAX_STORED_BLOCK) {
      const piece = raw.subarray(offset, Math.min(raw.length, offset + MAX_STORED_BLOCK));
      const blockHeader = Buffer.allocUnsafe(5);
      blockHeader[0] = 0x00; // BFINAL=0, BTYPE=00 (stored), then padding to the byte
      blockHeader.writeUInt16LE(piece.length, 1);
      blockHeader.writeUInt16LE(~piece.length & 0xffff, 3);
      parts.push(blockHeader, piece);
    }
    parts.push(SYNC_FLUSH_MARKER);
    return Buffer.concat(parts);
  }
}

/** The native zlib handle behind a Node zlib stream (lib/zlib.js), used synchronously. */
interface ZlibHandle {
  writeSync(flush: number, input: Buffer, inOffset: number, inLength: number, out: Buffer, outOffset: number, outLength: number): void;
}
type InflateWithHandle = (Inflate | InflateRaw) & { _handle: ZlibHandle | null; _writeState: Uint32Array };

// Checked once at start, so that a Node whose zlib stream lacks what decode() drives fails
// with this message when the server starts, not with a TypeError on every SYN_STREAM.
{
  const probe = createInflate() as InflateWithHandle;
  const usable = typeof probe._handle?.writeSync === 'function' && probe._writeState instanceof Uint32Array;
  probe.close();
  if (!usable) {
    throw new Error(`this Node (${process.version}) has no synchronous handle on its zlib streams (_handle.writeSync, _writeState): SPDY header blocks cannot be inflated`);
  }
}

/**
 * Where every block is inflated: decoding is synchronous and single-threaded, and the
 * headers are copied out as strings, so one buffer serves all sessions. One byte over the
 * limit tells a block at the limit from one past it.
 */
const INFLATED = Buffer.allocUnsafe(MAX_HEADER_BLOCK_BYTES + 1);

/** zlib's window: what a deflate stream may refer back to. */
export const ZLIB_WINDOW_BYTES = 32 * 1024;

/**
 * The inflated bytes of a connection's header blocks, as far back as zlib's window reaches,
 * kept so that an upgrade can hand the context over: Node cannot export a zlib context,
 * but a raw inflate given these bytes as its dictionary continues the stream exactly (the
 * peer's next block may refer back into them). Starts as the SPDY dictionary, which is
 * where the window starts; grows with the blocks (about 100 bytes per port-forward
 * stream), is compacted to the window once it reaches twice that.
 */
class InflatedHistory {
  /** The bytes so far: `initial` itself until the first append (no copy for sessions that open no stream). */
  #bytes: Buffer;
  #length: number;

  constructor(initial: Buffer) {
    this.#bytes = initial;
    this.#length = initial.length;
  }

  append(source: Buffer, length: number): void {
    if (this.#length + length > this.#bytes.length || this.#bytes.length === this.#length) {
      // Full (or still the initial bytes): keep the window, with room to grow to twice it.
      const keep = Math.min(this.#length, ZLIB_WINDOW_BYTES);
      const size = Math.max(keep + length, Math.min(2 * ZLIB_WINDOW_BYTES, Math.max(4096, 2 * (keep + length))));
      const next = Buffer.allocUnsafe(size);
      this.#bytes.copy(next, 0, this.#length - keep, this.#length);
      this.#bytes = next;
      this.#length = keep;
    }
    source.copy(this.#bytes, this.#length, 0, length);
    this.#length += length;
  }

  /** The window: the last ZLIB_WINDOW_BYTES bytes (a copy). */
  window(): Buffer {
    return Buffer.from(this.#bytes.subarray(Math.max(0, this.#length - ZLIB_WINDOW_BYTES), this.#length));
  }
}

export class HeaderBlockDecoder {
  /** Made at the first block: a session that opens no stream (or an adopted one that opens none) needs no zlib context. */
  #inflate: InflateWithHandle | undefined;
  readonly #adoptedWindow: Buffer | undefined;
  #closed = false;
  #failure: ProtocolError | undefined;
  /** A block has been inflated: the zlib header is behind us. */
  #started: boolean;
  readonly #history: InflatedHistory;

  /**
   * A new connection's decoder, or (an upgrade's new process) one that continues a
   * context whose window was handed over (see window()).
   */
  constructor(adoptedWindow?: Buffer) {
    this.#started = adoptedWindow !== undefined;
    this.#adoptedWindow = adoptedWindow;
    this.#history = new InflatedHistory(adoptedWindow ?? SPDY3_HEADER_DICTIONARY);
  }

  #context(): InflateWithHandle {
    if (this.#inflate !== undefined) return this.#inflate;
    const window = this.#adoptedWindow;
    const inflate = (window === undefined ? createInflate({ dictionary: SPDY3_HEADER_DICTIONARY }) : createInflateRaw({ dictionary: window })) as InflateWithHandle;
    // A zlib error destroys the stream at once (so we see it below) and emits 'error' later.
    inflate.on('error', () => undefined);
    this.#inflate = inflate;
    return inflate;
  }

  /**
   * For a handover, between blocks: the window to continue from, or undefined if no block
   * has been inflated yet (the new process starts a fresh context then).
   */
  window(): Buffer | undefined {
    return this.#started ? this.#history.window() : undefined;
  }

  /**
   * Decode one block, in arrival order; throws a session ProtocolError, and keeps throwing
   * it once the context is broken.
   */
  decode(compressed: Buffer): HeaderMap {
    if (this.#failure !== undefined) throw this.#failure;
    if (this.#closed) throw this.#fail('corrupt header block compression: the zlib context is closed');
    const inflate = this.#context();
    const handle = inflate._handle;
    if (handle === null) throw this.#fail('corrupt header block compression: the zlib context is closed');
    const state = inflate._writeState; // [output space left, input left] after each call
    let inOffset = 0;
    let inLength = compressed.length;
    let outOffset = 0;
    for (;;) {
      const outSpace = INFLATED.length - outOffset;
      handle.writeSync(zlibConstants.Z_SYNC_FLUSH, compressed, inOffset, inLength, INFLATED, outOffset, outSpace);
      if (inflate.destroyed) {
        throw this.#fail(`corrupt header block compression: ${inflate.errored?.message ?? 'zlib error'}`);
      }
      outOffset += outSpace - state[0]!;
      inOffset += inLength - state[1]!;
      inLength = state[1]!;
      if (outOffset > MAX_HEADER_BLOCK_BYTES) {
        throw this.#fail(`header block inflates past the limit of ${MAX_HEADER_BLOCK_BYTES} bytes`);
      }
      // zlib stops early only when the output is full; otherwise the block is all out.
      if (state[0] !== 0) break;
    }
    this.#started = true;
    this.#history.append(INFLATED, outOffset);
    return parseHeaderBlock(INFLATED.subarray(0, outOffset));
  }

  #fail(message: string): ProtocolError {
    this.#failure = ProtocolError.session(message);
    this.#inflate?.destroy();
    return this.#failure;
  }

  close(): void {
    this.#closed = true;
    this.#inflate?.destroy();
  }
}
