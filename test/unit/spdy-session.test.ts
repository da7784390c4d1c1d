import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import { setImmediate as tick, setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { createLogger } from '../../src/log';
import { MAX_CONCURRENT_STREAMS } from '../../src/streaming/spdy/constants';
import { StreamResetError } from '../../src/streaming/spdy/errors';
import { slabAllocations } from '../../src/streaming/spdy/frame-writer';
import { SpdySession, type SessionEndReason } from '../../src/streaming/spdy/session';
import { STREAM_RECEIVE_BUFFER_BYTES, type SpdyStream } from '../../src/streaming/spdy/stream';
import {
  FIN,
  GOAWAY,
  PeerDeflater,
  PeerInflater,
  RST,
  T,
  badVersionFrame,
  controlFrame,
  dataFrame,
  dataFrameHeader,
  goAwayFrame,
  headersFrame,
  pingFrame,
  portForwardHeaders,
  rstStreamFrame,
  settingsFrame,
  socketPair,
  splitFrames,
  synReplyFrame,
  synStream,
  synStreamFrame,
  unknownControlFrame,
  windowUpdateFrame,
  FrameCollector,
  type HeaderList,
  type SocketPair,
  type SynStreamOptions,
  type WireFrame,
} from '../support/spdy-frames';

const log = createLogger('error');

async function until(what: string, predicate: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A session over `transport` whose peer has opened data stream 1 (SYN_STREAM, not replied). */
async function sessionWithDataStream(transport: Duplex): Promise<{ session: SpdySession; stream: SpdyStream }> {
  let stream: SpdyStream | undefined;
  const session = new SpdySession(transport, {
    idleTimeoutMs: 60_000,
    log,
    onStream: (s) => {
      stream = s;
    },
  });
  const deflater = new PeerDeflater();
  transport.push(await synStream(deflater, 1, portForwardHeaders('data', 80, 0)));
  deflater.close();
  await until('stream', () => stream !== undefined);
  return { session, stream: stream! };
}

interface HarnessOptions {
  idleTimeoutMs?: number;
  onStream?: (stream: SpdyStream, session: SpdySession) => void;
}

/** A session over a TCP socket pair, with a peer that builds and reads frames. */
class Harness {
  readonly streams: SpdyStream[] = [];
  readonly peer = new FrameCollector();
  readonly deflater = new PeerDeflater();
  readonly inflater = new PeerInflater();
  #nextStream = 0;
  #ping = 1_000_001;

  private constructor(
    readonly pair: SocketPair,
    readonly session: SpdySession,
  ) {
    pair.client.on('data', (chunk: Buffer) => this.peer.push(chunk));
    pair.client.on('end', () => this.peer.end());
    pair.client.on('error', () => undefined);
  }

  static async open(options: HarnessOptions = {}): Promise<Harness> {
    const pair = await socketPair();
    let harness: Harness | undefined;
    const session = new SpdySession(pair.server, {
      idleTimeoutMs: options.idleTimeoutMs ?? 60_000,
      log,
      onStream: (stream, s) => {
        harness!.streams.push(stream);
        options.onStream?.(stream, s);
      },
    });
    harness = new Harness(pair, session);
    return harness;
  }

  get server() {
    return this.pair.server;
  }

  send(...frames: Buffer[]): void {
    this.pair.client.write(Buffer.concat(frames));
  }

  async syn(streamId: number, headers: HeaderList = portForwardHeaders('data', 8080, 0), options: SynStreamOptions = {}): Promise<void> {
    this.send(await synStream(this.deflater, streamId, headers, options));
  }

  /** The next stream handed to onStream. */
  async nextStream(timeoutMs = 5000): Promise<SpdyStream> {
    await until('onStream', () => this.streams.length > this.#nextStream, timeoutMs);
    return this.streams[this.#nextStream++]!;
  }

  async open(streamId: number, headers?: HeaderList, options?: SynStreamOptions): Promise<SpdyStream> {
    await this.syn(streamId, headers, options);
    const stream = await this.nextStream();
    assert.equal(stream.id, streamId);
    return stream;
  }

  /**
   * Prove that the session wrote nothing before it answers a PING sent now: the next frame
   * the peer reads must be that PING's echo.
   */
  async expectNothingBeforePing(): Promise<void> {
    const id = (this.#ping += 2);
    this.send(pingFrame(id));
    const frame = await this.peer.next();
    assert.deepEqual(describeFrame(frame), `PING ${id}`);
  }

  async close(): Promise<SessionEndReason> {
    this.pair.destroy();
    try {
      return await withTimeout(this.session.ended, 5000, 'session.ended');
    } finally {
      this.deflater.close();
      this.inflater.close();
    }
  }
}

/** A frame in a line, for assertions that show what came instead. */
function describeFrame(f: WireFrame): string {
  if (!f.control) return `DATA ${f.streamId} len=${f.length}${f.flags & FIN ? ' FIN' : ''}`;
  const b = f.body;
  switch (f.type) {
    case T.SynReply:
      return `SYN_REPLY ${f.streamId}`;
    case T.RstStream:
      return `RST ${f.streamId} ${b.readUInt32BE(4)}`;
    case T.Ping:
      return `PING ${b.readUInt32BE(0)}`;
    case T.GoAway:
      return `GOAWAY ${b.readUInt32BE(0)} ${b.readUInt32BE(4)}`;
    default:
      return `CTRL ${f.type}`;
  }
}

async function withHarness(fn: (h: Harness) => Promise<void>, options?: HarnessOptions): Promise<void> {
  const h = await Harness.open(options);
  try {
    await fn(h);
  } finally {
    await h.close();
  }
}

function readAll(stream: SpdyStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    stream.attach({
      onData: (c) => parts.push(c),
      onEnd: () => resolve(Buffer.concat(parts)),
      onClose: () => reject(new Error(`stream ${stream.id} closed before its end`)),
      onError: reject,
    });
  });
}

/** A session over a hand-driven Duplex: deterministic chunking, output kept as bytes. */
function driven(onStream: (stream: SpdyStream, session: SpdySession) => void = () => undefined) {
  const written: Buffer[] = [];
  const transport = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      written.push(Buffer.from(chunk));
      callback();
    },
  });
  const session = new SpdySession(transport, { idleTimeoutMs: 60_000, log, onStream });
  return {
    transport,
    session,
    frames: (): WireFrame[] => splitFrames(Buffer.concat(written)),
    async close(): Promise<SessionEndReason> {
      transport.destroy();
      return withTimeout(session.ended, 5000, 'session.ended');
    },
  };
}

describe('SpdySession', () => {
  it('hands a SYN_STREAM to onStream with its headers', () =>
    withHarness(async (h) => {
      const s1 = await h.open(1, portForwardHeaders('error', 8080, 0));
      assert.deepEqual(
        [...s1.headers],
        [
          ['streamtype', 'error'],
          ['port', '8080'],
          ['requestid', '0'],
        ],
      );
      const s3 = await h.open(3, [['StreamType', 'data'], ['Port', '8080'], ['RequestID', '0']]);
      assert.equal(s3.headers.get('streamtype'), 'data');
      assert.equal(s3.headers.get('requestid'), '0');
      assert.equal(h.session.streamCount, 2);
      assert.equal(h.peer.frames.length, 0, 'no reply until asked');
    }));

  it('parses bytes that came with the upgrade request first (pushInitial)', async () => {
    const pair = await socketPair();
    const deflater = new PeerDeflater();
    const streams: SpdyStream[] = [];
    const session = new SpdySession(pair.server, { idleTimeoutMs: 60_000, log, onStream: (s) => streams.push(s) });
    session.pushInitial(Buffer.alloc(0));
    session.pushInitial(await synStream(deflater, 1, portForwardHeaders('error', 80, 0)));
    pair.client.write(await synStream(deflater, 3, portForwardHeaders('data', 80, 0)));
    await until('two streams', () => streams.length === 2);
    assert.deepEqual(
      streams.map((s) => s.id),
      [1, 3],
    );
    pair.destroy();
    assert.equal(await session.ended, 'transport-closed');
    deflater.close();
  });

  it('reply() sends one SYN_REPLY per stream that a Go-like peer inflates on one context', () =>
    withHarness(async (h) => {
      const s1 = await h.open(1);
      const s3 = await h.open(3);
      h.session.reply(s1);
      h.session.reply(s1);
      h.session.reply(s3);
      for (const id of [1, 3]) {
        const f = await h.peer.next();
        assert.equal(describeFrame(f), `SYN_REPLY ${id}`);
        assert.equal(f.version, 3);
        assert.equal(f.flags, 0);
        assert.deepEqual(await h.inflater.headers(f.body.subarray(4)), []);
      }
      await h.expectNothingBeforePing();
      assert.equal(s1.replied, true);
    }));

  it('passes DATA to the stream; FIN ends its readable side', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      h.session.reply(s);
      const got = readAll(s);
      h.send(dataFrame(1, 'hello '), dataFrame(1, Buffer.alloc(0)), dataFrame(1, 'world'));
      h.send(dataFrame(1, '!', true));
      assert.equal((await got).toString(), 'hello world!');
      assert.equal(s.remoteClosed, true);
    }));

  it('writes become DATA frames on the stream id, SYN_REPLY first; end() sends an empty DATA with FIN', () =>
    withHarness(async (h) => {
      await h.open(1);
      const s = await h.open(3);
      const big = Buffer.alloc(100 * 1024, 0x42);
      s.write('abc');
      s.write(big);
      s.end();
      const frames: string[] = [];
      const payloads: Buffer[] = [];
      for (;;) {
        const f = await h.peer.next();
        frames.push(describeFrame(f));
        if (!f.control) payloads.push(f.body);
        if (!f.control && f.flags & FIN) break;
      }
      assert.deepEqual(frames, ['SYN_REPLY 3', 'DATA 3 len=3', `DATA 3 len=${big.length}`, 'DATA 3 len=0 FIN']);
      assert.equal(payloads[0]!.toString(), 'abc');
      assert.deepEqual(payloads[1], big);
      assert.equal(s.localClosed, true);
    }));

  it('writes a 1 MiB chunk intact', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      const big = Buffer.alloc(1024 * 1024);
      for (let i = 0; i < big.length; i++) big[i] = i % 251;
      s.end(big);
      const payloads: Buffer[] = [];
      for (;;) {
        const f = await h.peer.next();
        if (f.control) continue;
        assert.equal(f.streamId, 1);
        payloads.push(f.body);
        if (f.flags & FIN) break;
      }
      assert.deepEqual(Buffer.concat(payloads), big);
    }));

  it(
    'splits a write larger than a DATA frame can carry (2^24-1 bytes)',
    () =>
      withHarness(async (h) => {
        const s = await h.open(1);
        h.session.reply(s);
        assert.equal(describeFrame(await h.peer.next()), 'SYN_REPLY 1');
        const length = 0x1000000 + 1;
        s.write(Buffer.alloc(length, 0x61));
        let received = 0;
        while (received < length) {
          const f = await h.peer.next();
          assert.equal(f.control, false, `expected DATA, got ${describeFrame(f)}`);
          assert.equal(f.streamId, 1);
          assert.equal(f.flags & FIN, 0, `DATA ${f.length} bytes with FIN after ${received} bytes`);
          assert.ok(f.length > 0);
          received += f.length;
        }
        assert.equal(received, length);
      }),
  );

  it('echoes a PING with an odd id unchanged and ignores one with an even id', () =>
    withHarness(async (h) => {
      for (const id of [1, 3, 0x7fffffff, 0xffffffff]) {
        const ping = pingFrame(id);
        h.send(ping);
        const f = await h.peer.next();
        assert.equal(describeFrame(f), `PING ${id}`);
        assert.deepEqual(Buffer.concat([Buffer.from([0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04]), f.body]), ping);
      }
      h.send(pingFrame(0), pingFrame(2), pingFrame(0xfffffffe));
      await h.expectNothingBeforePing();
    }));

  it('destroys a stream the peer resets, without an RST back', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      h.session.reply(s);
      assert.equal(describeFrame(await h.peer.next()), 'SYN_REPLY 1');
      h.send(rstStreamFrame(1, RST.Cancel));
      await until('stream destroyed', () => s.destroyed);
      const err = h.streams.find((s) => s.id === 1)?.errored;
      assert.ok(err instanceof StreamResetError, String(err));
      assert.equal(err.rstCode, RST.Cancel);
      assert.equal(h.session.streamCount, 0);
      await h.expectNothingBeforePing();
      // an RST for a stream that is gone is ignored too
      h.send(rstStreamFrame(1, RST.Cancel), rstStreamFrame(99, RST.Cancel));
      await h.expectNothingBeforePing();
      assert.equal(h.session.isEnded, false);
    }));

  it('stream.destroy() sends RST_STREAM CANCEL; session.reset() sends the code given', () =>
    withHarness(async (h) => {
      const s1 = await h.open(1);
      h.session.reply(s1);
      s1.destroy();
      assert.equal(describeFrame(await h.peer.next()), 'SYN_REPLY 1');
      assert.equal(describeFrame(await h.peer.next()), `RST 1 ${RST.Cancel}`);
      const s3 = await h.open(3);
      s3.destroy(); // never replied: an RST alone
      assert.equal(describeFrame(await h.peer.next()), `RST 3 ${RST.Cancel}`);
      const s5 = await h.open(5);
      h.session.reset(s5, RST.InternalError, 'test');
      assert.equal(describeFrame(await h.peer.next()), `RST 5 ${RST.InternalError}`);
      assert.equal(h.session.streamCount, 0);
      // DATA still in flight for a stream we reset is dropped quietly
      h.send(dataFrame(1, 'late'), dataFrame(5, 'late', true));
      await h.expectNothingBeforePing();
    }));

  it('forgets a stream closed both ways, and destroying it then sends nothing', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      const got = readAll(s);
      s.end('bye');
      h.send(dataFrame(1, 'ok', true));
      assert.equal((await got).toString(), 'ok');
      const frames: string[] = [];
      while (frames.at(-1) !== 'DATA 1 len=0 FIN') frames.push(describeFrame(await h.peer.next()));
      assert.deepEqual(frames, ['SYN_REPLY 1', 'DATA 1 len=3', 'DATA 1 len=0 FIN']);
      await until('stream forgotten', () => h.session.streamCount === 0);
      s.destroy();
      await h.expectNothingBeforePing();
    }));

  it('resets a stream that gets DATA after its FIN (STREAM_ALREADY_CLOSED)', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      s.resume();
      h.send(dataFrame(1, 'a', true), dataFrame(1, 'b'));
      assert.equal(describeFrame(await h.peer.next()), `RST 1 ${RST.StreamAlreadyClosed}`);
      await until('stream destroyed', () => s.destroyed);
      assert.equal(h.session.isEnded, false);
    }));

  it('opens a stream whose SYN_STREAM carries FIN half-closed', () =>
    withHarness(async (h) => {
      const s = await h.open(1, portForwardHeaders('error', 80, 0), { flags: FIN });
      assert.equal((await readAll(s)).length, 0);
      s.end();
      assert.equal(describeFrame(await h.peer.next()), 'SYN_REPLY 1');
      assert.equal(describeFrame(await h.peer.next()), 'DATA 1 len=0 FIN');
      await until('stream forgotten', () => h.session.streamCount === 0);
    }));

  it('ignores SETTINGS and WINDOW_UPDATE, and skips unknown control frame types', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      h.send(
        settingsFrame([{ id: 4, value: 100 }, { id: 7, value: 1 << 20, flags: 1 }]),
        settingsFrame([]),
        windowUpdateFrame(1, 1 << 20),
        windowUpdateFrame(0, 1),
        unknownControlFrame(5, Buffer.alloc(4)),
        unknownControlFrame(0x7fff, Buffer.alloc(2000, 1)),
        unknownControlFrame(10),
      );
      await h.expectNothingBeforePing();
      assert.equal(h.session.isEnded, false);
      const got = readAll(s);
      h.send(dataFrame(1, 'still here', true));
      assert.equal((await got).toString(), 'still here');
    }));

  it('inflates an out-of-place HEADERS block to keep the zlib context in step; resets a stream on SYN_REPLY', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      h.send(headersFrame(1, await h.deflater.compress([['x-trailer', 'yes']])));
      await h.expectNothingBeforePing();
      const s3 = await h.open(3); // decodes only if the HEADERS block went through the same inflater
      assert.equal(s3.headers.get('port'), '8080');
      h.send(synReplyFrame(1, await h.deflater.compress([])));
      assert.equal(describeFrame(await h.peer.next()), `RST 1 ${RST.ProtocolError}`);
      await until('stream destroyed', () => s.destroyed);
      assert.equal(h.session.isEnded, false);
    }));

  it('ends the session on GOAWAY from the peer', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      h.send(goAwayFrame(0, GOAWAY.Ok));
      assert.equal(await withTimeout(h.session.ended, 5000, 'session.ended'), 'peer-goaway');
      assert.equal(s.destroyed, true);
      assert.equal(h.session.isEnded, true);
      await h.peer.waitEnd();
      assert.equal(h.peer.frames.length, 0, 'no GOAWAY back');
    }));

  it('answers a protocol violation with GOAWAY PROTOCOL_ERROR naming the last stream, then ends', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      h.send(badVersionFrame(2));
      assert.equal(describeFrame(await h.peer.next()), `GOAWAY 1 ${GOAWAY.ProtocolError}`);
      await h.peer.waitEnd();
      assert.equal(await h.session.ended, 'protocol-error');
      assert.equal(s.destroyed, true);
      assert.equal(h.peer.frames.length, 1);
    }));

  for (const [what, frames] of [
    ['DATA on stream 0', () => [dataFrame(0, 'x')]],
    ['an oversized PING', () => [controlFrame(T.Ping, 0, Buffer.alloc(2000))]],
    ['a short PING', () => [controlFrame(T.Ping, 0, Buffer.alloc(3))]],
    ['a short RST_STREAM', () => [controlFrame(T.RstStream, 0, Buffer.alloc(4))]],
    ['a short SYN_STREAM', () => [controlFrame(T.SynStream, 0, Buffer.alloc(9))]],
    ['a SYN_STREAM with corrupt compression', () => [synStreamFrame(1, Buffer.from([0x78, 0xbb, 1, 2, 3, 4, 5]))]],
    ['a SYN_STREAM with no header block', () => [synStreamFrame(1, Buffer.alloc(0))]],
  ] as [string, () => Buffer[]][]) {
    it(`answers ${what} with GOAWAY`, () =>
      withHarness(async (h) => {
        h.send(...frames());
        const f = await h.peer.next();
        assert.match(describeFrame(f), /^GOAWAY \d+ 1$/);
        await h.peer.waitEnd();
        assert.equal(await h.session.ended, 'protocol-error');
      }));
  }

  it('answers even, zero and non-increasing SYN_STREAM ids with GOAWAY', async () => {
    for (const [ids, lastGood] of [
      [[2], 0],
      [[0], 0],
      [[1, 4], 1],
      [[3, 3], 3],
      [[5, 1], 5],
    ] as [number[], number][]) {
      await withHarness(async (h) => {
        for (const id of ids) await h.syn(id);
        const f = await h.peer.next();
        assert.equal(describeFrame(f), `GOAWAY ${lastGood} ${GOAWAY.ProtocolError}`, `ids ${ids.join(',')}`);
        assert.equal(await h.session.ended, 'protocol-error');
        assert.equal(h.streams.length, ids.length - 1);
      });
    }
  });

  it('stops a header bomb in a SYN_STREAM with GOAWAY, without growing the heap', async () => {
    const deflater = new PeerDeflater(9);
    const bomb = await deflater.compressRaw(Buffer.alloc(64 * 1024 * 1024));
    deflater.close();
    assert.ok(bomb.length <= 64 * 1024);
    await withHarness(async (h) => {
      const before = process.memoryUsage();
      h.send(synStreamFrame(1, bomb));
      assert.equal(describeFrame(await h.peer.next()), `GOAWAY 1 ${GOAWAY.ProtocolError}`);
      const after = process.memoryUsage();
      const grew = after.heapUsed + after.arrayBuffers - (before.heapUsed + before.arrayBuffers);
      assert.ok(grew < 50 * 1024 * 1024, `grew ${grew} bytes`);
      assert.equal(h.streams.length, 0);
    });
  });

  it('answers DATA for a stream never opened with RST INVALID_STREAM, and drops DATA for old ids', () =>
    withHarness(async (h) => {
      h.send(dataFrame(5, 'who?'));
      assert.equal(describeFrame(await h.peer.next()), `RST 5 ${RST.InvalidStream}`);
      const s = await h.open(7);
      s.destroy();
      assert.equal(describeFrame(await h.peer.next()), `RST 7 ${RST.Cancel}`);
      h.send(dataFrame(3, 'old'), dataFrame(7, 'reset already'), dataFrame(1, 'x', true));
      await h.expectNothingBeforePing();
      h.send(dataFrame(9, 'not yet'));
      assert.equal(describeFrame(await h.peer.next()), `RST 9 ${RST.InvalidStream}`);
      assert.equal(h.session.isEnded, false);
    }));

  it(`refuses stream number ${MAX_CONCURRENT_STREAMS + 1} with RST REFUSED_STREAM`, () =>
    withHarness(async (h) => {
      const frames: Buffer[] = [];
      for (let i = 0; i <= MAX_CONCURRENT_STREAMS; i++) {
        frames.push(await synStream(h.deflater, 2 * i + 1, portForwardHeaders(i % 2 ? 'data' : 'error', 80, i >> 1)));
      }
      h.send(...frames);
      const refusedId = 2 * MAX_CONCURRENT_STREAMS + 1;
      assert.equal(describeFrame(await h.peer.next(10_000)), `RST ${refusedId} ${RST.RefusedStream}`);
      assert.equal(h.streams.length, MAX_CONCURRENT_STREAMS);
      assert.equal(h.session.streamCount, MAX_CONCURRENT_STREAMS);
      // DATA for the refused stream is dropped; once one closes, a new stream is taken
      h.send(dataFrame(refusedId, 'x'));
      h.streams[0]!.destroy();
      assert.equal(describeFrame(await h.peer.next()), `RST 1 ${RST.Cancel}`);
      await h.syn(refusedId + 2);
      await until('the next stream', () => h.streams.length === MAX_CONCURRENT_STREAMS + 1);
      assert.equal(h.streams.at(-1)!.id, refusedId + 2);
      await h.expectNothingBeforePing();
    }));

  it('ends an idle session with GOAWAY OK; traffic keeps it alive', () =>
    withHarness(
      async (h) => {
        const started = Date.now();
        // pings every 40 ms for 600 ms keep it alive
        while (Date.now() - started < 600) {
          h.send(pingFrame(1));
          await sleep(40);
        }
        assert.equal(h.session.isEnded, false);
        const s = await h.open(1);
        const quietSince = Date.now();
        const f = await h.peer.nextMatching((fr) => fr.control && fr.type === T.GoAway, 3000);
        assert.equal(describeFrame(f), `GOAWAY 1 ${GOAWAY.Ok}`);
        const idleFor = Date.now() - quietSince;
        assert.ok(idleFor >= 150 && idleFor < 1500, `ended after ${idleFor} ms`);
        assert.equal(await h.session.ended, 'idle');
        assert.equal(s.destroyed, true);
        await h.peer.waitEnd();
      },
      { idleTimeoutMs: 200 },
    ));

  it('ends the session when the peer closes the connection', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      h.pair.client.end();
      assert.equal(await withTimeout(h.session.ended, 5000, 'session.ended'), 'transport-closed');
      assert.equal(s.destroyed, true);
      assert.ok(h.streams.find((s) => s.id === 1)?.errored instanceof Error);
    }));

  it('close() sends GOAWAY OK with the last stream id, ends the transport and destroys streams without RSTs', () =>
    withHarness(async (h) => {
      const s1 = await h.open(1);
      h.session.reply(s1);
      await h.open(3);
      h.session.close();
      const frames: string[] = [];
      for (;;) {
        try {
          frames.push(describeFrame(await h.peer.next()));
        } catch {
          break;
        }
      }
      assert.deepEqual(frames, ['SYN_REPLY 1', `GOAWAY 3 ${GOAWAY.Ok}`]);
      assert.equal(await h.session.ended, 'closed');
      assert.equal(h.session.streamCount, 0);
      // nothing is sent once the session is over
      h.session.reply(s1);
      assert.equal(s1.destroyed, true);
    }));

  it('stops reading the connection while a stream holds STREAM_RECEIVE_BUFFER_BYTES unread, and resumes once read', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      const s3 = await h.open(3);
      h.session.reply(s);
      const frame = dataFrame(1, Buffer.alloc(32 * 1024, 0x5a));
      const frames = 256; // 8 MiB
      const total = frames * 32 * 1024;
      for (let i = 0; i < frames; i++) h.pair.client.write(frame);
      h.send(dataFrame(3, 'behind the stalled stream', true));
      await until('the stream to fill up', () => s.readableLength >= STREAM_RECEIVE_BUFFER_BYTES);
      await until('the transport to pause', () => h.server.isPaused());
      await sleep(200);
      const held = s.readableLength;
      assert.ok(held < STREAM_RECEIVE_BUFFER_BYTES + 256 * 1024, `stream holds ${held} bytes`);
      assert.ok(h.server.isPaused());
      assert.equal(s3.readableLength, 0, 'head-of-line: the other stream waits too');
      // read it all: the connection is read again and everything arrives
      let received = 0;
      s.attach({ onData: (c) => (received += c.length), onEnd: () => undefined, onClose: () => undefined, onError: () => undefined });
      const got3 = readAll(s3);
      await until('all data', () => received === total, 10_000);
      assert.equal((await got3).toString(), 'behind the stalled stream');
      assert.equal(h.server.isPaused(), false);
    }));

  it('releases a stalled connection when the stalled stream is destroyed', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      const frame = dataFrame(1, Buffer.alloc(64 * 1024));
      for (let i = 0; i < 40; i++) h.pair.client.write(frame);
      await until('the transport to pause', () => h.server.isPaused());
      s.destroy();
      await until('the transport to resume', () => !h.server.isPaused());
      assert.equal(describeFrame(await h.peer.next()), `RST 1 ${RST.Cancel}`);
      await h.expectNothingBeforePing();
    }));

  it(
    'answers a DATA frame for a never-opened stream with one RST, however the frame is split',
    async () => {
      const d = driven();
      const frame = dataFrame(5, 'x'.repeat(100));
      d.transport.push(frame.subarray(0, 20));
      await tick();
      d.transport.push(frame.subarray(20, 60));
      await tick();
      d.transport.push(Buffer.concat([frame.subarray(60), pingFrame(1)]));
      await until('the ping echo', () => d.frames().some((f) => f.control && f.type === T.Ping));
      const seen = d.frames().map(describeFrame);
      await d.close();
      assert.deepEqual(seen, [`RST 5 ${RST.InvalidStream}`, 'PING 1']);
    },
  );

  it(
    "session.reset() on a stream without an 'error' listener does not crash the process",
    async () => {
      const escaped: unknown[] = [];
      const onException = (err: unknown): void => void escaped.push(err);
      process.on('uncaughtException', onException);
      try {
        const d = driven((stream, session) => session.reset(stream, RST.Cancel, 'bad port header'));
        const deflater = new PeerDeflater();
        d.transport.push(await synStream(deflater, 1, portForwardHeaders('data', 'not-a-port', 0)));
        deflater.close();
        await until('the RST', () => d.frames().length > 0);
        await sleep(20);
        assert.deepEqual(d.frames().map(describeFrame), [`RST 1 ${RST.Cancel}`]);
        await d.close();
      } finally {
        process.off('uncaughtException', onException);
      }
      assert.deepEqual(
        escaped.map((e) => String(e)),
        [],
      );
    },
  );

  it('works over a hand-driven Duplex transport', async () => {
    const written: Buffer[] = [];
    const transport = new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        written.push(Buffer.from(chunk)); // ours again once called back (the Writable contract)
        cb();
      },
    });
    const deflater = new PeerDeflater();
    const streams: SpdyStream[] = [];
    const session = new SpdySession(transport, {
      idleTimeoutMs: 60_000,
      log,
      onStream: (s, sess) => {
        streams.push(s);
        sess.reply(s);
      },
    });
    transport.push(await synStream(deflater, 1, portForwardHeaders('error', 80, 0)));
    transport.push(pingFrame(7));
    await until('stream', () => streams.length === 1);
    await until('two frames', () => splitFrames(Buffer.concat(written)).length >= 2);
    assert.deepEqual(splitFrames(Buffer.concat(written)).map(describeFrame), ['SYN_REPLY 1', 'PING 7']);
    transport.push(null);
    assert.equal(await session.ended, 'transport-closed');
    deflater.close();
  });

  it('reads a DATA frame of 2^24-1 bytes as it streams in', () =>
    withHarness(async (h) => {
      const s = await h.open(1);
      const length = 0xffffff;
      let received = 0;
      const ended = new Promise((r) => s.attach({ onData: (c) => (received += c.length), onEnd: () => r(undefined), onClose: () => undefined, onError: () => undefined }));
      h.pair.client.write(dataFrameHeader(1, length, FIN));
      const piece = Buffer.alloc(1024 * 1024);
      for (let sent = 0; sent < length; sent += piece.length) {
        h.pair.client.write(piece.subarray(0, Math.min(piece.length, length - sent)));
      }
      await withTimeout(ended, 10_000, 'end of stream');
      assert.equal(received, length);
    }));

  it('writes the frames of one event-loop turn in one transport write, before the turn ends', async () => {
    const writes: number[] = []; // frames per transport write call
    const written: Buffer[] = [];
    const transport = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        writes.push(splitFrames(chunk).length);
        written.push(Buffer.from(chunk));
        callback();
      },
      writev(chunks: { chunk: Buffer }[], callback) {
        const all = Buffer.concat(chunks.map((c) => c.chunk));
        writes.push(splitFrames(all).length);
        written.push(all);
        callback();
      },
    });
    const session = new SpdySession(transport, {
      idleTimeoutMs: 60_000,
      log,
      onStream: (stream) => {
        session.reply(stream);
      },
    });
    await tick();
    const deflater = new PeerDeflater();
    const syns = [await synStream(deflater, 1, portForwardHeaders('error', 80, 0)), await synStream(deflater, 3, portForwardHeaders('data', 80, 0))];
    deflater.close();
    transport.push(Buffer.concat([...syns, pingFrame(1)]));
    await tick(); // the check phase after this chunk's poll phase
    assert.deepEqual(writes, [3], 'two SYN_REPLYs and the PING echo in one write');
    assert.deepEqual(
      splitFrames(Buffer.concat(written)).map((f) => [f.type, f.type === T.Ping ? f.body.readUInt32BE(0) : f.streamId]),
      [[T.SynReply, 1], [T.SynReply, 3], [T.Ping, 1]],
    );
    transport.destroy();
    await withTimeout(session.ended, 5000, 'session.ended');
  });

  it('takes small DATA payloads at once while the transport keeps up, and not once it lags (a client that does not read stops the writer)', async () => {
    let flowing = true; // the transport writes through; then it stops calling back (the peer stopped reading)
    const written: Buffer[] = [];
    const transport = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        written.push(Buffer.from(chunk));
        if (flowing) callback();
      },
    });
    const { session, stream: s } = await sessionWithDataStream(transport);
    const chunk = Buffer.alloc(100, 0x61);
    // Taken at once: the callback runs before write() returns, nothing stays queued.
    let calledBack = false;
    s.write(chunk, () => (calledBack = true));
    assert.equal(s.writableLength, 0, 'a small payload is copied, not held');
    await tick();
    assert.ok(calledBack);
    await tick();
    const frames = splitFrames(Buffer.concat(written));
    assert.deepEqual(frames.map((f) => (f.control ? [f.type, f.streamId] : ['DATA', f.streamId, f.length])), [[T.SynReply, 1], ['DATA', 1, 100]]);
    assert.ok(frames[1]!.body.equals(chunk));
    // Now the transport lags: what the stream takes is bounded, then write() waits.
    flowing = false;
    let taken = 0;
    for (let turn = 0; turn < 200 && s.writableLength === 0; turn++) {
      for (let i = 0; i < 50 && s.writableLength === 0; i++) {
        s.write(chunk);
        if (s.writableLength === 0) taken += chunk.length;
      }
      await tick();
    }
    assert.ok(s.writableLength > 0, `the stream still took every write after ${taken} bytes`);
    assert.ok(taken <= 64 * 1024 + 4 * 1024, `${taken} bytes taken while the transport did not write`);
    transport.destroy();
    await withTimeout(session.ended, 5000, 'session.ended');
  });

  it('writes over its buffer again only once the transport has called back for every write of it', async () => {
    const out: Buffer[] = []; // while holding: views, not copies (what a transport may still hold)
    const pending: (() => void)[] = [];
    let holding = true;
    const transport = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        if (holding) {
          out.push(chunk);
          pending.push(callback);
        } else {
          out.push(Buffer.from(chunk));
          callback();
        }
      },
    });
    const { session, stream } = await sessionWithDataStream(transport);
    const payloads = (from: number, to: number): Buffer[] => Array.from({ length: to - from }, (_, k) => Buffer.alloc(100, from + k));
    const dataOf = (bytes: Buffer): Buffer[] => splitFrames(bytes).filter((f) => !f.control).map((f) => f.body);
    // The transport holds the first turn's write, and the Writable queues the next turns'
    // behind it: none of them may be written over while held.
    for (const p of payloads(0, 20)) {
      stream.write(p);
      await tick();
    }
    assert.equal(out.length, 1);
    holding = false;
    for (const callback of pending.splice(0)) callback(); // the queued writes come through now
    await tick();
    assert.deepEqual(dataOf(Buffer.concat(out)), payloads(0, 20), 'a held write was written over');
    // Every write calls back from here on: the buffer is reused, and a long run of small
    // payloads allocates no new one.
    const before = slabAllocations();
    out.length = 0;
    for (const p of payloads(20, 220)) {
      stream.write(p);
      await tick();
    }
    assert.deepEqual(dataOf(Buffer.concat(out)), payloads(20, 220));
    assert.equal(slabAllocations() - before, 0, 'a new buffer though every write had called back');
    transport.destroy();
    await withTimeout(session.ended, 5000, 'session.ended');
  });

  it("does not stop reading for a stream's last DATA (FIN) past its bound: nothing more can come for it", async () => {
    const streams: SpdyStream[] = [];
    const d = driven((stream) => streams.push(stream));
    await tick();
    const deflater = new PeerDeflater();
    d.transport.push(await synStream(deflater, 1, portForwardHeaders('data', 80, 0)));
    deflater.close();
    await until('the stream', () => streams.length === 1);
    d.transport.push(dataFrame(1, Buffer.alloc(STREAM_RECEIVE_BUFFER_BYTES + 1024), true));
    d.transport.push(pingFrame(1));
    await until('the ping echo', () => d.frames().some((f) => f.control && f.type === T.Ping));
    d.transport.push(pingFrame(3));
    await until('the second ping echo', () => d.frames().filter((f) => f.control && f.type === T.Ping).length === 2);
    assert.equal(streams[0]!.readableLength, STREAM_RECEIVE_BUFFER_BYTES + 1024, 'unread');
    await d.close();
  });

  it('moves a stream through its states: open, half-closed either way, closed or reset', () =>
    withHarness(async (h) => {
      const s1 = await h.open(1);
      assert.equal(s1.state, 'open');
      s1.resume();
      h.send(dataFrame(1, 'x', true));
      await until('the peer FIN', () => s1.state === 'half-closed-remote');
      s1.end();
      await until('both closed', () => s1.state === 'closed');
      const s3 = await h.open(3);
      s3.end();
      await until('our FIN', () => s3.state === 'half-closed-local');
      h.send(rstStreamFrame(3, RST.Cancel));
      await until('the reset', () => s3.state === 'reset-by-peer');
      const s5 = await h.open(5);
      h.session.reset(s5, RST.Cancel, 'test');
      assert.equal(s5.state, 'reset-locally');
      assert.equal(s5.replied, false);
      h.session.reply(s5);
      assert.equal(s5.replied, false, 'no SYN_REPLY after a reset');
    }));
});
