// Upgrading in place with SIGUSR2, with kubectl holding a session: the new process takes
// over the listeners, the unredeemed tokens and the session itself (a download in flight
// stays intact, an idle connection echoes again on the same TCP connection, kubectl opens
// new connections on its session), and the old one exits 0 at once. A session that cannot
// reach a clean boundary in time stays with the old process, which exits once it ends.
// (upgrade-sessions.test.ts moves every kind of session, three times in a row.)
// A new process that crashes while taking over changes nothing: the old one goes on
// serving everything, tokens included.

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { containerdPodConfig, containerdSkipReason, removeAllSandboxes, startContainerd, type PrivateContainerd } from '../support/containerd';
import { criClient, runSandbox, sandboxNetns, type CriTestClient } from '../support/cri-client';
import { FakeApiServer } from '../support/fake-apiserver';
import { startPortForward, type KubectlPortForward } from '../support/kubectl';
import { startPodApp, type PodApp } from '../support/apps';
import { startProxy, type ProxiedCri } from '../support/proxy';
import { rootSkipReason } from '../support/root';
import { cleanUpAndAssertNothingLeft, serverMetric, startServer, type ServerProcess } from '../support/server-process';
import { SpdyLoadSession } from '../support/spdy-load';
import { dial, downloadIntact, roundTrip } from '../support/tcp-client';
import { until } from '../support/until';

const skip = rootSkipReason();
const DOWNLOAD_BYTES = 512 << 20;

/** The pids that printed a ready line, in order. */
function readyPids(server: ServerProcess): number[] {
  return server.logs.filter((l) => l.msg === 'ready').map((l) => Number(l.pid));
}

function alive(pid: number): boolean {
  try {
    // A zombie (exited, not yet reaped by its new parent) counts as gone.
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** The upgrade's new process, once it has printed its ready line: its pid. */
async function newProcessReady(server: ServerProcess): Promise<number> {
  await until('the new process ready', () => readyPids(server).length === 2, { timeoutMs: 15_000 });
  return readyPids(server)[1]!;
}

/** Remove the sandboxes through the socket (the new process's by now), stop the new process, check nothing is left. */
async function endAfterUpgrade(server: ServerProcess | undefined, cri: CriTestClient | undefined, newPid: number): Promise<void> {
  if (cri) for (const s of (await cri.call('ListPodSandbox', {})).items) await cri.call('RemovePodSandbox', { pod_sandbox_id: s.id });
  cri?.close();
  if (newPid && alive(newPid)) process.kill(newPid, 'SIGTERM');
  if (newPid) await until('the new process to stop', () => !alive(newPid), { timeoutMs: 10_000 });
  if (server) cleanUpAndAssertNothingLeft(server, server.dir);
}

/** One echo through a fresh PortForward URL, with our SPDY client. */
async function echoThrough(url: string, port: number): Promise<void> {
  const session = await SpdyLoadSession.open(url);
  try {
    const result = await session.echo(port, 4096);
    assert.equal(result.end, 'fin', JSON.stringify(result));
    assert.ok(result.matches && result.echoed === 4096, JSON.stringify(result));
  } finally {
    await session.close();
  }
}

describe('upgrade in place (SIGUSR2)', { skip }, () => {
  let server: ServerProcess;
  let cri: CriTestClient;
  let api: FakeApiServer;
  let sandboxId: string;
  const apps: PodApp[] = [];
  let echo: PodApp;
  let source: PodApp;
  let newPid = 0;
  /** Stands in for systemd's notify socket: socat prints every datagram systemd-notify sends. */
  let notifyDir: string;
  let notifyReceiver: ChildProcess;
  let notified = '';

  before(async () => {
    notifyDir = mkdtempSync(join(tmpdir(), 'cripf-notify-'));
    const notifySocket = join(notifyDir, 'notify.sock');
    notifyReceiver = spawn('socat', ['-u', `UNIX-RECV:${notifySocket}`, '-'], { stdio: ['ignore', 'pipe', 'inherit'] });
    notifyReceiver.stdout!.on('data', (d: Buffer) => (notified += d.toString()));
    await until('the notify socket', () => existsSync(notifySocket));
    server = await startServer({ spawn: { env: { ...process.env, CRI_PORTFORWARD_TEST_TAKEOVER_CRASH: '', NOTIFY_SOCKET: notifySocket } } });
    cri = criClient(server.criAddress);
    api = await FakeApiServer.start({ criAddress: server.criAddress, namespace: 'test' });
    const pod = await runSandbox(cri, 'upgraded');
    sandboxId = pod.id;
    echo = await startPodApp(pod.netns, 'echo');
    source = await startPodApp(pod.netns, `source:${DOWNLOAD_BYTES}`);
    apps.push(echo, source);
  });

  after(async () => {
    for (const a of apps) await a.stop();
    await api?.close();
    // The sandbox is the new process's now: removed through the socket (its netns unmounted).
    if (cri) for (const s of (await cri.call('ListPodSandbox', {})).items) await cri.call('RemovePodSandbox', { pod_sandbox_id: s.id });
    cri?.close();
    for (const pid of readyPids(server ?? ({ logs: [] } as unknown as ServerProcess))) {
      if (alive(pid)) process.kill(pid, 'SIGTERM');
    }
    if (newPid) await until('the new process to stop', () => !alive(newPid), { timeoutMs: 10_000 });
    notifyReceiver?.kill();
    if (notifyDir) rmSync(notifyDir, { recursive: true, force: true });
    if (server) {
      await server.stop();
      cleanUpAndAssertNothingLeft(server, server.dir);
    }
  });

  it("hands over: kubectl's session moves to the new process, the old one exits 0; new calls and old tokens go to the new one", async () => {
    const oldPid = server.proc.pid!;
    const forward: KubectlPortForward = await startPortForward({ kubeconfig: api.kubeconfig(server.dir), pod: sandboxId, ports: [`0:${echo.port}`, `0:${source.port}`] });
    try {
      const [echoPort, sourcePort] = forward.localPorts as [number, number];
      const idle = await dial(echoPort);
      const echoed: Buffer[] = [];
      idle.on('data', (d: Buffer) => echoed.push(d));
      idle.write('before');
      await until('the idle connection echoes', () => Buffer.concat(echoed).toString() === 'before');
      const issuedBefore = (await cri.call('PortForward', { pod_sandbox_id: sandboxId, port: [echo.port] })).url as string;
      const download = downloadIntact(sourcePort, DOWNLOAD_BYTES);

      process.kill(oldPid, 'SIGUSR2');
      newPid = await newProcessReady(server);
      assert.notEqual(newPid, oldPid);
      await until('the old process handed over', () => server.logs.some((l) => l.msg === 'upgrade: handed over' && l.sessionsMoved === 1 && l.sessionsKept === 0));
      // kubectl's session is the new process's: the old one exits 0 with the download in flight.
      assert.equal(await server.exited, 0);

      // New calls reach the new process (a fresh CRI connection), and so does a token the old one issued.
      const fresh = criClient(server.criAddress);
      try {
        const issuedAfter = (await fresh.call('PortForward', { pod_sandbox_id: sandboxId, port: [echo.port] })).url as string;
        await echoThrough(issuedAfter, echo.port);
        await echoThrough(issuedBefore, echo.port);
        // kubectl's own token, redeemed by the old process, plus both: the counters carry over.
        assert.equal(await serverMetric(server, 'cri_portforward_tokens_redeemed_total'), 3, 'counted on from the old process');
      } finally {
        fresh.close();
      }

      // The new process serves kubectl's session: the download, the idle connection, new connections.
      await download.catch((err: unknown) => {
        throw new Error(`${String(err)}; kubectl said: ${forward.stderr()}`);
      });
      idle.write('after');
      await until('the idle connection echoes again', () => Buffer.concat(echoed).toString() === 'beforeafter');
      idle.destroy();
      assert.equal((await roundTrip(echoPort, Buffer.from('new connection'))).toString(), 'new connection');
      assert.equal(await serverMetric(server, 'cri_portforward_sessions_handed_over_total'), 1);
    } finally {
      await forward.stop();
    }
    assert.ok(alive(newPid));
    // systemd (Type=notify, NotifyAccess=all) was told each process's readiness, and follows the new one as MAINPID.
    await until('both readiness notes', () => notified.includes(`MAINPID=${newPid}`));
    assert.match(notified, new RegExp(`READY=1\\nMAINPID=${oldPid}`));
    assert.match(notified, new RegExp(`READY=1\\nMAINPID=${newPid}`));
    // kubectl again, now served by the new process.
    const again = await startPortForward({ kubeconfig: api.kubeconfig(server.dir), pod: sandboxId, ports: [`0:${echo.port}`] });
    try {
      assert.equal((await roundTrip(again.localPorts[0]!, Buffer.from('new process'))).toString(), 'new process');
    } finally {
      await again.stop();
    }
  });
});

describe('upgrade in place: a new process that fails', { skip }, () => {
  let server: ServerProcess;
  let cri: CriTestClient;
  let api: FakeApiServer;
  let sandboxId: string;
  let echo: PodApp;

  before(async () => {
    server = await startServer({ spawn: { env: { ...process.env, CRI_PORTFORWARD_TEST_TAKEOVER_CRASH: '1' } } });
    cri = criClient(server.criAddress);
    api = await FakeApiServer.start({ criAddress: server.criAddress, namespace: 'test' });
    const pod = await runSandbox(cri, 'kept');
    sandboxId = pod.id;
    echo = await startPodApp(pod.netns, 'echo');
  });

  after(async () => {
    await echo?.stop();
    await api?.close();
    if (cri) for (const s of (await cri.call('ListPodSandbox', {})).items) await cri.call('RemovePodSandbox', { pod_sandbox_id: s.id });
    cri?.close();
    if (server) {
      assert.equal(await server.stop(), 0);
      cleanUpAndAssertNothingLeft(server, server.dir);
    }
  });

  it('crashes while taking over: the old process goes on serving sessions, calls and its tokens', async () => {
    const forward = await startPortForward({ kubeconfig: api.kubeconfig(server.dir), pod: sandboxId, ports: [`0:${echo.port}`] });
    try {
      const issuedBefore = (await cri.call('PortForward', { pod_sandbox_id: sandboxId, port: [echo.port] })).url as string;
      process.kill(server.proc.pid!, 'SIGUSR2');
      await until('the failure logged', () => server.logs.some((l) => l.msg === 'upgrade failed; this process goes on serving'), { timeoutMs: 15_000 });
      assert.equal(readyPids(server).length, 1, 'no other process took over');
      assert.equal(await serverMetric(server, 'cri_portforward_handovers_total{result="failed"}'), 1);
      await echoThrough(issuedBefore, echo.port);
      await echoThrough((await cri.call('PortForward', { pod_sandbox_id: sandboxId, port: [echo.port] })).url, echo.port);
      assert.equal((await roundTrip(forward.localPorts[0]!, Buffer.from('kept'))).toString(), 'kept');
    } finally {
      await forward.stop();
    }
  });
});

describe('upgrade in place in proxy mode, in front of containerd 1.6', { skip: containerdSkipReason() }, () => {
  let containerd: PrivateContainerd;
  let p: ProxiedCri;
  let api: FakeApiServer;
  let sandboxId: string;
  let echo: PodApp;
  let newPid = 0;

  before(async () => {
    containerd = await startContainerd();
    p = await startProxy(containerd.address);
    api = await FakeApiServer.start({ criAddress: p.proxy.criAddress, namespace: 'test' });
    sandboxId = (await p.viaProxy.call('RunPodSandbox', { config: containerdPodConfig(containerd, 'proxied') })).pod_sandbox_id;
    echo = await startPodApp(await sandboxNetns(p.direct, sandboxId), 'echo');
  });

  after(async () => {
    await echo?.stop();
    await api?.close();
    if (newPid && alive(newPid)) process.kill(newPid, 'SIGTERM');
    if (newPid) await until('the new process to stop', () => !alive(newPid), { timeoutMs: 10_000 });
    if (containerd) await removeAllSandboxes(containerd.address);
    p?.viaProxy.close();
    p?.direct.close();
    if (p) {
      await p.proxy.stop();
      cleanUpAndAssertNothingLeft(p.proxy, p.proxy.dir);
    }
    await containerd?.stop();
  });

  it('hands over: the open kubectl session stays, CRI calls pass through the new process, the old one exits 0', async () => {
    const forward = await startPortForward({ kubeconfig: api.kubeconfig(p.proxy.dir), pod: sandboxId, ports: [`0:${echo.port}`] });
    try {
      assert.equal((await roundTrip(forward.localPorts[0]!, Buffer.from('before'))).toString(), 'before');
      process.kill(p.proxy.proc.pid!, 'SIGUSR2');
      newPid = await newProcessReady(p.proxy);
      const fresh = criClient(p.proxy.criAddress);
      try {
        // Passed through by the new process to containerd, and answered by it.
        assert.equal((await fresh.call('PodSandboxStatus', { pod_sandbox_id: sandboxId })).status.id, sandboxId);
        await echoThrough((await fresh.call('PortForward', { pod_sandbox_id: sandboxId, port: [echo.port] })).url, echo.port);
      } finally {
        fresh.close();
      }
      assert.equal((await roundTrip(forward.localPorts[0]!, Buffer.from('after'))).toString(), 'after');
    } finally {
      await forward.stop();
    }
    assert.equal(await p.proxy.exited, 0);
    assert.ok(alive(newPid));
  });
});

describe('upgrade in place: the old process stopped while it drains', { skip }, () => {
  let server: ServerProcess;
  let cri: CriTestClient;
  let newPid = 0;

  before(async () => {
    server = await startServer({ spawn: { env: { ...process.env, CRI_PORTFORWARD_TEST_TAKEOVER_CRASH: '' } } });
    cri = criClient(server.criAddress);
  });

  after(() => endAfterUpgrade(server, cri, newPid));

  it("keeps a session that cannot quiet (its app does not read), and leaves the CRI socket, which is the new process's, when SIGTERM ends it", async () => {
    const pod = await runSandbox(cri, 'draining');
    const stuck = await startPodApp(pod.netns, 'ignore');
    try {
      // Bytes queued for an app that never reads: the session never reaches a clean boundary.
      const session = await SpdyLoadSession.open((await cri.call('PortForward', { pod_sandbox_id: pod.id, port: [stuck.port] })).url);
      const sending = session.echo(stuck.port, 64 << 20).catch(() => undefined);
      await until('the pod side backed up', async () => (await serverMetric(server, 'cri_portforward_buffer_held_bytes')) > 0);
      process.kill(server.proc.pid!, 'SIGUSR2');
      newPid = await newProcessReady(server);
      await until('the old process handed over, keeping the session', () => server.logs.some((l) => l.msg === 'upgrade: handed over' && l.sessionsMoved === 0 && l.sessionsKept === 1));
      // Once handed over, the old process starts no other upgrade.
      process.kill(server.proc.pid!, 'SIGUSR2');
      await until('a second SIGUSR2 ignored', () => server.logs.some((l) => String(l.msg).startsWith('SIGUSR2 ignored: this process has handed over')));
      assert.ok(alive(server.proc.pid!), 'the old process drains the session it kept');
      assert.equal(await server.stop(), 0);
      await session.close();
      await sending;
      const fresh = criClient(server.criAddress);
      try {
        assert.equal((await fresh.call('Version', {})).runtime_name, 'cri-portforward', 'the new process answers on the socket path');
      } finally {
        fresh.close();
      }
    } finally {
      await stuck.stop();
    }
  });
});

describe('upgrade in place: the old process dies mid-handover', { skip }, () => {
  let server: ServerProcess;
  let cri: CriTestClient;
  let newPid = 0;

  before(async () => {
    server = await startServer({ spawn: { env: { ...process.env, CRI_PORTFORWARD_TEST_TAKEOVER_CRASH: '', CRI_PORTFORWARD_TEST_UPGRADE_DIE: '1' } } });
    cri = criClient(server.criAddress);
  });

  after(() => endAfterUpgrade(server, cri, newPid));

  it('killed after it stopped accepting: the new process takes over alone (listener and CRI socket)', async () => {
    const pod = await runSandbox(cri, 'orphaned');
    const echo = await startPodApp(pod.netns, 'echo');
    try {
      process.kill(server.proc.pid!, 'SIGUSR2');
      await server.exited;
      assert.equal(server.proc.signalCode, 'SIGKILL', 'the injected death');
      newPid = await newProcessReady(server);
      assert.ok(server.logs.some((l) => l.msg === 'upgrade: the old process went away before it released the CRI socket; taking over alone'));
      const fresh = criClient(server.criAddress);
      try {
        await echoThrough((await fresh.call('PortForward', { pod_sandbox_id: pod.id, port: [echo.port] })).url, echo.port);
      } finally {
        fresh.close();
      }
    } finally {
      await echo.stop();
    }
  });
});
