import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CriError } from '../../src/errors';
import { createMetrics, type Metrics } from '../../src/metrics';
import { TokenCache, tokenTag } from '../../src/streaming/tokens';
import { FakeClock } from '../support/fake-clock';

async function counter(metrics: Metrics, name: string, labels = ''): Promise<number> {
  const text = await metrics.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
  return line === undefined ? 0 : Number(line.split(' ')[1]);
}

const grant = { sandboxId: 'sb', ports: [80] };

describe('TokenCache', () => {
  it('issues unique url-safe tokens of at least 128 bits (100k issues)', () => {
    const tokens = new TokenCache({ ttlMs: 60_000, maxInflight: 100_000, metrics: createMetrics() });
    const seen = new Set<string>();
    for (let i = 0; i < 100_000; i++) {
      const token = tokens.issue(grant);
      assert.match(token, /^[A-Za-z0-9_-]{22,}$/);
      seen.add(token);
    }
    assert.equal(seen.size, 100_000);
    tokens.close();
  });

  it('redeems a token exactly once and keeps its ports', async () => {
    const metrics = createMetrics();
    const tokens = new TokenCache({ ttlMs: 60_000, maxInflight: 10, metrics });
    const token = tokens.issue({ sandboxId: 'sb1', ports: [8080, 9090] });
    assert.deepEqual(tokens.redeem(token), { sandboxId: 'sb1', ports: [8080, 9090], tag: tokenTag(token) });
    assert.match(tokenTag(token), /^[A-Za-z0-9_-]{12}$/);
    assert.ok(!token.includes(tokenTag(token)), 'the fingerprint is not a piece of the token');
    assert.equal(tokens.redeem(token), undefined);
    assert.equal(tokens.redeem('never-issued-token-xxxxxx'), undefined);
    assert.equal(await counter(metrics, 'cri_portforward_tokens_issued_total'), 1);
    assert.equal(await counter(metrics, 'cri_portforward_tokens_redeemed_total'), 1);
    assert.equal(await counter(metrics, 'cri_portforward_tokens_rejected_total', '{reason="unknown"}'), 2);
    tokens.close();
  });

  it('expires tokens after the TTL and counts them', async () => {
    const metrics = createMetrics();
    const clock = new FakeClock();
    const tokens = new TokenCache({ ttlMs: 50, maxInflight: 10, metrics, clock });
    const token = tokens.issue(grant);
    clock.advance(120);
    assert.equal(tokens.redeem(token), undefined);
    assert.equal(await counter(metrics, 'cri_portforward_tokens_expired_total'), 1);
    tokens.close();
  });

  it('refuses the token past the in-flight limit with resource-exhausted, and frees room on expiry', async () => {
    const metrics = createMetrics();
    const clock = new FakeClock();
    const tokens = new TokenCache({ ttlMs: 200, maxInflight: 1000, metrics, clock });
    const issued = Array.from({ length: 1000 }, () => tokens.issue(grant));
    assert.throws(
      () => tokens.issue(grant),
      (err: unknown) => err instanceof CriError && err.kind === 'resource-exhausted' && /in-flight/.test(err.message),
    );
    assert.equal(await counter(metrics, 'cri_portforward_tokens_rejected_total', '{reason="limit"}'), 1);
    // Every token issued before the limit is still redeemable: nothing was evicted.
    assert.deepEqual(tokens.redeem(issued[0]!), { ...grant, tag: tokenTag(issued[0]!) });
    assert.doesNotThrow(() => tokens.issue(grant));
    // Once they expire, a full set of new tokens fits again.
    clock.advance(250);
    for (let i = 0; i < 1000; i++) tokens.issue(grant);
    assert.equal(tokens.size, 1000);
    tokens.close();
  });
});
