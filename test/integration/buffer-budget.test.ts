// One memory budget for all connections (--max-buffer-memory): with a budget far smaller
// than the connections would like, every byte still arrives, what is lent never exceeds
// the budget, the connections that found it full waited instead of growing, and all of it
// is given back when they end.

import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { startPodApp, type PodApp } from '../support/apps';
import { criClient, runSandbox, type CriTestClient } from '../support/cri-client';
import { rootSkipReason } from '../support/root';
import { cleanUpAndAssertNothingLeft, startServer, type ServerProcess } from '../support/server-process';
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
  let server: ServerProcess;
  let cri: CriTestClient;
  let sandboxId: string;
  let echo: PodApp;

  before(async () => {
    server = await startServer({ args: ['--max-buffer-memory', `${BUDGET >> 20}Mi`] });
    cri = criClient(server.criAddress);
    const sandbox = await runSandbox(cri, 'budget');
    sandboxId = sandbox.id;
    echo = await startPodApp(sandbox.netns, 'echo');
  });

  after(async () => {
    await echo?.stop();
    if (!server) return;
    await cri.call('RemovePodSandbox', { pod_sandbox_id: sandboxId });
    cri.close();
    assert.equal(await server.stop(), 0);
    cleanUpAndAssertNothingLeft(server, server.dir);
  });

  it('holds 32 bulk echoes to 2 MiB of growth: every byte back, the rest waited, all given back', async () => {
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
