// A Map for entries that come and go by the thousand inside a long-lived owner: the streams
// of a SPDY session, the stream pairs waiting for their second stream, the running forwards.
//
// Why not a plain Map: V8 moves a Map's entries to a new table whenever it grows or shrinks,
// and leaves the old table as it was (live iterators may still walk it). Once the Map has
// lived long enough to be in the old generation, its new tables are made there too, and
// every table it leaves holds the entries of that moment. A scavenge takes each reference
// from the old generation as a root, dead table or not, so those entries (a connection's
// streams, and through them its pipe, pod socket and buffers) survive every scavenge until
// the next full GC, which they bring forward: a kubectl churn of new connections promoted
// 1.4 MiB of dead connections per scavenge through three such Maps.
//
// Here the table is renewed every RENEW_AFTER insertions of a new key: the entries move to
// a fresh Map (young, as what it holds), and the old table's values are overwritten in
// place (no rehash, nothing left behind to refer to them). Keys are numbers or strings:
// the old table keeps those, which refer to nothing.

/** New keys between renewals: often enough that a busy table is always young. */
const RENEW_AFTER = 64;

export class ChurnMap<K extends number | string, V> {
  #map = new Map<K, V>();
  #added = 0;

  get size(): number {
    return this.#map.size;
  }

  get(key: K): V | undefined {
    return this.#map.get(key);
  }

  has(key: K): boolean {
    return this.#map.has(key);
  }

  set(key: K, value: V): void {
    if (!this.#map.has(key) && ++this.#added >= RENEW_AFTER) this.#renew();
    this.#map.set(key, value);
  }

  delete(key: K): boolean {
    return this.#map.delete(key);
  }

  /** A snapshot: the table may be renewed while a caller walks it. */
  values(): V[] {
    return [...this.#map.values()];
  }

  clear(): void {
    this.#wipe(this.#map);
    this.#map = new Map();
  }

  #renew(): void {
    const old = this.#map;
    this.#map = new Map(old);
    this.#wipe(old);
    this.#added = 0;
  }

  /** Overwrite every value of a table being let go (a set of an existing key stays in place). */
  #wipe(map: Map<K, V>): void {
    for (const key of map.keys()) map.set(key, undefined as V);
  }
}
