// Giving memory back once quiet, but only when a burst left something worth giving back:
// the trim's full collection makes the next session re-compile its data path, so a small
// session is not followed by one, while a bulk burst is, and RSS falls back from its peak.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAppSandbox, type AppSandbox } from '../support/app-sandbox';
import { rootSkipReason } from '../support/root';
import { cleanUpAndAssertNothingLeft, serverMemory, serverMetric } from '../support/server-process';
import { portForwardUrls, runEchoLoad } from '../support/spdy-load';
import { until } from '../support/until';

const skip = rootSkipReason();
const TRIMS = 'cri_portforward_memory_trims_total';
/** The server waits 2 s of quiet; this leaves room for a loaded machine's late timer. */
const QUIET_WAIT_MS = 4_000;

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

  it('trims once quiet after a bulk burst, and RSS falls back from the peak', async () => {
    const { server, cri, sandboxId } = world;
    const urls = await portForwardUrls(cri, sandboxId, world.apps[0]!.port, 2);
    const summary = await runEchoLoad(urls, world.apps[0]!.port, 32, 4 << 20);
    assert.equal(summary.clean, 32, JSON.stringify(summary));
    const atEnd = serverMemory(server).rssBytes;
    await until('a trim', async () => (await serverMetric(server, TRIMS)) === 1, { timeoutMs: 15_000, intervalMs: 200 });
    const trimmed = serverMemory(server);
    assert.ok(trimmed.peakRssBytes - trimmed.rssBytes >= 16 << 20, `peak ${trimmed.peakRssBytes >> 20} MiB, after the trim ${trimmed.rssBytes >> 20} MiB (${atEnd >> 20} MiB at the burst's end)`);
    await sleep(QUIET_WAIT_MS);
    assert.equal(await serverMetric(server, TRIMS), 1, 'one burst, one trim');
  });
});
