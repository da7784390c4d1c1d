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

  it('after a bulk burst RSS falls back from the peak (trimmed once quiet unless it already fell by itself)', async () => {
    const { server, cri, sandboxId } = world;
    const urls = await portForwardUrls(cri, sandboxId, world.apps[0]!.port, 2);
    const summary = await runEchoLoad(urls, world.apps[0]!.port, 32, 4 << 20);
    assert.equal(summary.clean, 32, JSON.stringify(summary));
    const atEnd = serverMemory(server).rssBytes;
    // RSS comes back from the peak: by the trim, or by itself when V8 and glibc already gave
    // the burst's pages back (then a trim would cost more than it frees, and none is done).
    const fellBack = (): boolean => {
      const m = serverMemory(server);
      return m.peakRssBytes - m.rssBytes >= 16 << 20;
    };
    await until('a trim, or RSS back by itself', async () => (await serverMetric(server, TRIMS)) === 1 || fellBack(), { timeoutMs: 15_000, intervalMs: 200 });
    await until('RSS back from the peak', () => fellBack(), { timeoutMs: 5_000, intervalMs: 200 }).catch(() => undefined);
    const after = serverMemory(server);
    assert.ok(fellBack(), `peak ${after.peakRssBytes >> 20} MiB, now ${after.rssBytes >> 20} MiB (${atEnd >> 20} MiB at the burst's end)`);
    await sleep(QUIET_WAIT_MS);
    assert.ok((await serverMetric(server, TRIMS)) <= 1, 'one burst, at most one trim');
  });
});
