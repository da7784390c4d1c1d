// Giving memory back once quiet, but only when a burst left something worth giving back:
// the trim's full collection makes the next session re-compile its data path, so a small
// session is not followed by one, while a bulk burst is, and RSS falls back from its peak.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAppSandbox, type AppSandbox } from '../support/app-sandbox';
import { rootSkipReason } from '../support/root';
import { TRIM_DELAY_MS, TRIM_WORTH_BYTES } from '../../src/memory-trim';
import { cleanUpAndAssertNothingLeft, serverMemory, serverMetric } from '../support/server-process';
import { portForwardUrls, runEchoLoad } from '../support/spdy-load';
import { until } from '../support/until';

const skip = rootSkipReason();
const TRIMS = 'cri_portforward_memory_trims_total';
/** The server waits TRIM_DELAY_MS of quiet; this leaves room for a loaded machine's late timer. */
const QUIET_WAIT_MS = TRIM_DELAY_MS + 2_000;

describe('memory trim after a burst', { skip }, () => {
  let world: AppSandbox;

  before(async () => {
    world = await startAppSandbox(['echo'], [], 'trim');
  });

  after(async () => {
    if (!world) return;
    assert.equal(await world.stop(), 0);
    cleanUpAndAssertNothingLeft(world.server, world.server.dir);
  });

  it('does not trim after a few small connections', async () => {
    const { server, cri, sandboxId } = world;
    const summary = await runEchoLoad(await portForwardUrls(cri, sandboxId, world.apps[0]!.port, 1), world.apps[0]!.port, 8, 64);
    assert.equal(summary.clean, 8, JSON.stringify(summary));
    await sleep(QUIET_WAIT_MS);
    assert.equal(await serverMetric(server, TRIMS), 0);
  });

  it('after a bulk burst RSS comes back near its level before (trimmed once quiet unless it already fell by itself)', async () => {
    const { server, cri, sandboxId } = world;
    const urls = await portForwardUrls(cri, sandboxId, world.apps[0]!.port, 2);
    const before = serverMemory(server).rssBytes;
    const summary = await runEchoLoad(urls, world.apps[0]!.port, 32, 4 << 20);
    assert.equal(summary.clean, 32, JSON.stringify(summary));
    const atEnd = serverMemory(server).rssBytes;
    // The server's promise: once quiet, RSS is within TRIM_WORTH_BYTES of where it was before
    // the burst, by the trim or by itself (V8 and glibc often give the pages back first, and
    // then no trim is done, rightly).
    const near = (): boolean => serverMemory(server).rssBytes - before < TRIM_WORTH_BYTES;
    await until('a trim, or RSS back near its level before the burst', async () => (await serverMetric(server, TRIMS)) === 1 || near(), { timeoutMs: TRIM_DELAY_MS + 13_000, intervalMs: 200 });
    const after = serverMemory(server);
    assert.ok(after.peakRssBytes - before >= TRIM_WORTH_BYTES, `the burst raised RSS by ${(after.peakRssBytes - before) >> 20} MiB: too little to test a trim`);
    assert.ok(near() || after.peakRssBytes - after.rssBytes >= TRIM_WORTH_BYTES, `before ${before >> 20} MiB, peak ${after.peakRssBytes >> 20} MiB, now ${after.rssBytes >> 20} MiB (${atEnd >> 20} MiB at the burst's end)`);
    await sleep(QUIET_WAIT_MS);
    assert.ok((await serverMetric(server, TRIMS)) <= 1, 'one burst, at most one trim');
  });
});
