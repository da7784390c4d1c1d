// The CRI RuntimeService of the embedded mode through a real grpc-js client on the unix
// socket of a real server process; sandboxes are real network namespaces.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { status } from '@grpc/grpc-js';
import { criClient, grpcError, HOST_NETWORK, podConfig, type CriTestClient } from '../support/cri-client';
import { startPodApp } from '../support/apps';
import { mountsUnder } from '../support/mounts';
import { namespaceInodeFds } from '../support/namespace-fds';
import { rootSkipReason } from '../support/root';
import { cleanUpAndAssertNothingLeft, startServer, type ServerProcess } from '../support/server-process';
import { portForwardUrls, runEchoLoad } from '../support/spdy-load';

const skip = rootSkipReason();

function netnsInode(path: string): number {
  return statSync(path).ino;
}

describe('CRI RuntimeService, embedded sandboxes', { skip }, () => {
  let server: ServerProcess;
  let cri: CriTestClient;

  before(async () => {
    server = await startServer();
    cri = criClient(server.criAddress);
  });

  after(async () => {
    cri?.close();
    if (!server) return;
    assert.equal(await server.stop(), 0);
    assert.deepEqual((await listAfterStop(server)).length, 0, 'every test removes its sandboxes');
    cleanUpAndAssertNothingLeft(server, server.dir);
  });

  it('answers Version and Status as kubelet expects', async () => {
    const version = await cri.call('Version', { version: '0.1.0' });
    assert.equal(version.runtime_name, 'cri-portforward');
    assert.equal(version.runtime_api_version, 'v1');
    assert.match(version.runtime_version, /^\d+\.\d+\.\d+/);
    const st = await cri.call('Status', {});
    const conditions = Object.fromEntries(st.status.conditions.map((c: any) => [c.type, c.status]));
    assert.deepEqual(conditions, { RuntimeReady: true, NetworkReady: true });
  });

  it('runs a sandbox in its own network namespace with lo up, and removes it', async () => {
    const { pod_sandbox_id: id } = await cri.call('RunPodSandbox', { config: podConfig('netns') });
    assert.match(id, /^[0-9a-f]{64}$/);
    const res = await cri.call('PodSandboxStatus', { pod_sandbox_id: id, verbose: true });
    assert.equal(res.status.state, 'SANDBOX_READY');
    assert.equal(res.status.linux.namespaces.options.network, 'POD');
    const info = JSON.parse(res.info.info);
    assert.equal(info.networkMode, 'POD');
    const netnsPath: string = info.netnsPath;
    assert.ok(netnsPath.startsWith(server.stateDir), netnsPath);
    assert.notEqual(netnsInode(netnsPath), netnsInode('/proc/self/ns/net'));
    const lo = execFileSync('nsenter', [`--net=${netnsPath}`, 'ip', '-o', 'link', 'show', 'lo'], { encoding: 'utf8' });
    assert.match(lo, /[<,]UP[,>]/);
    const links = execFileSync('nsenter', [`--net=${netnsPath}`, 'ip', '-o', 'link', 'show'], { encoding: 'utf8' });
    assert.equal(links.trim().split('\n').length, 1, 'a fresh namespace has lo only');

    await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
    assert.equal(existsSync(netnsPath), false);
    assert.deepEqual(mountsUnder(server.dir), []);
    assert.equal((await grpcError(cri.call('PodSandboxStatus', { pod_sandbox_id: id }))).code, status.NOT_FOUND);
    // Remove is idempotent, also for ids we never knew.
    await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
    await cri.call('RemovePodSandbox', { pod_sandbox_id: 'f'.repeat(64) });
  });

  it('lets go of the namespace a forward kept open when the sandbox is removed', async () => {
    const { pod_sandbox_id: id } = await cri.call('RunPodSandbox', { config: podConfig('forwarded') });
    const netnsPath: string = JSON.parse((await cri.call('PodSandboxStatus', { pod_sandbox_id: id, verbose: true })).info.info).netnsPath;
    const echo = await startPodApp(netnsPath, 'echo');
    try {
      const load = await runEchoLoad(await portForwardUrls(cri, id, echo.port, 1), echo.port, 4, 64);
      assert.equal(load.clean, 4);
      const pinned = statSync(netnsPath);
      assert.equal(namespaceInodeFds(pinned, server.proc.pid!), 1, 'the dials kept a handle on the namespace');
      await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
      assert.equal(namespaceInodeFds(pinned, server.proc.pid!), 0, 'no fd left on the removed namespace');
    } finally {
      await echo.stop();
    }
  });

  it('gives a host-network (NODE) sandbox no namespace of its own', async () => {
    const { pod_sandbox_id: id } = await cri.call('RunPodSandbox', { config: podConfig('hostnet', HOST_NETWORK) });
    const res = await cri.call('PodSandboxStatus', { pod_sandbox_id: id, verbose: true });
    assert.equal(res.status.linux.namespaces.options.network, 'NODE');
    assert.deepEqual(
      { netnsPath: JSON.parse(res.info.info).netnsPath, mode: JSON.parse(res.info.info).networkMode },
      { netnsPath: '', mode: 'NODE' },
    );
    const url = (await cri.call('PortForward', { pod_sandbox_id: id, port: [22] })).url;
    assert.match(url, /\/portforward\/[A-Za-z0-9_-]{22,}$/);
    await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
  });

  it('stops idempotently: NOTREADY, netns kept until Remove, PortForward refused', async () => {
    const { pod_sandbox_id: id } = await cri.call('RunPodSandbox', { config: podConfig('stopme') });
    const verbose = await cri.call('PodSandboxStatus', { pod_sandbox_id: id, verbose: true });
    const netnsPath = JSON.parse(verbose.info.info).netnsPath;
    await cri.call('StopPodSandbox', { pod_sandbox_id: id });
    await cri.call('StopPodSandbox', { pod_sandbox_id: id });
    const res = await cri.call('PodSandboxStatus', { pod_sandbox_id: id });
    assert.equal(res.status.state, 'SANDBOX_NOTREADY');
    assert.deepEqual(res.info, {}, 'info only when verbose');
    assert.ok(existsSync(netnsPath));
    const err = await grpcError(cri.call('PortForward', { pod_sandbox_id: id, port: [80] }));
    assert.equal(err.code, status.FAILED_PRECONDITION);
    assert.match(err.details, /not ready/);
    await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
    assert.equal(existsSync(netnsPath), false);
  });

  it('refuses a second sandbox with the same metadata while the first exists', async () => {
    const { pod_sandbox_id: id } = await cri.call('RunPodSandbox', { config: podConfig('dup') });
    const err = await grpcError(cri.call('RunPodSandbox', { config: podConfig('dup') }));
    assert.equal(err.code, status.ALREADY_EXISTS);
    assert.match(err.details, new RegExp(id));
    await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
  });

  it('filters ListPodSandbox by id prefix, state and label selector', async () => {
    const a = (await cri.call('RunPodSandbox', { config: podConfig('list-a', { labels: { tier: 'web', app: 'a' } }) })).pod_sandbox_id;
    const b = (await cri.call('RunPodSandbox', { config: podConfig('list-b', { labels: { tier: 'web', app: 'b' } }) })).pod_sandbox_id;
    await cri.call('StopPodSandbox', { pod_sandbox_id: b });
    const ids = async (filter: object | null): Promise<string[]> =>
      (await cri.call('ListPodSandbox', { filter })).items.map((s: any) => s.id).sort();
    assert.deepEqual(await ids(null), [a, b].sort());
    assert.deepEqual(await ids({ id: a }), [a]);
    assert.deepEqual(await ids({ id: a.slice(0, 12) }), [a]);
    assert.deepEqual(await ids({ state: { state: 'SANDBOX_READY' } }), [a]);
    assert.deepEqual(await ids({ state: { state: 'SANDBOX_NOTREADY' } }), [b]);
    assert.deepEqual(await ids({ label_selector: { tier: 'web' } }), [a, b].sort());
    assert.deepEqual(await ids({ label_selector: { tier: 'web', app: 'b' } }), [b]);
    assert.deepEqual(await ids({ label_selector: { tier: 'db' } }), []);
    const item = (await cri.call('ListPodSandbox', { filter: { id: a } })).items[0];
    assert.equal(item.metadata.name, 'list-a');
    assert.equal(item.state, 'SANDBOX_READY');
    assert.match(item.created_at, /^\d{19}$/);
    await cri.call('RemovePodSandbox', { pod_sandbox_id: a });
    await cri.call('RemovePodSandbox', { pod_sandbox_id: b });
  });

  it('validates PortForward: empty id, bad ports, unknown sandbox', async () => {
    const { pod_sandbox_id: id } = await cri.call('RunPodSandbox', { config: podConfig('pf') });
    const cases: [object, status, RegExp][] = [
      [{ pod_sandbox_id: '', port: [80] }, status.INVALID_ARGUMENT, /pod_sandbox_id must not be empty/],
      [{ pod_sandbox_id: id, port: [0] }, status.INVALID_ARGUMENT, /invalid port 0/],
      [{ pod_sandbox_id: id, port: [80, 65536] }, status.INVALID_ARGUMENT, /invalid port 65536/],
      [{ pod_sandbox_id: id, port: [-1] }, status.INVALID_ARGUMENT, /invalid port -1/],
      [{ pod_sandbox_id: 'e'.repeat(64), port: [80] }, status.NOT_FOUND, /not found/],
    ];
    for (const [req, code, message] of cases) {
      const err = await grpcError(cri.call('PortForward', req));
      assert.equal(err.code, code, JSON.stringify(req));
      assert.match(err.details, message);
    }
    const { url } = await cri.call('PortForward', { pod_sandbox_id: id, port: [] });
    assert.ok(url.startsWith(`${server.streamBaseUrl}/portforward/`), url);
    await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
  });

  it('validates the other sandbox RPCs', async () => {
    for (const method of ['StopPodSandbox', 'RemovePodSandbox', 'PodSandboxStatus']) {
      const err = await grpcError(cri.call(method, { pod_sandbox_id: '' }));
      assert.equal(err.code, status.INVALID_ARGUMENT, method);
    }
    assert.equal((await grpcError(cri.call('StopPodSandbox', { pod_sandbox_id: 'nope' }))).code, status.NOT_FOUND);
    const noMetadata = await grpcError(cri.call('RunPodSandbox', { config: { labels: {} } }));
    assert.equal(noMetadata.code, status.INVALID_ARGUMENT);
    const noName = await grpcError(cri.call('RunPodSandbox', { config: { metadata: { namespace: 'x' } } }));
    assert.equal(noName.code, status.INVALID_ARGUMENT);
  });

  it('answers UNIMPLEMENTED, naming the method, for every other RuntimeService and ImageService RPC', async () => {
    for (const path of [
      '/runtime.v1.RuntimeService/CreateContainer',
      '/runtime.v1.RuntimeService/Exec',
      '/runtime.v1.RuntimeService/ListContainers',
      '/runtime.v1.ImageService/ListImages',
      '/runtime.v1.ImageService/PullImage',
    ]) {
      const err = await callRawError(cri, path);
      assert.equal(err.code, status.UNIMPLEMENTED, path);
      assert.ok(err.details.includes(path), err.details);
    }
  });

  it('refuses the 1001st in-flight PortForward URL with RESOURCE_EXHAUSTED', async () => {
    const { pod_sandbox_id: id } = await cri.call('RunPodSandbox', { config: podConfig('many') });
    // Other tests of this suite issued a few tokens that are still in flight.
    let issued = 0;
    let err: any;
    for (; issued < 1001; issued++) {
      try {
        await cri.call('PortForward', { pod_sandbox_id: id, port: [80] });
      } catch (e) {
        err = e;
        break;
      }
    }
    assert.equal(err?.code, status.RESOURCE_EXHAUSTED);
    assert.match(err.details, /in-flight/);
    assert.ok(issued > 990 && issued <= 1000, `issued ${issued}`);
    await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
  });
});

async function callRawError(cri: CriTestClient, path: string) {
  const err = await cri.callRaw(path);
  assert.ok(err, `${path} must fail`);
  return err;
}

/** Sandbox records still on disk once the server has stopped. */
async function listAfterStop(server: ServerProcess): Promise<string[]> {
  return readdirSync(join(server.stateDir, 'sandboxes'));
}
