// One memory budget for the bytes that forwarded connections hold beyond their small base
// buffers: pod read buffers grown for bulk transfers, pod write queues, SPDY stream receive
// buffers and WebSocket channel queues (--max-buffer-memory). A connection starts small
// and grows toward today's 1 MiB only while the budget has room; past it the holder keeps
// its base and applies backpressure (stops reading the side that fills it) instead of
// allocating. Growth is all or nothing (base -> max), so the accounting is one add and one
// subtract per growth, never per chunk.

/** The default --max-buffer-memory: 64 bulk transfers at full speed at once. */
export const DEFAULT_MAX_BUFFER_MEMORY = 64 * 1024 * 1024;

export class BufferBudget {
  #held = 0;
  /** Growths refused because the budget was full (a metric). */
  refusals = 0;

  constructor(readonly capacity: number) {}

  /** Bytes lent out now. */
  get held(): number {
    return this.#held;
  }

  /** Take `bytes` if they fit; false takes nothing. */
  tryTake(bytes: number): boolean {
    if (this.#held + bytes > this.capacity) {
      this.refusals++;
      return false;
    }
    this.#held += bytes;
    return true;
  }

  give(bytes: number): void {
    this.#held -= bytes;
  }
}

/**
 * One holder's bound: `base` always, `max` while the budget lends it the difference.
 * Without a budget the bound is `max` from the start (unit tests, tools).
 */
export class BudgetedBound {
  #lent = 0;
  #limit: number;

  constructor(
    private readonly budget: BufferBudget | undefined,
    readonly base: number,
    readonly max: number,
  ) {
    this.#limit = budget === undefined ? max : base;
  }

  /** The bound now. */
  get limit(): number {
    return this.#limit;
  }

  /** Grow to `max` if the budget lends it; true when the bound is `max`. */
  grow(): boolean {
    if (this.#limit === this.max) return true;
    if (!this.budget!.tryTake(this.max - this.base)) return false;
    this.#lent = this.max - this.base;
    this.#limit = this.max;
    return true;
  }

  /** Back to `base`, and what was lent back to the budget. */
  release(): void {
    if (this.#lent === 0) return;
    this.budget!.give(this.#lent);
    this.#lent = 0;
    this.#limit = this.base;
  }
}
