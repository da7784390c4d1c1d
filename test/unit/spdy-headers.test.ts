import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createDeflate, inflateSync, constants as zlibConstants } from 'node:zlib';
import { MAX_HEADER_BLOCK_BYTES, MAX_HEADER_COUNT } from '../../src/streaming/spdy/constants';
import { SPDY3_HEADER_DICTIONARY, SPDY3_HEADER_DICTIONARY_ADLER32 } from '../../src/streaming/spdy/dictionary';
import { ProtocolError } from '../../src/streaming/spdy/errors';
import {
  HeaderBlockDecoder,
  HeaderBlockEncoder,
  parseHeaderBlock,
  serializeHeaderBlock,
  type HeaderMap,
} from '../../src/streaming/spdy/headers';
import { PeerDeflater, PeerInflater, plainHeaderBlock, portForwardHeaders, readPlainHeaderBlock } from '../support/spdy-frames';

function sessionError(pattern: RegExp) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof ProtocolError && err.scope.kind === 'session', `expected a session error, got ${String(err)}`);
    assert.match(err.message, pattern);
    return true;
  };
}

/** The decoder is synchronous; as a promise, a throw becomes a rejection for assert.rejects. */
async function decode(decoder: HeaderBlockDecoder, block: Buffer): Promise<HeaderMap> {
  return decoder.decode(block);
}

/** adler32, to check the embedded dictionary against the draft's checksum. */
function adler32(bytes: Buffer): number {
  let a = 1;
  let b = 0;
  for (const byte of bytes) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  return ((b << 16) | a) >>> 0;
}

describe('SPDY/3 header dictionary', () => {
  it('is the 1423-byte dictionary of the draft (adler32 0xe3c6a7c2)', () => {
    assert.equal(SPDY3_HEADER_DICTIONARY.length, 1423);
    assert.equal(adler32(SPDY3_HEADER_DICTIONARY), 0xe3c6a7c2);
    assert.equal(SPDY3_HEADER_DICTIONARY_ADLER32, 0xe3c6a7c2);
  });
});

describe('parseHeaderBlock / serializeHeaderBlock', () => {
  it('round-trips header lists, including empty values, NUL-joined values and latin1 bytes', () => {
    const cases: [string, string][][] = [
      [],
      portForwardHeaders('data', 8080, 17),
      [
        ['empty', ''],
        ['multi', 'a\0b\0c'],
        ['latin1', 'caf\xe9 \xff'],
        ['long', 'x'.repeat(70_000)],
      ],
    ];
    for (const headers of cases) {
      const block = serializeHeaderBlock(headers);
      assert.deepEqual(block, plainHeaderBlock(headers), 'the wire format of the draft');
      assert.deepEqual([...parseHeaderBlock(block)], headers);
    }
  });

  it('writes names lower-case', () => {
    const block = serializeHeaderBlock([['X-Stream-Protocol-Version', 'v']]);
    assert.deepEqual(readPlainHeaderBlock(block), [['x-stream-protocol-version', 'v']]);
  });

  it(
    'sizes the block after lower-casing names (a lower-case form of another length)',
    () => {
      const block = serializeHeaderBlock([['\u0130', 'value']]);
      assert.equal(readPlainHeaderBlock(block)[0]![1], 'value');
      assert.doesNotThrow(() => serializeHeaderBlock([['\u0130\u0130\u0130', 'v']]));
    },
  );

  it('lower-cases upper-case names it reads', () => {
    const headers = parseHeaderBlock(plainHeaderBlock([['StreamType', 'data'], ['PORT', '80']]));
    assert.deepEqual([...headers], [['streamtype', 'data'], ['port', '80']]);
  });

  it('rejects duplicate names, also when they differ only in case', () => {
    for (const names of [['port', 'port'], ['port', 'Port'], ['PORT', 'port']]) {
      assert.throws(
        () => parseHeaderBlock(plainHeaderBlock(names.map((n, i) => [n, String(i)] as [string, string]))),
        sessionError(/duplicate header "port"/),
      );
    }
  });

  it('accepts MAX_HEADER_COUNT headers and rejects one more, from the count alone', () => {
    const many = (n: number): [string, string][] => Array.from({ length: n }, (_, i) => [`h${i}`, `${i}`]);
    assert.equal(parseHeaderBlock(plainHeaderBlock(many(MAX_HEADER_COUNT))).size, MAX_HEADER_COUNT);
    assert.throws(
      () => parseHeaderBlock(plainHeaderBlock(many(MAX_HEADER_COUNT + 1))),
      sessionError(new RegExp(`${MAX_HEADER_COUNT + 1} headers exceed the limit of ${MAX_HEADER_COUNT}`)),
    );
    const countOnly = Buffer.alloc(4);
    countOnly.writeUInt32BE(0xffffffff, 0);
    assert.throws(() => parseHeaderBlock(countOnly), sessionError(/exceed the limit/));
  });

  it('rejects lengths that run past the block, truncation, trailing bytes and empty names', () => {
    const good = plainHeaderBlock([['port', '8080']]); // 4 + 4+4 + 4+4 = 20 bytes
    const withU32 = (offset: number, value: number): Buffer => {
      const b = Buffer.from(good);
      b.writeUInt32BE(value, offset);
      return b;
    };
    const cases: [string, Buffer, RegExp][] = [
      ['empty block', Buffer.alloc(0), /shorter than its count/],
      ['3 bytes', Buffer.alloc(3), /shorter than its count/],
      ['count past the headers', withU32(0, 2), /header name length runs past the block/],
      ['name length past the block', withU32(4, 100), /header name of 100 bytes runs past the block/],
      ['name length 2^32-1', withU32(4, 0xffffffff), /header name of 4294967295 bytes runs past/],
      ['value length past the block', withU32(12, 5), /value of header "port" of 5 bytes runs past the block/],
      ['value length 2^32-1', withU32(12, 0xffffffff), /runs past the block/],
      ['value length missing', good.subarray(0, 14), /value of header "port" length runs past the block/],
      ['value cut short', good.subarray(0, 19), /runs past the block/],
      ['trailing bytes', Buffer.concat([good, Buffer.from([0])]), /1 bytes after the last header/],
      ['empty name', plainHeaderBlock([['', 'x']]), /empty header name/],
    ];
    for (const [what, block, pattern] of cases) {
      assert.throws(() => parseHeaderBlock(block), sessionError(pattern), what);
    }
  });
});

describe('HeaderBlockEncoder', () => {
  it('emits zlib stored blocks that Node inflates, block after block on one context', async () => {
    const encoder = new HeaderBlockEncoder();
    const lists: [string, string][][] = [[], [['status', '200'], ['version', 'HTTP/1.1']], [], [['big', 'y'.repeat(200_000)]]];
    const blocks = lists.map((l) => encoder.encode(l));
    assert.deepEqual(blocks[0]!.subarray(0, 2), Buffer.from([0x78, 0x01]), 'zlib header on the first block only');
    assert.notDeepEqual(blocks[1]!.subarray(0, 2), Buffer.from([0x78, 0x01]));
    for (const block of blocks) {
      assert.deepEqual(block.subarray(-5), Buffer.from([0x00, 0x00, 0x00, 0xff, 0xff]), 'ends like a sync flush');
    }
    // an empty block is the zlib header, one stored block of the 4-byte count and the marker
    assert.equal(blocks[0]!.length, 2 + 5 + 4 + 5);
    for (const dictionary of [SPDY3_HEADER_DICTIONARY, undefined]) {
      const inflater = new PeerInflater(dictionary);
      for (let i = 0; i < blocks.length; i++) {
        const plain = await inflater.inflate(blocks[i]!);
        assert.deepEqual(plain, serializeHeaderBlock(lists[i]!), `block ${i}`);
      }
      inflater.close();
    }
  });

  it('starts a stream that a one-shot inflate with the dictionary reads too', () => {
    const encoder = new HeaderBlockEncoder();
    const stream = Buffer.concat([encoder.encode([['a', 'b']]), encoder.encode([['c', 'd']])]);
    const plain = inflateSync(stream, { dictionary: SPDY3_HEADER_DICTIONARY, finishFlush: zlibConstants.Z_SYNC_FLUSH });
    assert.deepEqual(plain, Buffer.concat([plainHeaderBlock([['a', 'b']]), plainHeaderBlock([['c', 'd']])]));
  });

  it('is decoded by HeaderBlockDecoder', async () => {
    const encoder = new HeaderBlockEncoder();
    const decoder = new HeaderBlockDecoder();
    for (const list of [portForwardHeaders('error', 1, 0), [], portForwardHeaders('data', 65535, 1)]) {
      assert.deepEqual([...(await decode(decoder, encoder.encode(list)))], list);
    }
    decoder.close();
  });
});

describe('HeaderBlockDecoder', () => {
  it('decodes real zlib blocks of one deflate context in sequence (back-references across blocks)', async () => {
    const deflater = new PeerDeflater();
    const decoder = new HeaderBlockDecoder();
    const lists: [string, string][][] = [];
    for (let i = 0; i < 50; i++) lists.push(portForwardHeaders(i % 2 === 0 ? 'error' : 'data', 8000 + (i % 3), i >> 1));
    lists.push([], [['StreamType', 'data'], ['Port', '80']]);
    const blocks: Buffer[] = [];
    for (const l of lists) blocks.push(await deflater.compress(l));
    // later identical headers compress to a few bytes: they refer to earlier blocks
    assert.ok(blocks[10]!.length < 20, `block 10 is ${blocks[10]!.length} bytes`);
    for (let i = 0; i < lists.length; i++) {
      const headers = await decode(decoder, blocks[i]!);
      assert.deepEqual(
        [...headers],
        lists[i]!.map(([n, v]) => [n.toLowerCase(), v]),
        `block ${i}`,
      );
    }
    deflater.close();
    decoder.close();
  });

  it('hands its context over: a decoder adopting window() decodes the rest of the stream, past 32 KiB of history', async () => {
    // An upgrade's new process continues the peer's compression context from the window
    // alone; zlib's deflate (what Go's compress/flate also is) keeps referring back into it.
    const deflater = new PeerDeflater();
    const lists: [string, string][][] = [];
    for (let i = 0; i < 900; i++) lists.push(portForwardHeaders(i % 2 === 0 ? 'error' : 'data', 8000 + (i % 7), i >> 1));
    const blocks: Buffer[] = [];
    for (const l of lists) blocks.push(await deflater.compress(l));
    const expected = (i: number): [string, string][] => lists[i]!.map(([n, v]) => [n.toLowerCase(), v]);
    for (const at of [1, 17, 450, 899]) {
      const first = new HeaderBlockDecoder();
      assert.equal(first.window(), undefined, 'nothing to hand over before the first block');
      for (let i = 0; i < at; i++) first.decode(blocks[i]!);
      const window = first.window()!;
      assert.ok(window.length <= 32 * 1024, `window of ${window.length} bytes`);
      first.close();
      const second = new HeaderBlockDecoder(window);
      for (let i = at; i < blocks.length; i++) assert.deepEqual([...second.decode(blocks[i]!)], expected(i), `block ${i} after adopting at ${at}`);
      // and it hands over again, as a third upgrade in a row would
      const third = new HeaderBlockDecoder(second.window());
      const more = await deflater.compress(lists[3]!);
      assert.deepEqual([...third.decode(more)], expected(3));
      second.close();
      third.close();
      blocks.push(more);
      lists.push(lists[3]!);
    }
    deflater.close();
  });

  it('without the window, the adopted context would fail: the test above is not vacuous', async () => {
    const deflater = new PeerDeflater();
    const blocks: Buffer[] = [];
    for (let i = 0; i < 20; i++) blocks.push(await deflater.compress(portForwardHeaders('data', 8000, i)));
    const blind = new HeaderBlockDecoder(Buffer.from(SPDY3_HEADER_DICTIONARY));
    assert.throws(() => {
      for (let i = 10; i < 20; i++) assert.deepEqual([...blind.decode(blocks[i]!)], portForwardHeaders('data', 8000, i).map(([n, v]) => [n.toLowerCase(), v]));
    });
    blind.close();
    deflater.close();
  });

  it('decodes blocks made at maximum compression and with no compression', async () => {
    for (const level of [0, 9]) {
      const deflater = new PeerDeflater(level);
      const decoder = new HeaderBlockDecoder();
      for (let i = 0; i < 5; i++) {
        const list = portForwardHeaders('data', 80 + i, i);
        assert.deepEqual([...(await decode(decoder, await deflater.compress(list)))], list);
      }
      deflater.close();
      decoder.close();
    }
  });

  it('fails with a SessionError on corrupt compression, and keeps failing', async () => {
    const decoder = new HeaderBlockDecoder();
    await assert.rejects(decode(decoder, Buffer.from([0x78, 0xbb, 0xff, 0xff, 0xff, 0xff, 0x00, 0x01])), sessionError(/corrupt header block compression/));
    await assert.rejects(decode(decoder, new HeaderBlockEncoder().encode([])), sessionError(/corrupt header block compression/));
    decoder.close();
  });

  it('fails on a block that corrupts a stream that started well', async () => {
    const deflater = new PeerDeflater();
    const decoder = new HeaderBlockDecoder();
    const good = await deflater.compress(portForwardHeaders('error', 80, 0));
    assert.equal((await decode(decoder, good)).get('port'), '80');
    // BTYPE=11 is reserved: an invalid block type
    await assert.rejects(decode(decoder, Buffer.from([0x07, 0x00, 0x00])), sessionError(/corrupt header block compression/));
    deflater.close();
    decoder.close();
  });

  it('fails with a SessionError on plaintext that is not a valid header block', async () => {
    const cases: [Buffer, RegExp][] = [
      [plainHeaderBlock([['port', '1'], ['PORT', '2']]), /duplicate header "port"/],
      [plainHeaderBlock(Array.from({ length: MAX_HEADER_COUNT + 1 }, (_, i) => [`n${i}`, ''] as [string, string])), /exceed the limit/],
      [Buffer.from([0, 0, 0, 1, 0, 0, 1, 0]), /runs past the block/],
      [Buffer.alloc(0), /shorter than its count/],
    ];
    for (const [plain, pattern] of cases) {
      const deflater = new PeerDeflater();
      const decoder = new HeaderBlockDecoder();
      await assert.rejects(decode(decoder, await deflater.compressRaw(plain)), sessionError(pattern));
      deflater.close();
      decoder.close();
    }
  });

  it('stops a header bomb (64 KiB inflating to 64 MiB) at the limit without growing the heap', async () => {
    // 64 MiB of NUL bytes through one deflate context with the dictionary
    const deflate = createDeflate({ dictionary: SPDY3_HEADER_DICTIONARY, level: 9 });
    const out: Buffer[] = [];
    deflate.on('data', (c: Buffer) => out.push(c));
    const zeros = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < 64; i++) deflate.write(zeros);
    await new Promise<void>((resolve) => deflate.flush(zlibConstants.Z_SYNC_FLUSH, () => resolve()));
    deflate.destroy();
    const bomb = Buffer.concat(out);
    assert.ok(bomb.length <= 64 * 1024, `bomb is ${bomb.length} bytes`);

    const usage = (): number => {
      const m = process.memoryUsage();
      return m.heapUsed + m.arrayBuffers;
    };
    const before = usage();
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, usage())), 1);
    const decoder = new HeaderBlockDecoder();
    const started = Date.now();
    await assert.rejects(decode(decoder, bomb), sessionError(new RegExp(`past the limit of ${MAX_HEADER_BLOCK_BYTES} bytes`)));
    clearInterval(sampler);
    peak = Math.max(peak, usage());
    assert.ok(peak - before < 50 * 1024 * 1024, `memory grew by ${((peak - before) / 1048576).toFixed(1)} MiB`);
    assert.ok(Date.now() - started < 5000);
    // the decoder stays failed
    await assert.rejects(decode(decoder, new HeaderBlockEncoder().encode([])), sessionError(/past the limit/));
    decoder.close();
  });

  it('accepts a block of just under the inflated limit', async () => {
    const deflater = new PeerDeflater();
    const decoder = new HeaderBlockDecoder();
    const value = 'v'.repeat(MAX_HEADER_BLOCK_BYTES - 4 - 8 - 1);
    const headers = await decode(decoder, await deflater.compress([['x', value]]));
    assert.equal(headers.get('x'), value);
    deflater.close();
    decoder.close();
  });

  it('refuses to decode once closed (its session ended), with a session error', async () => {
    const deflater = new PeerDeflater();
    const decoder = new HeaderBlockDecoder();
    const block = await deflater.compress([['a', 'b']]);
    decoder.close();
    assert.throws(() => decoder.decode(block), sessionError(/zlib context is closed/));
    deflater.close();
  });
});
