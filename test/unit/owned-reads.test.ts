// ReadSlabs: reads land in slabs that are reused once nothing holds a view of them, and
// never while something does.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BufferBudget } from '../../src/buffer-budget';
import { ReadSlabs } from '../../src/streaming/owned-reads';

/** One read of `n` bytes as Node does it: fill what next() offered, report it. */
function read(slabs: ReadSlabs, n: number, fill: number): Buffer {
  const offered = slabs.next();
  const chunk = offered.subarray(0, Math.min(n, offered.length)).fill(fill);
  slabs.used(chunk.length, offered.length);
  return chunk;
}

describe('ReadSlabs', () => {
  it('reuses a retired slab once every view of it is released', () => {
    const slabs = new ReadSlabs(undefined); // no budget: bulk (1 MiB) slabs from the start
    const first = read(slabs, 1 << 20, 1); // fills the slab
    const second = read(slabs, 1000, 2); // the slab is full: a new one
    assert.notEqual(second.buffer, first.buffer);
    slabs.release(first); // the parser is done with it
    read(slabs, 1 << 20, 3); // fills the rest of the second slab... (short of it by 1000)
    const fourth = read(slabs, 10, 4);
    assert.equal(fourth.buffer, first.buffer, 'the first slab, released, is read into again');
    slabs.close();
  });

  it('never reads into a slab while a view of it is held, and leaves its bytes alone', () => {
    const slabs = new ReadSlabs(undefined);
    const held = read(slabs, 1 << 20, 7);
    slabs.retain(held.subarray(0, 100)); // a DATA payload handed to a stream
    slabs.release(held); // the parser is done; the stream still holds its piece
    const seen = new Set<ArrayBufferLike>();
    for (let i = 0; i < 20; i++) seen.add(read(slabs, 1 << 20, i + 10).buffer);
    assert.ok(!seen.has(held.buffer), 'not reused while held');
    assert.ok(held.every((b) => b === 7), 'its bytes are intact');
    slabs.close();
  });

  it('reads into small slabs until reads fill them, then into bulk slabs while the budget lends', () => {
    const budget = new BufferBudget(4 << 20);
    const slabs = new ReadSlabs(budget);
    assert.equal(slabs.next().length, 16 * 1024);
    read(slabs, 16 * 1024, 1); // filled what it was given: bytes are waiting
    assert.equal(slabs.next().length, 1 << 20);
    assert.equal(budget.held, (1 << 20) - 16 * 1024);
    slabs.close();
    assert.equal(budget.held, 0);
  });
});

describe('ReadSlabs after a burst', () => {
  it('forgets retired bulk slabs when reads turn short, even ones still pinned', () => {
    const budget = new BufferBudget(4 << 20);
    const slabs = new ReadSlabs(budget);
    read(slabs, 16 * 1024, 1); // grows to bulk
    const pinned = read(slabs, 1 << 20, 2); // a bulk slab, full
    slabs.retain(pinned.subarray(0, 10)); // a view nobody will release
    for (let i = 0; i < 40; i++) read(slabs, 100, 3); // short reads: back to small slabs
    assert.equal(budget.held, 0, 'the loan went back');
    assert.ok(slabs.next().buffer.byteLength <= 16 * 1024, 'reads go to small slabs');
    slabs.release(pinned.subarray(0, 10)); // a late release of a forgotten slab is ignored
    for (let i = 0; i < 400; i++) assert.notEqual(read(slabs, 100, 4).buffer, pinned.buffer, 'never read into again');
    slabs.close();
  });
});
