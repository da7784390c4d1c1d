// What we know of the upstream runtime's sandboxes, so that a forwarded connection does not
// cost a verbose PodSandboxStatus (about 1 ms of containerd's CPU, and a gRPC round trip of
// ours) each time. containerd asks itself once per connection; a browser behind
// `kubectl port-forward` opens one per request.
//
// An entry is dropped:
// - when a StopPodSandbox or RemovePodSandbox passes through the proxy (every entry: the
//   calls are rare, and the proxy does not decode what it passes on);
// - when a dial finds the namespace gone (Forwarder: it forgets, asks again, dials again),
//   which is how a sandbox stopped behind our back (crictl against containerd) is seen;
// - after REFRESH_AFTER_MS it is refreshed in the background while still used, so even a
//   host-network sandbox stopped behind our back is known within that time.
// Concurrent lookups of one sandbox share one upstream call.

import { LRUCache } from 'lru-cache';
import type { ResolvedSandbox, SandboxResolver } from './types';

/** Sandboxes remembered at once (a node runs at most a few hundred pods). */
export const RESOLVE_CACHE_ENTRIES = 1024;
/** An entry older than this is refreshed in the background on its next use. */
export const REFRESH_AFTER_MS = 30_000;

export class CachingSandboxResolver implements SandboxResolver {
  readonly #source: SandboxResolver & { close?(): void };
  readonly #cache: LRUCache<string, ResolvedSandbox>;

  constructor(source: SandboxResolver & { close?(): void }, refreshAfterMs = REFRESH_AFTER_MS) {
    this.#source = source;
    this.#cache = new LRUCache<string, ResolvedSandbox>({
      max: RESOLVE_CACHE_ENTRIES,
      ttl: refreshAfterMs,
      allowStale: true,
      // Read the clock on every lookup. With the default (1 ms), lru-cache 11 "caches" its
      // reading by starting a setTimeout on every read to clear it: a timer per forwarded
      // connection, 1.7% of the server's CPU in a kubectl churn (perf).
      ttlResolution: 0,
      // undefined (no such sandbox) is not cached: the next lookup asks again.
      fetchMethod: (id) => this.#source.resolve(id),
    });
  }

  resolve(id: string): Promise<ResolvedSandbox | undefined> {
    return this.#cache.fetch(id);
  }

  /** A remembered answer younger than the refresh age; else undefined (resolve() then refreshes). */
  peek(id: string): ResolvedSandbox | undefined {
    return this.#cache.peek(id, { allowStale: false });
  }

  forget(id: string): void {
    this.#cache.delete(id);
  }

  /** Every sandbox may have changed (a Stop or Remove went to the runtime). */
  forgetAll(): void {
    this.#cache.clear();
  }

  close(): void {
    this.#cache.clear();
    this.#source.close?.();
  }
}
