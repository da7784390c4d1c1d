// ReadSlabs: reads land in slabs that are reused once nothing holds a view of them, and
// never while something does.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BufferBudget } from '../../src/buffer-budget';
import { ReadSlabs, spdyBulkSlabBytes } from '../../src/streaming/owned-reads';

/** One read of `n` bytes as Node does it: fill what next() offered, report it. */
function read(slabs: ReadSlabs, n: number, fill: number): Buffer {
  const offered = slabs.next();
  const chunk = offered.subarray(0, Math.min(n, offered.length)).fill(fill);
  slabs.used(chunk.length, offered.length);
  return chunk;
}

const BULK = 64 * 1024;
const SMALL = 16 * 1024;

describe('ReadSlabs', () => {
  it('reuses a retired slab once every view of it is released', () => {
    const slabs = new ReadSlabs(undefined); // no budget: bulk (64 KiB) slabs from the start
    const first = read(slabs, BULK, 1); // fills the slab
    const second = read(slabs, 1000, 2); // the slab is full: a new one
    assert.notEqual(second.buffer, first.buffer);
    slabs.release(first); // the parser is done with it
    read(slabs, BULK - 1000, 3); // fills the rest of the second slab
    const fourth = read(slabs, 10, 4);
    assert.equal(fourth.buffer, first.buffer, 'the first slab, released, is read into again');
    slabs.close();
  });

  it('never reads into a slab while a view of it is held, and leaves its bytes alone', () => {
    const slabs = new ReadSlabs(undefined);
    const held = read(slabs, BULK, 7);
    slabs.retain(held.subarray(0, 100)); // a DATA payload handed to a stream
    slabs.release(held); // the parser is done; the stream still holds its piece
    const seen = new Set<ArrayBufferLike>();
    for (let i = 0; i < 40; i++) {
      const chunk = read(slabs, BULK, i + 10);
      seen.add(chunk.buffer);
      slabs.release(chunk); // everything else is released at once
    }
    assert.ok(!seen.has(held.buffer), 'not reused while held');
    assert.ok(held.every((b) => b === 7), 'its bytes are intact');
    assert.ok(seen.size <= 3, `${seen.size} slabs for 40 reads released at once`);
    slabs.close();
  });

  it('reads into small slabs until reads fill them, then into bulk slabs while the budget lends', () => {
    const budget = new BufferBudget(8 << 20);
    const slabs = new ReadSlabs(budget);
    assert.equal(slabs.next().length, SMALL);
    read(slabs, SMALL, 1); // filled what it was given: bytes are waiting
    assert.equal(slabs.next().length, BULK);
    assert.equal(budget.held, 5 * (1 << 20) - SMALL, 'room for a 1 MiB slab and 4 free ones');
    slabs.close();
    assert.equal(budget.held, 0);
  });
});

describe('ReadSlabs after a burst', () => {
  it('goes back to small slabs when reads turn short, and forgets bulk slabs even if pinned', () => {
    const budget = new BufferBudget(8 << 20);
    const slabs = new ReadSlabs(budget);
    read(slabs, SMALL, 1); // grows to bulk
    const pinned = read(slabs, BULK, 2); // a bulk slab, full
    slabs.retain(pinned.subarray(0, 10)); // a view nobody will release
    for (let i = 0; i < 40; i++) read(slabs, 100, 3); // short reads: back to small slabs
    assert.equal(budget.held, 0, 'the loan went back');
    assert.ok(slabs.next().buffer.byteLength <= SMALL, 'reads go to small slabs');
    slabs.release(pinned.subarray(0, 10)); // late: the slab is not kept
    slabs.release(pinned);
    for (let i = 0; i < 400; i++) assert.notEqual(read(slabs, 100, 4).buffer, pinned.buffer, 'never read into again');
    slabs.close();
  });

  it('remembers at most 64 held slabs: a view never released does not keep its slab through us', () => {
    const slabs = new ReadSlabs(undefined);
    const leaked = read(slabs, BULK, 1); // its parser view is never released
    for (let i = 0; i < 80; i++) read(slabs, BULK, 2); // 80 more slabs, all held
    slabs.release(leaked); // too late: forgotten, so never reused
    for (let i = 0; i < 20; i++) assert.notEqual(read(slabs, BULK, 3).buffer, leaked.buffer);
    slabs.close();
  });
});

describe('ReadSlabs whose bulk size follows the streams', () => {
  it('reads 1 MiB slabs while few streams share the connection, 64 KiB ones once many do', () => {
    let streams = 2;
    const slabs = new ReadSlabs(undefined, () => spdyBulkSlabBytes(streams));
    assert.equal(read(slabs, 1 << 20, 1).buffer.byteLength, 1 << 20);
    streams = 40;
    const next = read(slabs, BULK, 2);
    assert.equal(next.buffer.byteLength, BULK, 'a new slab of the new size at once');
    streams = 2;
    assert.equal(read(slabs, 100, 3).buffer.byteLength, 1 << 20);
    slabs.close();
  });
});
