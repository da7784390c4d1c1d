// Single-use PortForward tokens. Upstream (cri-streaming request_cache.go) uses 48-bit
// tokens; ours are 128 random bits, so a token cannot be guessed within its lifetime.

import { createHash, randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { resourceExhausted } from '../errors';
import type { Metrics } from '../metrics';

/** Random bytes per token: 128 bits, 22 url-safe base64 characters. */
const TOKEN_BYTES = 16;

/** What a PortForward request asked for, kept until its URL is redeemed. */
export interface PortForwardRequestGrant {
  readonly sandboxId: string;
  /** The ports the request named; empty means any port the client asks for. */
  readonly ports: readonly number[];
}

export interface PortForwardGrant extends PortForwardRequestGrant {
  /** The token's fingerprint (tokenTag): logs of the PortForward and of its forwards share it. */
  readonly tag: string;
}

/** An unredeemed token as an upgrade hands it over. */
export interface ExportedToken {
  token: string;
  sandboxId: string;
  ports: number[];
  /** Time it has left, in ms. */
  ttlMs: number;
}

/** A redeemed grant, as one streaming session serves it. */
export interface SessionGrant extends PortForwardGrant {
  /** The streaming client's address (kubelet, the apiserver or crictl), host:port. */
  readonly peer: string;
}

/** A short fingerprint of a token for the audit trail: it names the token without revealing it. */
export function tokenTag(token: string): string {
  return createHash('sha256').update(token).digest('base64url').slice(0, 12);
}

/** Where token ages are read from: milliseconds, monotonic (performance.now() by default). */
export interface Clock {
  now(): number;
}

export interface TokenCacheOptions {
  ttlMs: number;
  maxInflight: number;
  metrics: Metrics;
  /** The clock TTLs are judged on; tests pass a fake one. Default: real time. */
  clock?: Clock;
}

export class TokenCache {
  #forward: ((token: ExportedToken) => void) | undefined;
  readonly #cache: LRUCache<string, PortForwardGrant>;
  readonly #maxInflight: number;
  readonly #metrics: Metrics;
  readonly #purgeTimer: NodeJS.Timeout;

  constructor(options: TokenCacheOptions) {
    this.#maxInflight = options.maxInflight;
    this.#metrics = options.metrics;
    this.#cache = new LRUCache<string, PortForwardGrant>({
      // One more than the limit: issue() refuses before the cache would evict anything.
      max: options.maxInflight + 1,
      ttl: options.ttlMs,
      // Staleness is judged on the clock, not on a timer per token.
      ttlAutopurge: false,
      // The clock is read on every check: lru-cache's cached reading costs a timer per read
      // (see sandbox/resolve-cache.ts).
      ttlResolution: 0,
      ...(options.clock ? { perf: options.clock } : {}),
      updateAgeOnGet: false,
      dispose: (_grant, _token, reason) => {
        if (reason === 'expire') this.#metrics.tokensExpired.inc();
      },
    });
    // Expired tokens are freed (and counted) at least once per TTL even if nobody asks.
    this.#purgeTimer = setInterval(() => this.#cache.purgeStale(), options.ttlMs);
    this.#purgeTimer.unref();
  }

  /** Cache a grant and return its token; refuse when too many are in flight. */
  issue(grant: PortForwardRequestGrant): string {
    if (this.#cache.size >= this.#maxInflight) {
      this.#cache.purgeStale();
      if (this.#cache.size >= this.#maxInflight) {
        this.#metrics.tokensRejected.inc({ reason: 'limit' });
        throw resourceExhausted(
          `maximum number of in-flight port-forward requests exceeded (${this.#maxInflight}); retry after a minute or raise --max-inflight-tokens`,
        );
      }
    }
    let token: string;
    do {
      token = randomBytes(TOKEN_BYTES).toString('base64url');
    } while (this.#cache.has(token)); // 2^-128: cheap insurance, not a real expectation
    this.#cache.set(token, { ...grant, tag: tokenTag(token) });
    this.#metrics.tokensIssued.inc();
    this.#forward?.({ token, sandboxId: grant.sandboxId, ports: [...grant.ports], ttlMs: Math.max(1, Math.floor(this.#cache.getRemainingTTL(token))) });
    return token;
  }

  /** Take the grant of a token: the first redeem wins, every later one gets undefined. */
  redeem(token: string): PortForwardGrant | undefined {
    const grant = this.#cache.get(token);
    if (grant === undefined) {
      this.#metrics.tokensRejected.inc({ reason: 'unknown' });
      return undefined;
    }
    this.#cache.delete(token);
    this.#metrics.tokensRedeemed.inc();
    return grant;
  }

  /**
   * Take every unredeemed token out, with the time each has left (an upgrade hands them to
   * the new process): none of them can be redeemed here any more, unless imported back.
   */
  /**
   * During an upgrade, after exportAll(): every token issued from now on is also passed to
   * `forward` (the new process, which serves the URLs by then), until called with undefined.
   */
  forwardIssued(forward: ((token: ExportedToken) => void) | undefined): void {
    this.#forward = forward;
  }

  /**
   * The unredeemed tokens, for an upgrade's new process. They stay here too, until
   * dropAll(): a connection this process accepted just before it stopped accepting may
   * still send its request, and redeems here.
   */
  exportAll(): ExportedToken[] {
    this.#cache.purgeStale();
    const tokens: ExportedToken[] = [];
    for (const [token, grant] of this.#cache.entries()) {
      tokens.push({ token, sandboxId: grant.sandboxId, ports: [...grant.ports], ttlMs: Math.max(1, Math.floor(this.#cache.getRemainingTTL(token))) });
    }
    return tokens;
  }

  /** The new process serves every URL now: none is redeemed here any more. */
  dropAll(): void {
    this.#cache.clear();
  }


  /** Take over exported tokens: each stays redeemable for the time it had left. */
  importAll(tokens: readonly ExportedToken[]): void {
    for (const t of tokens) this.#cache.set(t.token, { sandboxId: t.sandboxId, ports: t.ports, tag: tokenTag(t.token) }, { ttl: t.ttlMs });
  }

  get size(): number {
    return this.#cache.size;
  }

  close(): void {
    clearInterval(this.#purgeTimer);
    this.#cache.clear();
  }
}
