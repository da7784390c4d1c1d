// Seeded fuzzing of the SPDY/3.1 frame parser and session. Inputs are valid frame
// sequences (real zlib header blocks from one deflate context each) mutated by bit flips,
// byte writes, truncation, splicing, random length fields, inserted garbage and frame
// reordering, then fed in random chunks.
//
// Parser: each input goes to two fresh FrameParsers, whole and in random chunks; the only
// failure allowed is a session-level ProtocolError (the parser's 'error'), and both must
// hand out the same frames and fail the same way. Session: a sample goes to fresh SpdySessions over a hand-driven Duplex whose
// streams do random things; nothing may escape (exception or rejection), every session
// must end when its transport ends, and what the session writes must be well-formed.
//
// Reproduce a run with SPDY_FUZZ_SEED=<seed>; scale with SPDY_FUZZ_PARSER_INPUTS and
// SPDY_FUZZ_SESSION_INPUTS.

import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import { describe, it } from 'node:test';
import { setImmediate as tick } from 'node:timers/promises';
import { createLogger } from '../../src/log';
import { ProtocolError } from '../../src/streaming/spdy/errors';
import { FrameParser } from '../../src/streaming/spdy/parser';
import { SpdySession } from '../../src/streaming/spdy/session';
import type { SpdyStream } from '../../src/streaming/spdy/stream';
import {
  FIN,
  PeerDeflater,
  PeerInflater,
  RecordingSink,
  T,
  canonicalEvents,
  dataFrame,
  goAwayFrame,
  headersFrame,
  pingFrame,
  portForwardHeaders,
  rstStreamFrame,
  settingsFrame,
  splitFrames,
  synReplyFrame,
  synStream,
  unknownControlFrame,
  windowUpdateFrame,
  type WireFrame,
} from '../support/spdy-frames';

const SEED = process.env.SPDY_FUZZ_SEED !== undefined ? Number(process.env.SPDY_FUZZ_SEED) >>> 0 : 0x5eed5bd1;
const PARSER_INPUTS = Number(process.env.SPDY_FUZZ_PARSER_INPUTS ?? 100_000);
const SESSION_INPUTS = Number(process.env.SPDY_FUZZ_SESSION_INPUTS ?? 2_000);
const BASE_SEQUENCES = 48;

/** mulberry32: a tiny seeded PRNG. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Rng {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

// ---- inputs ----------------------------------------------------------------------------

/** A valid frame sequence as a Go client could send it (one deflate context). */
async function baseSequence(rng: Rng): Promise<Buffer[]> {
  const deflater = new PeerDeflater(rng.pick([0, 1, 6, 9]));
  const frames: Buffer[] = [];
  const open: number[] = [];
  let nextId = 1;
  const count = rng.range(3, 24);
  try {
    for (let i = 0; i < count; i++) {
      const r = rng.int(100);
      if (r < 25 || open.length === 0) {
        const id = nextId;
        nextId += 2;
        open.push(id);
        const headers = rng.chance(0.9)
          ? portForwardHeaders(rng.chance(0.5) ? 'error' : 'data', rng.range(1, 65535), rng.int(5))
          : [[`x-${rng.int(1000)}`, rng.bytes(rng.int(20)).toString('latin1')] as [string, string]];
        frames.push(await synStream(deflater, id, headers, { flags: rng.chance(0.1) ? FIN : 0, priority: rng.int(8) }));
      } else if (r < 60) {
        frames.push(dataFrame(rng.pick(open), rng.bytes(rng.chance(0.2) ? 0 : rng.int(300)), rng.chance(0.2)));
      } else if (r < 68) {
        frames.push(pingFrame(rng.chance(0.7) ? 2 * rng.int(1000) + 1 : 2 * rng.int(1000)));
      } else if (r < 74) {
        frames.push(rstStreamFrame(rng.pick(open), rng.range(1, 11)));
      } else if (r < 78) {
        frames.push(settingsFrame([{ id: rng.range(1, 8), value: rng.int(1 << 20) }]));
      } else if (r < 82) {
        frames.push(windowUpdateFrame(rng.pick([0, ...open]), rng.range(1, 1 << 20)));
      } else if (r < 86) {
        frames.push(headersFrame(rng.pick(open), await deflater.compress([['x-h', String(rng.int(100))]])));
      } else if (r < 88) {
        frames.push(synReplyFrame(rng.pick(open), await deflater.compress([])));
      } else if (r < 93) {
        frames.push(unknownControlFrame(rng.pick([0, 5, 10, 0x7fff, 0xffff]), rng.bytes(rng.int(40))));
      } else if (r < 95) {
        frames.push(goAwayFrame(rng.pick(open), rng.int(3)));
      } else {
        frames.push(dataFrame(rng.pick(open), Buffer.alloc(0), true));
      }
    }
  } finally {
    deflater.close();
  }
  return frames;
}

const LENGTHS = [0, 1, 3, 4, 7, 8, 9, 10, 1023, 1024, 1025, 65535, 65536, 65546, 65547, 0xfffffe, 0xffffff];

function mutate(rng: Rng, base: readonly Buffer[], corpus: readonly (readonly Buffer[])[]): Buffer {
  let frames = base.map((f) => Buffer.from(f));
  // frame-level mutations first
  if (rng.chance(0.2) && frames.length > 1) {
    const i = rng.int(frames.length);
    const j = rng.int(frames.length);
    [frames[i], frames[j]] = [frames[j]!, frames[i]!];
  }
  if (rng.chance(0.15)) frames.splice(rng.int(frames.length + 1), 0, Buffer.from(rng.pick(frames)));
  if (rng.chance(0.1) && frames.length > 1) frames.splice(rng.int(frames.length), 1);
  if (rng.chance(0.15)) {
    // a frame header field: stream id, type, version, flags or length
    const f = rng.pick(frames);
    switch (rng.int(5)) {
      case 0:
        if (f[0]! & 0x80) f.writeUInt16BE(rng.pick([0, 1, 2, 4, 5, 10, 0xffff]), 2);
        else f.writeUInt32BE(rng.pick([0, 2, 4, 0x7fffffff, rng.int(0x80000000)]), 0);
        break;
      case 1:
        f.writeUInt16BE(0x8000 | rng.pick([0, 1, 2, 4, 0x7fff]), 0);
        break;
      case 2:
        f[4] = rng.int(256);
        break;
      default:
        f.writeUIntBE(rng.pick(LENGTHS), 5, 3);
    }
  }
  let bytes = Buffer.concat(frames);
  const edits = rng.range(0, 4);
  for (let e = 0; e < edits && bytes.length > 0; e++) {
    switch (rng.int(7)) {
      case 0: {
        const i = rng.int(bytes.length);
        bytes[i] = bytes[i]! ^ (1 << rng.int(8));
        break;
      }
      case 1:
        bytes[rng.int(bytes.length)] = rng.pick([0x00, 0xff, 0x80, 0x7f, rng.int(256)]);
        break;
      case 2:
        bytes = bytes.subarray(0, rng.int(bytes.length + 1));
        break;
      case 3: {
        // splice: our prefix, another sequence's suffix
        const other = Buffer.concat(rng.pick(corpus));
        bytes = Buffer.concat([bytes.subarray(0, rng.int(bytes.length + 1)), other.subarray(rng.int(other.length + 1))]);
        break;
      }
      case 4: {
        const at = rng.int(bytes.length + 1);
        bytes = Buffer.concat([bytes.subarray(0, at), rng.bytes(rng.range(1, 16)), bytes.subarray(at)]);
        break;
      }
      case 5: {
        // a random 24-bit length at a random offset
        if (bytes.length >= 3) bytes.writeUIntBE(rng.pick([...LENGTHS, rng.int(0x1000000)]), rng.int(bytes.length - 2), 3);
        break;
      }
      default: {
        const at = rng.int(bytes.length + 1);
        bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + rng.int(32))]);
      }
    }
  }
  return bytes;
}

function chunked(rng: Rng, bytes: Buffer): Buffer[] {
  if (bytes.length === 0) return [bytes];
  const chunks: Buffer[] = [];
  const style = rng.int(4);
  let offset = 0;
  while (offset < bytes.length) {
    const n = style === 0 ? 1 : style === 1 ? rng.range(1, 8) : style === 2 ? rng.range(1, 64) : rng.range(1, bytes.length);
    chunks.push(bytes.subarray(offset, offset + n));
    offset += n;
  }
  return chunks;
}

// ---- running ---------------------------------------------------------------------------

interface ParseOutcome {
  events: string[];
  error: string | undefined;
}

function runParser(chunks: readonly Buffer[]): ParseOutcome {
  const sink = new RecordingSink();
  const parser = new FrameParser(sink);
  parser.on('error', () => undefined); // read synchronously below, as `errored`
  for (const chunk of chunks) {
    if (parser.destroyed) break; // as the session does: a write after that only makes an error
    parser.write(chunk);
  }
  const err = parser.errored;
  if (err !== null && !(err instanceof ProtocolError && err.scope.kind === 'session')) throw err;
  return { events: canonicalEvents(sink.events), error: err?.message };
}

/** Catch anything that escapes while `fn` runs. */
async function watchingEscapes(fn: () => Promise<void>): Promise<unknown[]> {
  const escaped: unknown[] = [];
  const onException = (err: unknown): void => void escaped.push(err);
  const onRejection = (reason: unknown): void => void escaped.push(reason);
  process.on('uncaughtException', onException);
  process.on('unhandledRejection', onRejection);
  try {
    await fn();
    await tick();
  } finally {
    process.off('uncaughtException', onException);
    process.off('unhandledRejection', onRejection);
  }
  return escaped;
}

const log = createLogger('error');
const INVALID_STREAM = 2;
const SERVER_CONTROL_TYPES = new Set<number>([T.SynReply, T.RstStream, T.Ping, T.GoAway]);

/** What a server may write: well-formed frames, SYN_REPLY before DATA, nothing after FIN/RST. */
function checkOutput(output: Buffer, where: string): WireFrame[] {
  let frames: WireFrame[];
  try {
    frames = splitFrames(output);
  } catch (err) {
    assert.fail(`${where}: output is not whole frames: ${(err as Error).message}`);
  }
  const replied = new Set<number>();
  const closed = new Set<number>();
  const reset = new Set<number>();
  let goneAway = false;
  for (const f of frames) {
    assert.equal(goneAway, false, `${where}: a frame after GOAWAY`);
    if (!f.control) {
      assert.ok(f.streamId % 2 === 1, `${where}: DATA on even stream ${f.streamId}`);
      assert.ok(replied.has(f.streamId), `${where}: DATA on stream ${f.streamId} before its SYN_REPLY`);
      assert.ok(!closed.has(f.streamId) && !reset.has(f.streamId), `${where}: DATA on stream ${f.streamId} after FIN or RST`);
      if (f.flags & FIN) closed.add(f.streamId);
      assert.equal(f.flags & ~FIN, 0, `${where}: DATA flags ${f.flags}`);
      continue;
    }
    assert.equal(f.version, 3, `${where}: version ${f.version}`);
    assert.ok(SERVER_CONTROL_TYPES.has(f.type), `${where}: we sent control type ${f.type}`);
    switch (f.type) {
      case T.SynReply:
        assert.ok(!replied.has(f.streamId), `${where}: second SYN_REPLY for ${f.streamId}`);
        assert.ok(!reset.has(f.streamId), `${where}: SYN_REPLY for ${f.streamId} after RST`);
        replied.add(f.streamId);
        break;
      case T.RstStream: {
        assert.equal(f.length, 8);
        const code = f.body.readUInt32BE(4);
        if (code === INVALID_STREAM) {
          // DATA for a stream never opened; KNOWN BUG (see spdy-session.test.ts): one RST per
          // piece of the frame as it arrives, so no "only once" rule here
          assert.ok(!replied.has(f.streamId), `${where}: INVALID_STREAM for replied stream ${f.streamId}`);
          break;
        }
        assert.ok(!reset.has(f.streamId), `${where}: second RST for ${f.streamId}`);
        reset.add(f.streamId);
        break;
      }
      case T.Ping:
        assert.equal(f.length, 4);
        assert.equal(f.body.readUInt32BE(0) % 2, 1, `${where}: echoed an even PING`);
        break;
      case T.GoAway:
        assert.equal(f.length, 8);
        goneAway = true;
        break;
    }
  }
  return frames;
}

interface SessionRun {
  frames: WireFrame[];
  reason: string;
  /** Streams handed to onStream. */
  opened: number;
}

const SENTINEL_PING = 0xfffffffd;

/**
 * Run one session over `chunks`. With `sentinel` (for inputs of whole frames) a PING follows
 * the input, and the session must answer it or end: proof that it did not stop reading.
 */
async function runSession(
  rng: Rng,
  chunks: readonly Buffer[],
  where: string,
  options: { inflater?: PeerInflater; sentinel?: boolean } = {},
): Promise<SessionRun> {
  const { inflater, sentinel = false } = options;
  const written: Buffer[] = [];
  const transport = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      written.push(Buffer.from(chunk));
      callback();
    },
  });
  const actRng = new Rng(rng.int(0x100000000));
  let opened = 0;
  const act = (stream: SpdyStream, session: SpdySession): void => {
    if (stream.destroyed) return;
    switch (actRng.int(9)) {
      case 0:
        session.reply(stream);
        break;
      case 1:
        stream.write(actRng.bytes(actRng.int(100)));
        break;
      case 2:
        stream.end();
        break;
      case 3:
        stream.destroy();
        break;
      case 4:
        session.reset(stream, actRng.pick([1, 3, 5, 6, 7, 8, 9, 11]), 'fuzz'); // not 2: INVALID_STREAM is checked apart
        break;
      case 5:
        stream.discard();
        break;
      case 6:
        session.reply(stream);
        stream.end(actRng.bytes(actRng.int(50)));
        break;
      case 7:
        if (actRng.chance(0.05)) session.close();
        break;
      default:
        break; // leave it alone
    }
  };
  const session = new SpdySession(transport, {
    idleTimeoutMs: 60_000,
    log,
    onStream: (stream, s) => {
      opened++;
      act(stream, s);
      setImmediate(() => act(stream, s));
    },
  });
  let first = true;
  for (const chunk of chunks) {
    if (first && actRng.chance(0.3)) session.pushInitial(chunk);
    else transport.push(chunk);
    first = false;
    if (actRng.chance(0.3)) await tick();
  }
  if (sentinel) {
    transport.push(pingFrame(SENTINEL_PING));
    const deadline = Date.now() + 2000;
    // Our frames of a turn leave in one write: look for the echo among all of them.
    const answered = (): boolean =>
      splitFrames(Buffer.concat(written)).some((f) => f.control && f.type === T.Ping && f.body.readUInt32BE(0) === SENTINEL_PING);
    while (!answered() && !session.isEnded) {
      assert.ok(Date.now() < deadline, `${where}: the session stopped reading (sentinel PING not answered)`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }
  // let header blocks inflate and the streams act
  for (let i = 0; i < 4; i++) await tick();
  await new Promise((r) => setTimeout(r, 1));
  await tick();
  transport.push(null);
  let timer: NodeJS.Timeout | undefined;
  const reason = await Promise.race([
    session.ended,
    new Promise<string>((resolve) => (timer = setTimeout(() => resolve('did not end'), 2000))),
  ]).finally(() => clearTimeout(timer));
  assert.notEqual(reason, 'did not end', `${where}: session did not end after its transport ended`);
  transport.destroy();
  const output = Buffer.concat(written);
  const frames = checkOutput(output, `${where}, input ${Buffer.concat(chunks).toString('hex')}, output ${output.toString('hex')}`);
  if (inflater !== undefined) {
    for (const f of frames) {
      if (f.control && f.type === T.SynReply) {
        const plain = await inflater.inflate(f.body.subarray(4));
        assert.deepEqual(plain, Buffer.from([0, 0, 0, 0]), `${where}: SYN_REPLY block`);
      }
    }
  }
  return { frames, reason, opened };
}

function synStreamsBeforeGoAway(frames: readonly Buffer[]): number {
  let n = 0;
  for (const f of frames) {
    if (f[0] === 0x80 && f.readUInt16BE(2) === T.GoAway) break;
    if (f[0] === 0x80 && f.readUInt16BE(2) === T.SynStream) n++;
  }
  return n;
}

// ---- the tests -------------------------------------------------------------------------

describe('SPDY fuzz', { concurrency: false }, () => {
  let corpus: Buffer[][] = [];

  it('builds the corpus of valid frame sequences', async (t) => {
    t.diagnostic(`seed ${SEED} (0x${SEED.toString(16)}); reproduce with SPDY_FUZZ_SEED=${SEED}`);
    const rng = new Rng(SEED);
    corpus = [];
    for (let i = 0; i < BASE_SEQUENCES; i++) corpus.push(await baseSequence(rng));
    // the unmutated sequences parse without error
    for (const seq of corpus) assert.equal(runParser([Buffer.concat(seq)]).error, undefined);
  });

  it(`feeds ${PARSER_INPUTS} mutated inputs to FrameParser, whole and in random chunks`, { timeout: 120_000 }, async (t) => {
    assert.ok(corpus.length > 0);
    const rng = new Rng(SEED ^ 0x9e3779b9);
    const started = Date.now();
    let failed = 0;
    let bytes = 0;
    const escaped = await watchingEscapes(async () => {
      for (let n = 0; n < PARSER_INPUTS; n++) {
        const input = mutate(rng, rng.pick(corpus), corpus);
        bytes += input.length;
        const where = `parser input ${n} (seed ${SEED}): ${input.subarray(0, 64).toString('hex')}`;
        let whole: ParseOutcome;
        let pieces: ParseOutcome;
        try {
          whole = runParser([input]);
          pieces = runParser(chunked(rng, input));
        } catch (err) {
          assert.fail(`${where}: ${String(err)} escaped`);
        }
        if (whole.error !== undefined) failed++;
        if (whole.error !== pieces.error || whole.events.length !== pieces.events.length) {
          assert.deepEqual(pieces, whole, `${where}: chunking changed the outcome`);
        }
        for (let i = 0; i < whole.events.length; i++) {
          if (whole.events[i] !== pieces.events[i]) assert.deepEqual(pieces, whole, `${where}: chunking changed frame ${i}`);
        }
      }
    });
    assert.deepEqual(escaped, []);
    const ms = Date.now() - started;
    t.diagnostic(`${PARSER_INPUTS} parser inputs (${(bytes / 1048576).toFixed(1)} MiB), ${failed} ended by a ProtocolError, in ${ms} ms`);
    assert.ok(failed > 0 && failed < PARSER_INPUTS, 'the mutations reach both outcomes');
  });

  it(`feeds ${SESSION_INPUTS} mutated inputs to SpdySessions over a hand-driven Duplex`, { timeout: 120_000 }, async (t) => {
    assert.ok(corpus.length > 0);
    const rng = new Rng(SEED ^ 0x85ebca6b);
    const started = Date.now();
    const reasons = new Map<string, number>();
    let frames = 0;
    const escaped = await watchingEscapes(async () => {
      for (let n = 0; n < SESSION_INPUTS; n++) {
        // a quarter unmutated (so that streams really open), the rest mutated
        const base = rng.pick(corpus);
        const intact = rng.chance(0.25);
        const input = intact ? Buffer.concat(base) : mutate(rng, base, corpus);
        const where = `session input ${n} (seed ${SEED})`;
        const inflater = n % 10 === 0 ? new PeerInflater() : undefined;
        try {
          const run = await runSession(rng, chunked(rng, input), where, { inflater, sentinel: intact });
          reasons.set(run.reason, (reasons.get(run.reason) ?? 0) + 1);
          if (intact) {
            // a valid sequence is no protocol error, and every SYN_STREAM before a GOAWAY opens a stream
            assert.notEqual(run.reason, 'protocol-error', `${where}: valid input ended by a protocol error`);
            if (run.reason !== 'closed') assert.equal(run.opened, synStreamsBeforeGoAway(base), `${where}: streams opened`);
          }
          frames += run.frames.length;
        } finally {
          inflater?.close();
        }
      }
    });
    assert.deepEqual(escaped, []);
    const ms = Date.now() - started;
    t.diagnostic(
      `${SESSION_INPUTS} sessions, ${frames} frames written, endings ${JSON.stringify(Object.fromEntries(reasons))}, in ${ms} ms`,
    );
    assert.ok((reasons.get('protocol-error') ?? 0) > 0, 'some inputs are protocol errors');
    assert.ok((reasons.get('transport-closed') ?? 0) > 0, 'some inputs are fine until the transport closes');
  });
});
