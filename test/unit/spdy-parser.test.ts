import assert from 'node:assert/strict';
import { once } from 'node:events';
import { before, describe, it } from 'node:test';
import { ProtocolError } from '../../src/streaming/spdy/errors';
import { FrameParser, PARSER_HIGH_WATER_MARK, type FrameSink } from '../../src/streaming/spdy/parser';
import {
  FIN,
  PeerDeflater,
  RST,
  RecordingSink,
  T,
  badVersionFrame,
  canonicalEvents,
  controlFrame,
  controlFrameHeader,
  dataFrame,
  dataFrameHeader,
  goAwayFrame,
  headersFrame,
  pingFrame,
  portForwardHeaders,
  rstStreamFrame,
  settingsFrame,
  synReplyFrame,
  synStream,
  unknownControlFrame,
  windowUpdateFrame,
  type ParserEvent,
} from '../support/spdy-frames';

/**
 * A parser driven synchronously: write() runs _write at once when nothing is queued, and
 * a violation shows as the Writable's `errored` (its 'error' event comes a tick later).
 */
function newParser(sink: FrameSink): FrameParser {
  const parser = new FrameParser(sink);
  parser.on('error', () => undefined);
  return parser;
}

/** Write one chunk; throw the violation it caused, if any. */
function push(parser: FrameParser, chunk: Buffer): void {
  const before = parser.errored;
  parser.write(chunk);
  if (parser.errored !== before && parser.errored !== null) throw parser.errored;
}

function parse(...chunks: Buffer[]): ParserEvent[] {
  const sink = new RecordingSink();
  const parser = newParser(sink);
  for (const c of chunks) push(parser, c);
  return sink.events;
}

/** A fresh Buffer with its own ArrayBuffer (not a slice of Node's shared pool). */
function own(bytes: Buffer): Buffer {
  const b = Buffer.alloc(bytes.length);
  bytes.copy(b);
  return b;
}

function isSessionError(pattern: RegExp) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof ProtocolError && err.scope.kind === 'session', `expected a session error, got ${String(err)}`);
    assert.match(err.message, pattern);
    return true;
  };
}

let sequence: Buffer;
let sequenceFrames: Buffer[];

before(async () => {
  const deflater = new PeerDeflater();
  const syn1 = await synStream(deflater, 1, portForwardHeaders('error', 8080, 0));
  const syn3 = await synStream(deflater, 3, portForwardHeaders('data', 8080, 0), { flags: FIN });
  const replyBlock = await deflater.compress([['status', '200']]);
  const headersBlock = await deflater.compress([['x-extra', 'yes']]);
  deflater.close();
  sequenceFrames = [
    syn1,
    dataFrame(1, 'hello'),
    pingFrame(1),
    syn3,
    synReplyFrame(3, replyBlock),
    headersFrame(3, headersBlock),
    settingsFrame([{ id: 4, value: 1000 }, { id: 7, value: 65536, flags: 1 }]),
    windowUpdateFrame(1, 4096),
    unknownControlFrame(5, Buffer.from('skipped body')),
    dataFrame(1, Buffer.alloc(0)),
    dataFrame(3, 'second stream'),
    rstStreamFrame(3, RST.Cancel),
    dataFrame(1, 'bye', true),
    goAwayFrame(3, 0),
  ];
  sequence = Buffer.concat(sequenceFrames);
});

describe('FrameParser', () => {
  it('parses a sequence of every kind of frame the same at every split point and byte by byte', () => {
    const whole = parse(own(sequence));
    const expected = canonicalEvents(whole);
    assert.equal(whole.filter((e) => e.kind === 'control').length, 9); // the unknown one is skipped
    for (let i = 0; i <= sequence.length; i++) {
      const events = parse(sequence.subarray(0, i), sequence.subarray(i));
      assert.deepEqual(canonicalEvents(events), expected, `split at ${i}`);
    }
    const bytes: Buffer[] = [];
    for (let i = 0; i < sequence.length; i++) bytes.push(sequence.subarray(i, i + 1));
    assert.deepEqual(canonicalEvents(parse(...bytes)), expected, 'byte by byte');
  });

  it('hands over at every split point: pendingBytes() in front of the rest parse, in a fresh parser, to the same frames', () => {
    // An upgrade takes what one parser received and has not handed out (a frame begun is
    // re-headed with its rest) and gives it to a parser in the new process.
    const expected = canonicalEvents(parse(own(sequence)));
    for (let i = 0; i <= sequence.length; i++) {
      const sink = new RecordingSink();
      const first = newParser(sink);
      first.write(own(sequence.subarray(0, i)));
      const pending = first.pendingBytes();
      const second = newParser(sink);
      second.write(own(Buffer.concat([pending, sequence.subarray(i)])));
      assert.equal(second.errored, null, `split at ${i}`);
      assert.deepEqual(canonicalEvents(sink.events), expected, `split at ${i}`);
    }
  });

  it('splits one frame at every byte boundary into three pieces', () => {
    const frame = sequenceFrames[0]!;
    const expected = canonicalEvents(parse(frame));
    for (let i = 0; i <= frame.length; i++) {
      for (let j = i; j <= frame.length; j += 7) {
        const events = parse(frame.subarray(0, i), frame.subarray(i, j), frame.subarray(j));
        assert.deepEqual(canonicalEvents(events), expected, `split at ${i} and ${j}`);
      }
    }
  });

  it('hands out every frame of one chunk holding many', () => {
    const frames: Buffer[] = [];
    for (let i = 0; i < 1000; i++) {
      frames.push(i % 2 === 0 ? dataFrame(2 * i + 1, `payload ${i}`, i % 4 === 0) : pingFrame(i));
    }
    const events = parse(Buffer.concat(frames));
    assert.equal(events.length, 1000);
    events.forEach((e, i) => {
      if (i % 2 === 0) {
        assert.equal(e.kind, 'data');
        assert.ok(e.kind === 'data');
        assert.equal(e.streamId, 2 * i + 1);
        assert.equal(e.payload.toString(), `payload ${i}`);
        assert.equal(e.fin, i % 4 === 0);
      } else {
        assert.ok(e.kind === 'control');
        assert.equal(e.type, T.Ping);
        assert.equal(e.body.readUInt32BE(0), i);
      }
    });
  });

  it('delivers a DATA payload inside one chunk as a view of that chunk, not a copy', () => {
    const chunk = own(Buffer.concat([pingFrame(1), dataFrame(7, 'view me', true), pingFrame(3)]));
    const events = parse(chunk);
    const data = events[1]!;
    assert.ok(data.kind === 'data');
    assert.equal(data.payload.toString(), 'view me');
    assert.equal(data.fin, true);
    assert.equal(data.payload.buffer, chunk.buffer);
    assert.equal(data.payload.byteOffset, chunk.byteOffset + 12 + 8);
    chunk[20] = 'V'.charCodeAt(0);
    assert.equal(data.payload.toString(), 'View me', 'shares memory with the chunk');
  });

  it('delivers a split DATA payload in pieces, each a view, FIN on the last piece only', () => {
    const payload = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz');
    const frame = dataFrame(9, payload, true);
    const cuts = [3, 10, 15, 30, frame.length];
    const chunks: Buffer[] = [];
    let from = 0;
    for (const cut of cuts) {
      chunks.push(own(frame.subarray(from, cut)));
      from = cut;
    }
    const events = parse(...chunks);
    assert.ok(events.every((e) => e.kind === 'data' && e.streamId === 9));
    const pieces = events as Extract<ParserEvent, { kind: 'data' }>[];
    assert.equal(Buffer.concat(pieces.map((p) => p.payload)).toString(), payload.toString());
    assert.deepEqual(
      pieces.map((p) => p.fin),
      pieces.map((_, i) => i === pieces.length - 1),
    );
    // the pieces after the header are views of the chunks they arrived in
    for (const piece of pieces) {
      assert.ok(chunks.some((c) => c.buffer === piece.payload.buffer), 'piece is a view of a received chunk');
    }
    assert.ok(pieces.length >= 4);
  });

  it('reports an empty DATA frame with FIN (and one without)', () => {
    const events = parse(Buffer.concat([dataFrame(5, Buffer.alloc(0), true), dataFrame(7, Buffer.alloc(0), false)]));
    assert.equal(events.length, 2);
    const [a, b] = events;
    assert.ok(a!.kind === 'data' && b!.kind === 'data');
    assert.deepEqual([a.streamId, a.payload.length, a.fin], [5, 0, true]);
    assert.deepEqual([b.streamId, b.payload.length, b.fin], [7, 0, false]);
  });

  it('hands out every control type with its flags and its body', () => {
    const frames: [number, Buffer][] = [
      [T.SynStream, controlFrame(T.SynStream, FIN, Buffer.from('0123456789block'))],
      [T.SynReply, controlFrame(T.SynReply, 0, Buffer.from('\0\0\0\x01block'))],
      [T.RstStream, rstStreamFrame(1, RST.Cancel)],
      [T.Settings, settingsFrame([{ id: 7, value: 1 }], 1)],
      [T.Ping, pingFrame(0xfffffffe)],
      [T.GoAway, goAwayFrame(0x7fffffff, 2)],
      [T.Headers, controlFrame(T.Headers, FIN, Buffer.from('\0\0\0\x03block'))],
      [T.WindowUpdate, windowUpdateFrame(3, 0x7fffffff)],
      [T.Ping, controlFrame(T.Ping, 0xff, Buffer.alloc(0))],
    ];
    const chunk = own(Buffer.concat(frames.map(([, f]) => f)));
    const events = parse(chunk);
    assert.equal(events.length, frames.length);
    events.forEach((e, i) => {
      const [type, frame] = frames[i]!;
      assert.ok(e.kind === 'control');
      assert.equal(e.type, type);
      assert.equal(e.flags, frame[4]);
      assert.deepEqual(e.body, frame.subarray(8));
    });
  });

  it('skips control frames of unknown types, split or whole, and parses the next frame', () => {
    for (const type of [0, 5, 10, 11, 0x7fff, 0xffff]) {
      const unknown = unknownControlFrame(type, Buffer.from('ignored body bytes'));
      const input = Buffer.concat([unknown, pingFrame(11)]);
      for (let i = 0; i <= input.length; i++) {
        const events = parse(input.subarray(0, i), input.subarray(i));
        assert.equal(events.length, 1, `type ${type}, split at ${i}`);
        assert.ok(events[0]!.kind === 'control' && events[0]!.type === T.Ping);
      }
    }
  });

  it('skips a 16 MiB unknown control frame without buffering it', () => {
    const sink = new RecordingSink();
    const parser = newParser(sink);
    const length = 0xffffff;
    push(parser, controlFrameHeader(0x1234, 0, length));
    const piece = Buffer.alloc(64 * 1024);
    let sent = 0;
    while (sent < length) {
      const n = Math.min(piece.length, length - sent);
      push(parser, piece.subarray(0, n));
      sent += n;
      assert.equal(parser.buffered, 0);
    }
    push(parser, pingFrame(1));
    assert.equal(sink.events.length, 1);
    assert.ok(sink.events[0]!.kind === 'control' && sink.events[0]!.type === T.Ping);
  });

  it('rejects a control frame of another SPDY version, naming the version', () => {
    for (const version of [1, 2, 4, 0x7fff]) {
      assert.throws(() => parse(badVersionFrame(version)), isSessionError(new RegExp(`version ${version}\\b`)));
    }
    // the header alone is enough
    assert.throws(() => parse(badVersionFrame(2).subarray(0, 8)), isSessionError(/version 2\b/));
  });

  it('after a violation the parser hands out nothing more', () => {
    const sink = new RecordingSink();
    const parser = newParser(sink);
    assert.throws(() => push(parser, Buffer.concat([pingFrame(1), badVersionFrame(2), pingFrame(3)])), ProtocolError);
    assert.equal(sink.events.length, 1);
    push(parser, pingFrame(5));
    assert.equal(sink.events.length, 1);
  });

  it('rejects a control frame over its limit from its 8-byte header, before the body arrives', () => {
    const cases: [number, number][] = [
      [T.Ping, 1025],
      [T.RstStream, 1025],
      [T.GoAway, 0xffffff],
      [T.Settings, 4096],
      [T.WindowUpdate, 2000],
      [T.SynStream, 64 * 1024 + 11],
      [T.SynReply, 64 * 1024 + 11],
      [T.Headers, 0xffffff],
    ];
    for (const [type, length] of cases) {
      const sink = new RecordingSink();
      const parser = newParser(sink);
      assert.throws(
        () => push(parser, controlFrameHeader(type, 0, length)),
        isSessionError(new RegExp(`type ${type} of ${length} bytes exceeds the limit`)),
      );
      assert.equal(sink.events.length, 0);
    }
    // at the limit: accepted (waits for the body)
    for (const [type, length] of [
      [T.Ping, 1024],
      [T.SynStream, 64 * 1024 + 10],
    ] as const) {
      const parser = newParser(new RecordingSink());
      push(parser, controlFrameHeader(type, 0, length));
      assert.equal(parser.buffered, 0);
    }
  });

  it('rejects DATA on stream 0', () => {
    assert.throws(() => parse(dataFrame(0, 'x')), isSessionError(/stream 0/));
    assert.throws(() => parse(dataFrameHeader(0, 0, FIN)), isSessionError(/stream 0/));
  });

  it('streams a DATA frame of 2^24-1 bytes in pieces, never buffering it whole', () => {
    const sink = new RecordingSink();
    const parser = newParser(sink);
    const length = 0xffffff;
    push(parser, dataFrameHeader(0x7fffffff, length, FIN));
    assert.equal(sink.events.length, 0);
    const piece = Buffer.alloc(100_000, 0x61);
    let sent = 0;
    let received = 0;
    while (sent < length) {
      const n = Math.min(piece.length, length - sent);
      const chunk = piece.subarray(0, n);
      push(parser, chunk);
      sent += n;
      assert.equal(parser.buffered, 0, 'nothing held back');
      const e = sink.events.at(-1)!;
      assert.ok(e.kind === 'data');
      assert.equal(e.streamId, 0x7fffffff);
      assert.equal(e.payload.length, n);
      assert.equal(e.payload.buffer, piece.buffer, 'a view, not a copy');
      assert.equal(e.fin, sent === length);
      received += e.payload.length;
    }
    assert.equal(received, length);
    assert.equal(sink.events.length, Math.ceil(length / piece.length));
    // the next frame header sharing the last chunk is parsed
    push(parser, pingFrame(9));
    assert.ok(sink.events.at(-1)!.kind === 'control');
  });

  it('queues bytes while paused and parses them on resume', () => {
    const sink = new RecordingSink();
    const parser = newParser(sink);
    parser.pause();
    push(parser, Buffer.concat([pingFrame(1), dataFrame(1, 'abc')]));
    assert.equal(sink.events.length, 0);
    assert.equal(parser.buffered, 12 + 11);
    parser.resume();
    assert.equal(sink.events.length, 2);
    assert.equal(parser.buffered, 0);
  });

  it('lets the sink pause the parser between two frames of one chunk', () => {
    const events: string[] = [];
    const parser: FrameParser = new FrameParser({
      onData: () => events.push('data'),
      onControl: () => {
        events.push('control');
        parser.pause();
      },
    });
    push(parser, Buffer.concat([pingFrame(1), dataFrame(1, 'x'), pingFrame(3), dataFrame(1, 'y')]));
    assert.deepEqual(events, ['control']);
    parser.resume();
    assert.deepEqual(events, ['control', 'data', 'control']);
    parser.resume();
    assert.deepEqual(events, ['control', 'data', 'control', 'data']);
  });

  it('holds the write callback while paused: write() says false once its queue is full, drain follows resume', async () => {
    const sink = new RecordingSink();
    const parser = newParser(sink);
    const frame = dataFrame(1, Buffer.alloc(16 * 1024, 1));
    let done = 0;
    assert.equal(parser.write(frame, () => done++), true, 'not paused: parsed at once');
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(done, 1);
    parser.pause();
    let writes = 0;
    while (parser.write(frame, () => done++)) assert.ok(++writes < 100);
    writes++;
    assert.equal(done, 1, 'no callback while paused');
    assert.equal(sink.events.length, 1);
    assert.ok(parser.writableLength <= PARSER_HIGH_WATER_MARK + frame.length, `${parser.writableLength} bytes queued`);
    const drained = once(parser, 'drain');
    parser.resume();
    await drained;
    await new Promise((resolve) => setImmediate(resolve)); // callbacks of writes parsed in one go come a tick later
    assert.equal(done, 1 + writes);
    assert.equal(sink.events.length, 1 + writes);
  });

  it('goes on in the same loop when the sink pauses and resumes from inside its call', () => {
    const events: string[] = [];
    const parser: FrameParser = newParser({
      onData: () => {
        events.push('data');
        parser.pause();
        parser.resume();
      },
      onControl: () => events.push('control'),
    });
    let done = false;
    parser.write(Buffer.concat([dataFrame(1, 'a'), dataFrame(1, 'b'), pingFrame(1)]), () => (done = true));
    assert.deepEqual(events, ['data', 'data', 'control']);
    assert.equal(parser.isPaused, false);
    return new Promise<void>((resolve) => setImmediate(() => (assert.ok(done), resolve())));
  });

  it("reports a violation once, as its 'error', and is destroyed", async () => {
    const sink = new RecordingSink();
    const parser = new FrameParser(sink);
    const errors: unknown[] = [];
    parser.on('error', (err) => errors.push(err));
    parser.write(Buffer.concat([pingFrame(1), dataFrame(0, 'x'), pingFrame(3)]));
    assert.equal(parser.destroyed, true);
    await new Promise((resolve) => parser.once('close', resolve));
    assert.equal(errors.length, 1);
    assert.ok(isSessionError(/stream 0/)(errors[0]));
    assert.equal(sink.events.length, 1);
  });
});
