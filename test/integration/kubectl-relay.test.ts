// The real kubectl port-forward against our server, through FakeApiServer (apiserver +
// kubelet's upgrade proxy). Host-network sandbox, so no root is needed; needs kubectl on PATH.
//
// kubectl dials the upgrade before it listens locally, so while our streaming server serves
// no port-forward protocol (it answers the relayed upgrade 400) kubectl exits with "error
// upgrading connection" and never prints "Forwarding from". Once SPDY/3.1 is served (101),
// the same test forwards a byte to an echo app and back.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { startPodApp, type PodApp } from '../support/apps';
import { criClient, HOST_NETWORK, podConfig, type CriTestClient } from '../support/cri-client';
import { FakeApiServer, type ApiRequest, type RelayedUpgrade } from '../support/fake-apiserver';
import { startPortForward, type KubectlPortForward } from '../support/kubectl';
import { cleanUpAndAssertNothingLeft, makeTempDir, startServer, type ServerProcess } from '../support/server-process';

function kubectlSkipReason(): string | false {
  try {
    execFileSync('kubectl', ['version', '--client'], { stdio: 'ignore', timeout: 10_000 });
    return false;
  } catch {
    return 'needs kubectl on PATH';
  }
}

/** Write one byte on a fresh connection to the local port; resolve with what comes back first. */
function echoOneByte(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('no echo through kubectl within 10 s'));
    }, 10_000);
    socket.once('data', (d: Buffer) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(d.toString());
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.write('x');
  });
}

interface Attempt {
  forward?: KubectlPortForward;
  failure?: Error;
  requests: ApiRequest[];
  upgrades: RelayedUpgrade[];
}

describe('kubectl port-forward through a fake apiserver', { skip: kubectlSkipReason() }, () => {
  let server: ServerProcess;
  let cri: CriTestClient;
  let api: FakeApiServer;
  let app: PodApp;
  let sandboxId: string;
  let kubeconfig: string;
  let dir: string | undefined;
  const forwards: KubectlPortForward[] = [];

  /** One kubectl run; what the apiserver saw during it. */
  async function attempt(env: Record<string, string> = {}): Promise<Attempt> {
    const firstRequest = api.requests.length;
    const firstUpgrade = api.upgrades.length;
    const result: Attempt = { requests: [], upgrades: [] };
    try {
      result.forward = await startPortForward({ kubeconfig, pod: sandboxId, ports: [`0:${app.port}`], env });
      forwards.push(result.forward);
    } catch (err) {
      result.failure = err as Error;
    }
    result.requests = api.requests.slice(firstRequest);
    result.upgrades = api.upgrades.slice(firstUpgrade);
    return result;
  }

  /** The relayed SPDY upgrade and kubectl's fate, whichever way our server answered it. */
  async function assertSpdyRelayed(run: Attempt): Promise<void> {
    const spdy = run.upgrades.filter((u) => u.method === 'POST');
    assert.equal(spdy.length, 1, `one POST upgrade relayed; kubectl: ${run.failure?.message ?? run.forward?.stderr()}`);
    const upgrade = spdy[0]!;
    assert.match(String(upgrade.headers['x-stream-protocol-version']), /portforward\.k8s\.io/);
    assert.equal(String(upgrade.headers.upgrade).toLowerCase(), 'spdy/3.1');
    assert.match(upgrade.path, new RegExp(`^/api/v1/namespaces/test/pods/${sandboxId}/portforward`));
    assert.match(upgrade.responseStatusLine ?? '(none)', /^HTTP\/1\.1 (101|400) /);

    if (upgrade.responseStatusLine!.startsWith('HTTP/1.1 400 ')) {
      // Refused upgrade: kubectl reports it and exits 1 before it ever listens; no crash.
      assert.ok(run.failure, 'kubectl must not forward after a refused upgrade');
      assert.match(run.failure.message, /exited with 1 before forwarding/);
      assert.match(run.failure.message, /error upgrading connection/);
      assert.doesNotMatch(run.failure.message, /panic|goroutine \d/);
      return;
    }
    // 101: kubectl forwards; a byte goes to the echo app in the sandbox and comes back.
    assert.ok(run.forward, `kubectl did not forward: ${run.failure?.message}`);
    assert.equal(run.forward.localPorts.length, 1);
    assert.equal(await echoOneByte(run.forward.localPorts[0]!), 'x');
    assert.doesNotMatch(run.forward.stderr(), /panic|goroutine \d/);
  }

  before(async () => {
    server = await startServer();
    cri = criClient(server.criAddress);
    sandboxId = (await cri.call('RunPodSandbox', { config: podConfig('kubectl', HOST_NETWORK) })).pod_sandbox_id;
    app = await startPodApp(null, 'echo');
    api = await FakeApiServer.start({ criAddress: server.criAddress, namespace: 'test' });
    dir = makeTempDir('cripf-kubectl-');
    kubeconfig = api.kubeconfig(dir);
  });

  after(async () => {
    for (const forward of forwards) await forward.stop();
    await app?.stop();
    await api?.close();
    cri?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
    if (!server) return;
    assert.equal(await server.stop(), 0);
    cleanUpAndAssertNothingLeft(server, server.dir);
  });

  it('resolves the pod, then relays its SPDY upgrade to our streaming server and our answer back', async () => {
    const run = await attempt();
    const seen = run.requests.map((r) => `${r.method} ${r.path.split('?')[0]} ${r.answer}`);
    const podPath = `/api/v1/namespaces/test/pods/${sandboxId}`;
    assert.ok(seen.includes(`GET ${podPath} 200`), seen.join('\n'));
    assert.equal(seen.at(-1), `POST ${podPath}/portforward relayed`, seen.join('\n'));
    // KUBECTL_PORT_FORWARD_WEBSOCKETS=false: no WebSocket attempt.
    assert.ok(!run.requests.some((r) => r.method === 'GET' && r.path.includes('/portforward')), seen.join('\n'));
    await assertSpdyRelayed(run);
  });

  it('with WebSockets on, kubectl falls back to plain SPDY after the 403 to its WebSocket upgrade', async () => {
    const run = await attempt({ KUBECTL_PORT_FORWARD_WEBSOCKETS: 'true' });
    const portforward = run.requests.filter((r) => r.path.includes('/portforward'));
    assert.deepEqual(
      portforward.map((r) => `${r.method} ${r.answer}`),
      ['GET 403', 'POST relayed'],
    );
    await assertSpdyRelayed(run);
  });
});
