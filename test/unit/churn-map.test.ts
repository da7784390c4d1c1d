// ChurnMap keeps Map semantics across the renewals of its table.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ChurnMap } from '../../src/churn-map';

describe('ChurnMap', () => {
  it('answers as a Map would through thousands of entries coming and going', () => {
    const churn = new ChurnMap<number, { id: number }>();
    const reference = new Map<number, { id: number }>();
    // Entries live a while (up to 40 at once), as streams do: many renewals of the table.
    for (let id = 1; id <= 5000; id++) {
      const value = { id };
      churn.set(id, value);
      reference.set(id, value);
      if (id % 3 === 0) churn.set(id, value); // a set of a key already there is no new key
      if (id > 40) {
        assert.equal(churn.delete(id - 40), true);
        reference.delete(id - 40);
      }
      assert.equal(churn.delete(-id), false);
      if (id % 97 === 0) {
        assert.equal(churn.size, reference.size);
        assert.deepEqual(churn.values(), [...reference.values()]);
        assert.equal(churn.get(id - 10), reference.get(id - 10));
        assert.equal(churn.get(id - 41), undefined);
        assert.equal(churn.has(id - 1), true);
        assert.equal(churn.has(id - 40), false);
      }
    }
    assert.equal(churn.size, 40);
  });

  it('is empty after clear, and usable again', () => {
    const churn = new ChurnMap<string, number>();
    for (let i = 0; i < 100; i++) churn.set(`k${i}`, i);
    churn.clear();
    assert.equal(churn.size, 0);
    assert.equal(churn.get('k5'), undefined);
    assert.deepEqual(churn.values(), []);
    churn.set('k5', 5);
    assert.deepEqual(churn.values(), [5]);
  });

  it('hands out a snapshot that renewals while walking it do not change', () => {
    const churn = new ChurnMap<number, number>();
    for (let i = 0; i < 10; i++) churn.set(i, i);
    const seen: number[] = [];
    for (const value of churn.values()) {
      seen.push(value);
      for (let j = 0; j < 100; j++) churn.set(1000 + value * 100 + j, -1); // renews the table
    }
    assert.deepEqual(seen, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.equal(churn.size, 10 + 10 * 100);
  });
});
