// The private containerd harness itself (test/support/containerd/), on each release it
// runs (1.6 the system's, 1.7 and 2.1 unpacked from Debian packages): its CRI answers as
// that release, runs a sandbox from our own pause image in a CNI network namespace with the
// shim of its own release and the system's runc, survives a restart with its shims, and
// leaves nothing behind after removeAllSandboxes() and stop().

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { netnsPathFromInfo } from '../../src/sandbox/upstream';
import {
  containerdCacheDir,
  CONTAINERD_RELEASES,
  containerdPodConfig,
  containerdSkipReason,
  leftoversOf,
  POD_SUBNET,
  removeAllSandboxes,
  shimsOf,
  startContainerd,
  type PrivateContainerd,
} from '../support/containerd';
import { criClient, type CriTestClient } from '../support/cri-client';
import { mountsUnder } from '../support/mounts';
import { until } from '../support/until';

const skip = containerdSkipReason();

function isPause(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0] === '/pause';
  } catch {
    return false;
  }
}

for (const release of CONTAINERD_RELEASES) describe(`private containerd ${release} with CRI (test harness)`, { skip }, () => {
  let c: PrivateContainerd | undefined;
  let cri: CriTestClient | undefined;
  let sandboxId = '';
  let netnsPath = '';
  let pausePid = 0;

  before(async () => {
    c = await startContainerd({ release });
    cri = criClient(c.address);
  });

  after(async () => {
    cri?.close();
    // Only reached with something left if a test failed half-way.
    if (c) await c.stop();
  });

  it('serves CRI Version on its own socket under its temp dir', async () => {
    assert.ok(c && cri);
    assert.ok(isAbsolute(c.socket) && c.socket.startsWith(c.dir + '/'), c.socket);
    assert.equal(c.address, `unix://${c.socket}`);
    assert.match(c.dir, /^\/tmp\/cripf-containerd-/);
    const v = await cri.call('Version', { version: 'v1' });
    assert.equal(v.runtime_name, 'containerd');
    assert.ok(v.runtime_version.replace(/^v/, '').startsWith(`${release}.`), v.runtime_version);
    assert.equal(c.release, release);
    assert.equal(c.version, v.runtime_version);
    assert.equal(v.runtime_api_version, 'v1');
  });

  it('runs a sandbox from its pause image in a CNI network namespace', async () => {
    assert.ok(c && cri);
    const config = containerdPodConfig(c, 'harness', 'cripf-test');
    sandboxId = (await cri.call('RunPodSandbox', { config })).pod_sandbox_id;
    assert.match(sandboxId, /^[0-9a-f]{64}$/);
    const res = await cri.call('PodSandboxStatus', { pod_sandbox_id: sandboxId, verbose: true });
    assert.equal(res.status.state, 'SANDBOX_READY');
    // 1.6 fills in the namespace options; 1.7 and 2.1 echo the config's, none here (POD).
    if (release === '1.6') assert.equal(res.status.linux.namespaces.options.network, 'POD');
    else assert.equal(res.status.linux.namespaces.options, null);
    const prefix = POD_SUBNET.split('.').slice(0, 3).join('.') + '.';
    assert.ok(res.status.network.ip.startsWith(prefix), res.status.network.ip);

    // info["info"] JSON: every release has the OCI spec's
    // runtimeSpec.linux.namespaces[type=network].path; 2.x also sandboxMetadata.Metadata.NetNSPath.
    const info = JSON.parse(res.info.info);
    assert.equal(info.image, c.sandboxImage);
    assert.equal(info.processStatus, 'running');
    netnsPath = netnsPathFromInfo(res.info.info) ?? '';
    const specPath = info.runtimeSpec.linux.namespaces.find((n: { type: string }) => n.type === 'network')?.path;
    assert.equal(specPath, netnsPath);
    if (release.startsWith('2.')) assert.equal(info.sandboxMetadata.Metadata.NetNSPath, netnsPath);
    else assert.equal(info.sandboxMetadata, undefined);
    // The sandbox's config (what --port-policy reads its declared ports from) is there too.
    assert.deepEqual(info.config.metadata, { name: 'harness', uid: 'harness-uid', namespace: 'cripf-test' });
    // The system's runc, on the harness's private root.
    const runc: string = info.runtimeOptions.binary_name;
    assert.ok(runc.endsWith('/runc') && existsSync(runc) && !runc.startsWith(containerdCacheDir()), runc);
    assert.equal(info.runtimeOptions.root, join(c.dir, 'runc'));
    assert.ok(netnsPath.startsWith(join(c.dir, 'state') + '/'), `netns under the state dir: ${netnsPath}`);
    assert.ok(existsSync(netnsPath));
    assert.ok(mountsUnder(c.dir).includes(netnsPath), 'the netns is a mount');
    assert.notEqual(statSync(netnsPath).ino, statSync('/proc/self/ns/net').ino);
    const eth0 = execFileSync('nsenter', [`--net=${netnsPath}`, 'ip', '-o', '-4', 'addr', 'show', 'eth0'], {
      encoding: 'utf8',
    });
    assert.ok(eth0.includes(` ${res.status.network.ip}/24 `), eth0);

    pausePid = info.pid;
    // runc's start returns once it has told the container's init to exec; the exec of
    // /pause follows on its own (a busy node may still show "runc init" for a while).
    await until(`pid ${pausePid} to run /pause`, () => isPause(pausePid), { timeoutMs: 5_000 });
    const shims = shimsOf(c.dir);
    assert.equal(shims.length, 1, 'one shim');
    assert.equal(readlinkSync(`/proc/${shims[0]!.pid}/exe`), c.binaries.shim, "the shim of containerd's own release");
  });

  it('restarts containerd alone: the shim lives on and the sandbox is still there', async () => {
    assert.ok(c && cri);
    const oldPid = c.pid;
    const [shim] = shimsOf(c.dir);
    await c.restart();
    assert.notEqual(c.pid, oldPid);
    assert.deepEqual(shimsOf(c.dir), [shim]);
    assert.ok(isPause(pausePid));
    // The client from before the restart reconnects.
    const { items } = await cri.call('ListPodSandbox', {});
    assert.deepEqual(
      items.map((s: { id: string; state: string }) => [s.id, s.state]),
      [[sandboxId, 'SANDBOX_READY']],
    );
    assert.equal((await cri.call('Version', { version: 'v1' })).runtime_name, 'containerd');
  });

  it('removeAllSandboxes stops and removes every sandbox, and its shim exits', async () => {
    assert.ok(c && cri);
    assert.deepEqual(await removeAllSandboxes(c.address), [sandboxId]);
    assert.deepEqual((await cri.call('ListPodSandbox', {})).items, []);
    assert.equal(existsSync(netnsPath), false);
    assert.equal(isPause(pausePid), false);
    const { dir } = c;
    await until('the shim to exit', () => shimsOf(dir).length === 0, { timeoutMs: 5_000, intervalMs: 50 }).catch(() => undefined); // asserted next
    assert.deepEqual(shimsOf(c.dir), []);
  });

  it('stop() leaves no process, shim, mount, netns, bridge, cgroup, CNI cache or dir', async () => {
    assert.ok(c);
    const { pid, dir } = c;
    await c.stop();
    assert.equal(existsSync(`/proc/${pid}/cmdline`) && readFileSync(`/proc/${pid}/cmdline`).length > 0, false);
    assert.deepEqual(leftoversOf(c, [sandboxId]), []);
    assert.deepEqual(mountsUnder(dir), []);
    assert.equal(existsSync(dir), false);
  });
});
