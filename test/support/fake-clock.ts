// A clock that moves only when the test says so, for code that takes a { now(): number }
// (e.g. TokenCache's TTLs): no sleeping through a TTL.

export class FakeClock {
  /** Not 0: lru-cache takes a start time of 0 for "no TTL". */
  #now = 1_000_000;

  now(): number {
    return this.#now;
  }

  advance(ms: number): void {
    this.#now += ms;
  }
}
