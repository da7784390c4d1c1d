import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BudgetedBound, BufferBudget } from '../../src/buffer-budget';

describe('BufferBudget and BudgetedBound', () => {
  it('lends growth while there is room, refuses past it, and takes it back', () => {
    const budget = new BufferBudget(3 << 20);
    const bounds = Array.from({ length: 4 }, () => new BudgetedBound(budget, 64 << 10, (1 << 20) + (64 << 10)));
    assert.deepEqual(bounds.map((b) => b.limit), Array(4).fill(64 << 10), 'all start at their base');
    assert.deepEqual(bounds.map((b) => b.grow()), [true, true, true, false]);
    assert.equal(budget.held, 3 << 20);
    assert.equal(budget.refusals, 1);
    assert.equal(bounds[3]!.limit, 64 << 10, 'refused: stays at its base');
    assert.equal(bounds[0]!.grow(), true, 'growing again costs nothing');
    assert.equal(budget.held, 3 << 20);
    bounds[0]!.release();
    bounds[0]!.release();
    assert.equal(budget.held, 2 << 20, 'released once, however often asked');
    assert.equal(bounds[3]!.grow(), true);
    for (const b of bounds) b.release();
    assert.equal(budget.held, 0);
  });

  it('without a budget, a bound is its maximum from the start', () => {
    const bound = new BudgetedBound(undefined, 1, 10);
    assert.equal(bound.limit, 10);
    assert.equal(bound.grow(), true);
    bound.release();
    assert.equal(bound.limit, 10);
  });
});
