// Sandbox records survive a restart of the server; a sandbox whose namespace vanished
// while we were down comes back NOTREADY.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { criClient, HOST_NETWORK, podConfig } from '../support/cri-client';
import { mountsUnder } from '../support/mounts';
import { rootSkipReason } from '../support/root';
import { cleanUpAndAssertNothingLeft, makeTempDir, startServer, type ServerProcess } from '../support/server-process';

const skip = rootSkipReason();

describe('restart', { skip }, () => {
  const dir = skip ? '' : makeTempDir();

  let server: ServerProcess | undefined;
  after(() => {
    if (dir) cleanUpAndAssertNothingLeft(server, dir);
  });

  it('keeps every sandbox across a restart; a vanished namespace comes back NOTREADY', async () => {
    server = await startServer({ dir });
    let cri = criClient(server.criAddress);
    const kept = (await cri.call('RunPodSandbox', { config: podConfig('kept', { annotations: { a: '1' } }) })).pod_sandbox_id;
    const lost = (await cri.call('RunPodSandbox', { config: podConfig('lost') })).pod_sandbox_id;
    const host = (await cri.call('RunPodSandbox', { config: podConfig('host', HOST_NETWORK) })).pod_sandbox_id;
    const stopped = (await cri.call('RunPodSandbox', { config: podConfig('stopped') })).pod_sandbox_id;
    await cri.call('StopPodSandbox', { pod_sandbox_id: stopped });
    const before = await cri.call('PodSandboxStatus', { pod_sandbox_id: kept, verbose: true });
    const lostPath = JSON.parse((await cri.call('PodSandboxStatus', { pod_sandbox_id: lost, verbose: true })).info.info).netnsPath;
    cri.close();
    assert.equal(await server.stop(), 0);

    // What a reboot does to a bind-mounted namespace: the mount is gone, the file stays.
    execFileSync('umount', [lostPath]);
    assert.ok(existsSync(lostPath));

    server = await startServer({ dir });
    cri = criClient(server.criAddress);
    const list = (await cri.call('ListPodSandbox', {})).items;
    const states = Object.fromEntries(list.map((s: any) => [s.id, s.state]));
    assert.deepEqual(states, {
      [kept]: 'SANDBOX_READY',
      [lost]: 'SANDBOX_NOTREADY',
      [host]: 'SANDBOX_READY',
      [stopped]: 'SANDBOX_NOTREADY',
    });
    const after = await cri.call('PodSandboxStatus', { pod_sandbox_id: kept, verbose: true });
    assert.deepEqual(after.status, before.status);
    assert.equal(after.info.info, before.info.info);
    assert.ok(server.logs.some((l) => l.msg === 'sandbox network namespace vanished; marking sandbox NOTREADY' && l.sandboxId === lost));

    for (const id of [kept, lost, host, stopped]) await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
    assert.deepEqual((await cri.call('ListPodSandbox', {})).items, []);
    assert.deepEqual(mountsUnder(dir), []);
    assert.equal(existsSync(lostPath), false);
    cri.close();
    assert.equal(await server.stop(), 0);
  });
});
