// One memory budget for all connections (--max-buffer-memory): with a budget far smaller
// than the connections would like, every byte still arrives, what is lent never exceeds
// the budget, the connections that found it full waited instead of growing, and all of it
// is given back when they end.

import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { startAppSandbox, type AppSandbox } from '../support/app-sandbox';
import { rootSkipReason } from '../support/root';
import { cleanUpAndAssertNothingLeft } from '../support/server-process';
import { portForwardUrls, runEchoLoad } from '../support/spdy-load';

const skip = rootSkipReason();
const BUDGET = 2 << 20;

function metrics(base: string): Promise<string> {
  return new Promise((resolve, reject) => {
    request(`${base}/metrics`, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve(body));
    })
      .on('error', reject)
      .end();
  });
}

function value(text: string, name: string): number {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  assert.ok(m, `${name} missing from /metrics`);
  return Number(m[1]);
}

describe('buffer budget', { skip }, () => {
  let world: AppSandbox;

  before(async () => {
    world = await startAppSandbox(['echo'], ['--max-buffer-memory', `${BUDGET >> 20}Mi`], 'budget');
  });

  after(async () => {
    if (!world) return;
    assert.equal(await world.stop(), 0);
    cleanUpAndAssertNothingLeft(world.server, world.server.dir);
  });

  it('holds 32 bulk echoes to 2 MiB of growth: every byte back, the rest waited, all given back', async () => {
    const { server, cri, sandboxId } = world;
    const echo = world.apps[0]!;
    assert.equal(value(await metrics(server.streamBaseUrl), 'cri_portforward_buffer_budget_bytes'), BUDGET);
    let maxHeld = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        maxHeld = Math.max(maxHeld, value(await metrics(server.streamBaseUrl), 'cri_portforward_buffer_held_bytes'));
      }
    })();
    const urls = await portForwardUrls(cri, sandboxId, echo.port, 2);
    const summary = await runEchoLoad(urls, echo.port, 32, 4 << 20);
    sampling = false;
    await sampler;
    assert.equal(summary.clean, 32, JSON.stringify(summary));
    assert.equal(summary.bytesLost, 0);
    assert.ok(maxHeld > 0, 'connections grew while the budget had room');
    assert.ok(maxHeld <= BUDGET, `lent ${maxHeld} bytes of a ${BUDGET}-byte budget`);
    const after = await metrics(server.streamBaseUrl);
    assert.ok(value(after, 'cri_portforward_buffer_budget_waits_total') > 0, 'some connections found the budget full');
    assert.equal(value(after, 'cri_portforward_buffer_held_bytes'), 0, 'everything lent is given back');
  });
});
