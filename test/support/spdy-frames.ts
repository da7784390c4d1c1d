// Frame builders and readers for SPDY/3.1 tests, written from the draft rather than from
// src/, so that the code under test is checked against an independent encoding.
//
// Header blocks are compressed as a Go peer (kubectl, moby/spdystream) does it: one zlib
// deflate context with the SPDY/3 dictionary per connection direction, every block ended
// by Z_SYNC_FLUSH. Node keeps a zlib context only in its stream API, so compressing is
// asynchronous; PeerDeflater serialises the calls so that blocks come out in call order.

import { createServer, connect, type Socket } from 'node:net';
import { createDeflate, createInflate, constants as zlibConstants, type Deflate, type Inflate } from 'node:zlib';
import { SPDY3_HEADER_DICTIONARY } from '../../src/streaming/spdy/dictionary';

/** Control frame types (SPDY/3 draft 2.6). */
export const T = {
  SynStream: 1,
  SynReply: 2,
  RstStream: 3,
  Settings: 4,
  Ping: 6,
  GoAway: 7,
  Headers: 8,
  WindowUpdate: 9,
} as const;

/** RST_STREAM status codes. */
export const RST = {
  ProtocolError: 1,
  InvalidStream: 2,
  RefusedStream: 3,
  UnsupportedVersion: 4,
  Cancel: 5,
  InternalError: 6,
  FlowControlError: 7,
  StreamInUse: 8,
  StreamAlreadyClosed: 9,
  FrameTooLarge: 11,
} as const;

export const GOAWAY = { Ok: 0, ProtocolError: 1, InternalError: 2 } as const;

export const FIN = 0x01;
export const UNIDIRECTIONAL = 0x02;

export type HeaderList = Iterable<readonly [string, string]>;

// ---- header blocks -------------------------------------------------------------------

/** The plaintext of a header block, names exactly as given (no lower-casing). */
export function plainHeaderBlock(headers: HeaderList): Buffer {
  const parts: Buffer[] = [];
  let count = 0;
  for (const [name, value] of headers) {
    count++;
    for (const s of [name, value]) {
      const bytes = Buffer.from(s, 'latin1');
      const length = Buffer.alloc(4);
      length.writeUInt32BE(bytes.length, 0);
      parts.push(length, bytes);
    }
  }
  const head = Buffer.alloc(4);
  head.writeUInt32BE(count, 0);
  return Buffer.concat([head, ...parts]);
}

/** The three headers of a port-forward stream. */
export function portForwardHeaders(streamType: 'error' | 'data', port: number | string, requestId: number | string): [string, string][] {
  return [
    ['streamtype', streamType],
    ['port', String(port)],
    ['requestid', String(requestId)],
  ];
}

/** One zlib deflate context with the SPDY/3 dictionary, as a Go peer keeps per connection. */
export class PeerDeflater {
  readonly #deflate: Deflate;
  #out: Buffer[] = [];
  #queue: Promise<unknown> = Promise.resolve();

  constructor(level: number = zlibConstants.Z_DEFAULT_COMPRESSION) {
    this.#deflate = createDeflate({ dictionary: SPDY3_HEADER_DICTIONARY, level });
    this.#deflate.on('data', (chunk: Buffer) => this.#out.push(chunk));
  }

  /** Compress plaintext as the next block of this context, ended by a sync flush. */
  compressRaw(plain: Buffer): Promise<Buffer> {
    const result = this.#queue.then(
      () =>
        new Promise<Buffer>((resolve, reject) => {
          this.#out = [];
          if (plain.length > 0) this.#deflate.write(plain);
          this.#deflate.flush(zlibConstants.Z_SYNC_FLUSH, () => {
            // 'data' for this flush is emitted before the flush callback; one more turn to be sure
            setImmediate(() => {
              if (this.#deflate.destroyed) return reject(new Error('deflater closed'));
              resolve(Buffer.concat(this.#out));
            });
          });
        }),
    );
    this.#queue = result.catch(() => undefined);
    return result;
  }

  compress(headers: HeaderList): Promise<Buffer> {
    return this.compressRaw(plainHeaderBlock(headers));
  }

  close(): void {
    this.#deflate.destroy();
  }
}

/** One zlib inflate context with the SPDY/3 dictionary (how a Go peer reads our blocks). */
export class PeerInflater {
  readonly #inflate: Inflate;
  #out: Buffer[] = [];
  #error: Error | undefined;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(dictionary: Buffer | undefined = SPDY3_HEADER_DICTIONARY) {
    this.#inflate = dictionary === undefined ? createInflate() : createInflate({ dictionary });
    this.#inflate.on('data', (chunk: Buffer) => this.#out.push(chunk));
    this.#inflate.on('error', (err: Error) => (this.#error = err));
  }

  /** Inflate one block (a sync-flushed piece of this context's stream) to its plaintext. */
  inflate(block: Buffer): Promise<Buffer> {
    const result = this.#queue.then(
      () =>
        new Promise<Buffer>((resolve, reject) => {
          this.#out = [];
          this.#inflate.write(block);
          this.#inflate.flush(zlibConstants.Z_SYNC_FLUSH, () =>
            setImmediate(() => (this.#error ? reject(this.#error) : resolve(Buffer.concat(this.#out)))),
          );
        }),
    );
    this.#queue = result.catch(() => undefined);
    return result;
  }

  /** Inflate and parse a block into its (name, value) list, in wire order. */
  async headers(block: Buffer): Promise<[string, string][]> {
    return readPlainHeaderBlock(await this.inflate(block));
  }

  close(): void {
    this.#inflate.destroy();
  }
}

/** Parse header block plaintext strictly (throws on any inconsistency). */
export function readPlainHeaderBlock(plain: Buffer): [string, string][] {
  let offset = 0;
  const u32 = (): number => {
    if (offset + 4 > plain.length) throw new Error('header block truncated');
    const v = plain.readUInt32BE(offset);
    offset += 4;
    return v;
  };
  const str = (): string => {
    const n = u32();
    if (offset + n > plain.length) throw new Error('header block truncated');
    const s = plain.toString('latin1', offset, offset + n);
    offset += n;
    return s;
  };
  const count = u32();
  const out: [string, string][] = [];
  for (let i = 0; i < count; i++) out.push([str(), str()]);
  if (offset !== plain.length) throw new Error('bytes after the last header');
  return out;
}

// ---- frame builders ------------------------------------------------------------------

function u32(...values: number[]): Buffer {
  const b = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => b.writeUInt32BE(v >>> 0, 4 * i));
  return b;
}

/** A control frame: control bit + version, type, flags, 24-bit length, body. */
export function controlFrame(type: number, flags: number, body: Buffer, version = 3): Buffer {
  if (body.length > 0xffffff) throw new Error('control body too long');
  const frame = Buffer.alloc(8 + body.length);
  frame.writeUInt16BE(0x8000 | (version & 0x7fff), 0);
  frame.writeUInt16BE(type & 0xffff, 2);
  frame.writeUInt8(flags & 0xff, 4);
  frame.writeUIntBE(body.length, 5, 3);
  body.copy(frame, 8);
  return frame;
}

/** A control frame header alone, with any length (for limit tests: no body follows). */
export function controlFrameHeader(type: number, flags: number, length: number, version = 3): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16BE(0x8000 | (version & 0x7fff), 0);
  h.writeUInt16BE(type & 0xffff, 2);
  h.writeUInt8(flags & 0xff, 4);
  h.writeUIntBE(length, 5, 3);
  return h;
}

export interface SynStreamOptions {
  flags?: number;
  associatedId?: number;
  priority?: number;
  slot?: number;
}

/** SYN_STREAM around an already compressed header block. */
export function synStreamFrame(streamId: number, block: Buffer, options: SynStreamOptions = {}): Buffer {
  const head = Buffer.alloc(10);
  head.writeUInt32BE(streamId & 0x7fffffff, 0);
  head.writeUInt32BE((options.associatedId ?? 0) & 0x7fffffff, 4);
  head.writeUInt8(((options.priority ?? 0) & 0x7) << 5, 8);
  head.writeUInt8(options.slot ?? 0, 9);
  return controlFrame(T.SynStream, options.flags ?? 0, Buffer.concat([head, block]));
}

/** SYN_STREAM with a real header block, compressed as the next block of `deflater`. */
export async function synStream(
  deflater: PeerDeflater,
  streamId: number,
  headers: HeaderList,
  options: SynStreamOptions = {},
): Promise<Buffer> {
  return synStreamFrame(streamId, await deflater.compress(headers), options);
}

export function synReplyFrame(streamId: number, block: Buffer, flags = 0): Buffer {
  return controlFrame(T.SynReply, flags, Buffer.concat([u32(streamId & 0x7fffffff), block]));
}

export function headersFrame(streamId: number, block: Buffer, flags = 0): Buffer {
  return controlFrame(T.Headers, flags, Buffer.concat([u32(streamId & 0x7fffffff), block]));
}

/** A DATA frame header alone (for payloads streamed in pieces). */
export function dataFrameHeader(streamId: number, length: number, flags = 0): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt32BE(streamId & 0x7fffffff, 0);
  h.writeUInt8(flags & 0xff, 4);
  h.writeUIntBE(length, 5, 3);
  return h;
}

export function dataFrame(streamId: number, payload: Buffer | string, fin = false): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  return Buffer.concat([dataFrameHeader(streamId, body.length, fin ? FIN : 0), body]);
}

export function rstStreamFrame(streamId: number, code: number): Buffer {
  return controlFrame(T.RstStream, 0, u32(streamId & 0x7fffffff, code));
}

export function pingFrame(id: number): Buffer {
  return controlFrame(T.Ping, 0, u32(id));
}

export function goAwayFrame(lastGoodStreamId: number, status: number = GOAWAY.Ok): Buffer {
  return controlFrame(T.GoAway, 0, u32(lastGoodStreamId & 0x7fffffff, status));
}

/** SETTINGS: entries of (flags u8, id u24, value u32). */
export function settingsFrame(entries: { flags?: number; id: number; value: number }[], flags = 0): Buffer {
  const body = Buffer.alloc(4 + 8 * entries.length);
  body.writeUInt32BE(entries.length, 0);
  entries.forEach((e, i) => {
    body.writeUInt32BE((((e.flags ?? 0) & 0xff) << 24 | (e.id & 0xffffff)) >>> 0, 4 + 8 * i);
    body.writeUInt32BE(e.value >>> 0, 8 + 8 * i);
  });
  return controlFrame(T.Settings, flags, body);
}

export function windowUpdateFrame(streamId: number, delta: number): Buffer {
  return controlFrame(T.WindowUpdate, 0, u32(streamId & 0x7fffffff, delta & 0x7fffffff));
}

/** A control frame of a type SPDY/3 does not define (e.g. 5, the SPDY/2 NOOP, or 0xffff). */
export function unknownControlFrame(type: number, body: Buffer = Buffer.alloc(0), flags = 0): Buffer {
  return controlFrame(type, flags, body);
}

/** A PING (or other) frame carrying another SPDY version. */
export function badVersionFrame(version: number, type: number = T.Ping, body: Buffer = u32(1)): Buffer {
  return controlFrame(type, 0, body, version);
}

// ---- reading frames back (independent of src/streaming/spdy/parser.ts) -------------------

export interface WireFrame {
  control: boolean;
  /** Control frames only. */
  version: number;
  /** Control frames only. */
  type: number;
  flags: number;
  length: number;
  /** DATA: the frame's id; control frames of types that carry one: the id in the body. */
  streamId: number;
  body: Buffer;
}

const TYPES_WITH_STREAM_ID = new Set<number>([T.SynStream, T.SynReply, T.RstStream, T.Headers, T.WindowUpdate]);

function wireFrame(bytes: Buffer): WireFrame {
  const word = bytes.readUInt32BE(0);
  const flags = bytes[4]!;
  const length = bytes.readUIntBE(5, 3);
  const body = bytes.subarray(8, 8 + length);
  if ((word & 0x80000000) === 0) return { control: false, version: 0, type: 0, flags, length, streamId: word, body };
  const type = word & 0xffff;
  const streamId = TYPES_WITH_STREAM_ID.has(type) && body.length >= 4 ? body.readUInt32BE(0) & 0x7fffffff : 0;
  return { control: true, version: (word >>> 16) & 0x7fff, type, flags, length, streamId, body };
}

/** Split a byte string into whole frames; throws if it does not end on a frame boundary. */
export function splitFrames(bytes: Buffer): WireFrame[] {
  const frames: WireFrame[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    if (offset + 8 > bytes.length) throw new Error(`truncated frame header at ${offset}`);
    const length = bytes.readUIntBE(offset + 5, 3);
    if (offset + 8 + length > bytes.length) throw new Error(`truncated frame body at ${offset}`);
    frames.push(wireFrame(bytes.subarray(offset, offset + 8 + length)));
    offset += 8 + length;
  }
  return frames;
}

/** Incremental frame reader for bytes a peer receives, with awaitable frames. */
export class FrameCollector {
  readonly frames: WireFrame[] = [];
  #chunks: Buffer[] = [];
  #buffered = 0;
  #needed = 8;
  #read = 0;
  #waiters: (() => void)[] = [];
  #ended = false;

  push(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    while (this.#buffered >= this.#needed) {
      const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#buffered);
      this.#chunks = [all];
      const total = 8 + all.readUIntBE(5, 3);
      if (all.length < total) {
        this.#needed = total;
        break;
      }
      this.frames.push(wireFrame(Buffer.from(all.subarray(0, total))));
      this.#chunks = all.length > total ? [all.subarray(total)] : [];
      this.#buffered -= total;
      this.#needed = 8;
    }
    this.#wake();
  }

  /** The peer saw the end of the byte stream. */
  end(): void {
    this.#ended = true;
    this.#wake();
  }

  get isEnded(): boolean {
    return this.#ended;
  }

  /** Bytes of an incomplete frame. */
  get pending(): number {
    return this.#buffered;
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  #wait(timeoutMs: number, what: string, ready: () => boolean): Promise<void> {
    if (ready()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== check);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const check = (): void => {
        if (ready()) {
          clearTimeout(timer);
          resolve();
        } else this.#waiters.push(check);
      };
      this.#waiters.push(check);
    });
  }

  /** The next frame not yet returned, in arrival order. */
  async next(timeoutMs = 5000): Promise<WireFrame> {
    await this.#wait(timeoutMs, 'a frame', () => this.frames.length > this.#read || this.#ended);
    if (this.frames.length <= this.#read) throw new Error('byte stream ended before the next frame');
    return this.frames[this.#read++]!;
  }

  /** Skip frames until one matches. */
  async nextMatching(match: (f: WireFrame) => boolean, timeoutMs = 5000): Promise<WireFrame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const f = await this.next(Math.max(1, deadline - Date.now()));
      if (match(f)) return f;
    }
  }

  /** Resolves when the peer's byte stream ended. */
  async waitEnd(timeoutMs = 5000): Promise<void> {
    await this.#wait(timeoutMs, 'the end of the stream', () => this.#ended);
  }
}

// ---- transports ----------------------------------------------------------------------

export interface SocketPair {
  /** Our side (the session's transport). */
  server: Socket;
  /** The peer's side. */
  client: Socket;
  destroy(): void;
}

/** Two connected TCP sockets over 127.0.0.1; the listener is closed at once. */
export async function socketPair(): Promise<SocketPair> {
  const listener = createServer();
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const { port } = listener.address() as { port: number };
  const accepted = new Promise<Socket>((resolve) => listener.once('connection', resolve));
  const client = connect({ port, host: '127.0.0.1' });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
  });
  const server = await accepted;
  listener.close(); // stops listening; the accepted connection lives on
  client.setNoDelay(true);
  server.setNoDelay(true);
  return {
    server,
    client,
    destroy() {
      client.destroy();
      server.destroy();
    },
  };
}

// ---- recording what a FrameParser hands out --------------------------------------------

export type ParserEvent =
  | { kind: 'data'; streamId: number; payload: Buffer; fin: boolean }
  | { kind: 'control'; type: number; flags: number; body: Buffer };

/** A FrameSink that records every call. */
export class RecordingSink {
  readonly events: ParserEvent[] = [];

  onData(streamId: number, payload: Buffer, fin: boolean): void {
    this.events.push({ kind: 'data', streamId, payload, fin });
  }

  onControl(type: number, flags: number, body: Buffer): void {
    this.events.push({ kind: 'control', type, flags, body });
  }
}

/**
 * Events in a form independent of how the input was chunked: consecutive DATA pieces of
 * one stream (not separated by a FIN) are joined.
 */
export function canonicalEvents(events: readonly ParserEvent[]): string[] {
  const out: string[] = [];
  let run: { streamId: number; parts: Buffer[] } | undefined;
  const flush = (fin: boolean): void => {
    if (run === undefined) return;
    out.push(`DATA ${run.streamId} ${Buffer.concat(run.parts).toString('hex')}${fin ? ' FIN' : ''}`);
    run = undefined;
  };
  for (const e of events) {
    if (e.kind === 'data') {
      if (run !== undefined && run.streamId !== e.streamId) flush(false);
      run ??= { streamId: e.streamId, parts: [] };
      run.parts.push(e.payload);
      if (e.fin) flush(true);
    } else {
      flush(false);
      out.push(`CTRL ${e.type} ${e.flags} ${e.body.toString('hex')}`);
    }
  }
  flush(false);
  return out;
}
