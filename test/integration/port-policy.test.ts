// --port-policy and the pod annotations, end to end with real clients into real namespaces:
// kubectl over plain SPDY and over its WebSocket tunnel (PortForward names no ports: each
// connection is judged when kubectl opens its streams), @kubernetes/client-node over
// WebSocket v4 (PortForward names the port: judged up front). A closed port never reaches
// the app (the probe app sees no connection) and the session goes on; the refusal is
// logged with the pod, the peer and the token's fingerprint, and counted.

import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { grpcError, podConfig, sandboxNetns } from '../support/cri-client';
import { endWorld, kubectl, metric, world, type World } from '../support/kubectl-world';
import { startProbeApp, type ProbeApp } from '../support/probe-app';
import { rootSkipReason } from '../support/root';
import { hasLogged } from '../support/server-process';
import { collect, dial, roundTrip } from '../support/tcp-client';
import { until } from '../support/until';

const skip = rootSkipReason();
const PORTS = 'cri-portforward.io/ports';
const ACCESS = 'cri-portforward.io/port-forward';

type K8s = typeof import('@kubernetes/client-node', { with: { 'resolution-mode': 'import' } });

interface Pod {
  id: string;
  netns: string;
  /** Probe apps by the port they listen on inside the pod. */
  apps: Map<number, ProbeApp>;
}

/** A sandbox with these declared ports and annotations, and a probe app on each of `listen`. */
async function pod(w: World, name: string, spec: { tcp?: number[]; udp?: number[]; annotations?: Record<string, string> }, listen: number[], probes: ProbeApp[]): Promise<Pod> {
  const port_mappings = [
    ...(spec.tcp ?? []).map((p) => ({ protocol: 'TCP', container_port: p })),
    ...(spec.udp ?? []).map((p) => ({ protocol: 'UDP', container_port: p })),
  ];
  const config = podConfig(name, { port_mappings, annotations: spec.annotations ?? {} });
  const id: string = (await w.cri.call('RunPodSandbox', { config })).pod_sandbox_id;
  const netns = (await sandboxNetns(w.cri, id))!;
  const apps = new Map<number, ProbeApp>();
  for (const port of listen) {
    const probe = await startProbeApp(netns, port);
    probes.push(probe);
    apps.set(port, probe);
  }
  return { id, netns, apps };
}

/** How long kubectl may take to close the local side of a refused connection. */
const REFUSAL_WITHIN_MS = 10_000;

/** A connection through kubectl to a closed port: closed with nothing back, and the app never sees it. */
async function assertRefusedThroughKubectl(localPort: number, app: ProbeApp): Promise<void> {
  const socket = await dial(localPort);
  const received = collect(socket);
  socket.write('hello');
  let timer: NodeJS.Timeout | undefined;
  const open = new Promise<'still open'>((resolve) => (timer = setTimeout(() => resolve('still open'), REFUSAL_WITHIN_MS)));
  const outcome = await Promise.race([received, open]).finally(() => clearTimeout(timer));
  socket.destroy();
  assert.notEqual(outcome, 'still open', `kubectl kept the connection open ${REFUSAL_WITHIN_MS} ms (echoed: the port was not closed)`);
  assert.equal((outcome as { data: Buffer }).data.length, 0, 'nothing comes back from a closed port');
  assert.deepEqual(app.events, [], 'the app was never dialled');
}

describe('port policy: declared', { skip }, () => {
  let w: World;
  const probes: ProbeApp[] = [];
  let web: Pod;
  let annotated: Pod;
  let denied: Pod;

  before(async () => {
    // The fake apiserver takes WebSocket upgrades (the tunnel, client-node); kubectl speaks
    // plain SPDY unless a test sets w.websocket.
    w = await world(['--port-policy', 'declared'], true);
    w.websocket = false;
    // web declares TCP 8080 (and UDP 5353); 9090 is an admin endpoint on localhost.
    web = await pod(w, 'web', { tcp: [8080], udp: [5353] }, [8080, 9090, 5353], probes);
    annotated = await pod(w, 'annotated', { annotations: { [PORTS]: '9000-9010, 7000' } }, [9005, 8080], probes);
    denied = await pod(w, 'denied', { tcp: [8080], annotations: { [ACCESS]: 'deny' } }, [8080], probes);
  });

  after(async () => {
    await endWorld(w);
    for (const p of probes) await p.stop();
  });

  it('kubectl over SPDY: a declared port forwards; an undeclared one is reset, unseen by the app, and the session goes on', async () => {
    const forward = await kubectl(w, web.id, [8080, 9090, 5353]);
    const [open, admin, udpOnly] = forward.localPorts as [number, number, number];
    assert.equal((await roundTrip(open, Buffer.from('declared'))).toString(), 'declared');
    await assertRefusedThroughKubectl(admin, web.apps.get(9090)!);
    await assertRefusedThroughKubectl(udpOnly, web.apps.get(5353)!);
    assert.equal((await roundTrip(open, Buffer.from('still up'))).toString(), 'still up', 'the session goes on');
    assert.equal(forward.proc.exitCode, null, 'kubectl keeps running');
    assert.ok((await metric(w, 'cri_portforward_policy_denied_total{reason="not-declared"}')) >= 2);
    // The audit trail: who, which pod, which port, which token (its fingerprint only).
    await until('the refusal logged', () =>
      hasLogged(w.server, { msg: 'forward refused: port policy', port: 9090, podNamespace: 'test', podName: 'web', podUid: 'uid-web', reason: 'not-declared' }),
    );
    const refusal = w.server.logs.find((l) => l.msg === 'forward refused: port policy' && l.port === 9090)!;
    assert.match(String(refusal.err), /port 9090 of pod test\/web is closed to port-forward: --port-policy=declared .*TCP 8080/);
    assert.match(String(refusal.peer), /^127\.0\.0\.1:\d+$/);
    const issued = w.server.logs.find((l) => l.msg === 'port-forward issued' && l.sandboxId === web.id)!;
    assert.equal(refusal.token, issued.token, 'the forward and its PortForward share the token fingerprint');
    assert.match(String(issued.token), /^[A-Za-z0-9_-]{12}$/);
    const ended = await until('the forward-ended line', () => w.server.logs.find((l) => l.msg === 'forward ended' && l.port === 8080 && l.podName === 'web'));
    assert.equal(ended.bytesToPod, 'declared'.length);
    assert.equal(ended.token, issued.token);
    await forward.stop();
  });

  it('kubectl over its WebSocket tunnel: the ports annotation opens a port; others stay closed', async () => {
    w.websocket = true;
    try {
      const upgradesBefore = w.api.upgrades.length;
      const forward = await kubectl(w, annotated.id, [9005, 8080]);
      const [listed, unlisted] = forward.localPorts as [number, number];
      assert.deepEqual(
        w.api.upgrades.slice(upgradesBefore).map((u) => String(u.headers['sec-websocket-protocol'] ?? '')),
        ['SPDY/3.1+portforward.k8s.io'],
        'kubectl tunnels SPDY in a WebSocket',
      );
      assert.equal((await roundTrip(listed, Buffer.from('listed'))).toString(), 'listed');
      await assertRefusedThroughKubectl(unlisted, annotated.apps.get(8080)!);
      assert.equal((await roundTrip(listed, Buffer.from('again'))).toString(), 'again');
      await forward.stop();
    } finally {
      w.websocket = false;
    }
  });

  it('port-forward: deny closes the whole pod: kubectl is refused at the upgrade, saying why', async () => {
    await assert.rejects(kubectl(w, denied.id, [8080]), /closed to port-forward by its annotation cri-portforward\.io\/port-forward=deny/);
    assert.deepEqual(denied.apps.get(8080)!.events, []);
    assert.ok((await metric(w, 'cri_portforward_policy_denied_total{reason="pod-denies"}')) >= 1);
  });

  it('PortForward naming ports (crictl, kubelet for WebSocket) is judged up front: PERMISSION_DENIED saying how to open the port', async () => {
    const err = await grpcError(w.cri.call('PortForward', { pod_sandbox_id: web.id, port: [8080, 9090] }));
    assert.equal(err.code, 7, 'PERMISSION_DENIED');
    assert.match(err.details, /port 9090 of pod test\/web is closed to port-forward.*declare it as a containerPort in the pod spec or list it in the annotation cri-portforward\.io\/ports/);
    assert.match((await w.cri.call('PortForward', { pod_sandbox_id: web.id, port: [8080] })).url, /\/portforward\//);
    assert.match((await w.cri.call('PortForward', { pod_sandbox_id: annotated.id, port: [7000, 9010] })).url, /\/portforward\//);
  });

  it('@kubernetes/client-node: a declared port echoes; an undeclared one is refused before the upgrade', async () => {
    const k8s: K8s = await import('@kubernetes/client-node');
    const kc = new k8s.KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'fake', server: w.api.url, skipTLSVerify: true }],
      users: [{ name: 'fake' }],
      contexts: [{ name: 'fake', cluster: 'fake', user: 'fake', namespace: 'test' }],
      currentContext: 'fake',
    });
    const output = new PassThrough();
    const input = new PassThrough();
    const ws = (await new k8s.PortForward(kc).portForward('test', web.id, [8080], output, new PassThrough(), input)) as unknown as import('ws').WebSocket;
    const echoed = new Promise<string>((resolve) => output.once('data', (d: Buffer) => resolve(d.toString())));
    input.write('client-node');
    assert.equal(await echoed, 'client-node');
    input.end();
    await new Promise((resolve) => ws.once('close', resolve));

    const requests = w.api.requests.length;
    await assert.rejects(new k8s.PortForward(kc).portForward('test', web.id, [9090], new PassThrough(), new PassThrough(), new PassThrough()));
    const answer = w.api.requests.slice(requests).find((r) => r.path.includes('ports=9090'));
    assert.equal(answer?.answer, 500, 'kubelet answers a failed PortForward with 500 and its message');
    assert.equal(web.apps.get(9090)!.events.length, 0);
  });

  it('a malformed annotation is refused at RunPodSandbox, naming the annotation and the value', async () => {
    for (const [key, value, why] of [
      [PORTS, '80-', /"80-" is not a port or a range/],
      [PORTS, '70000', /70000 is outside 1-65535/],
      [PORTS, '9010-9000', /ends before it starts/],
      [ACCESS, 'nope', /it must be "deny" or "allow"/],
    ] as const) {
      const err = await grpcError(w.cri.call('RunPodSandbox', { config: podConfig(`bad-${value}`, { annotations: { [key]: value } }) }));
      assert.equal(err.code, 3, `INVALID_ARGUMENT for ${key}=${value}`);
      assert.ok(err.details.includes(`annotation ${key}="${value}" is malformed`), err.details);
      assert.match(err.details, why);
    }
  });

  it('keeps the declared ports and annotations in the sandbox (verbose status, as containerd)', async () => {
    const status = await w.cri.call('PodSandboxStatus', { pod_sandbox_id: annotated.id, verbose: true });
    assert.equal(status.status.annotations[PORTS], '9000-9010, 7000');
    const info = JSON.parse(status.info.info) as { config: { port_mappings: unknown[]; annotations: Record<string, string> } };
    assert.deepEqual(info.config.annotations, { [PORTS]: '9000-9010, 7000' });
    const webInfo = JSON.parse((await w.cri.call('PodSandboxStatus', { pod_sandbox_id: web.id, verbose: true })).info.info) as { config: { port_mappings: unknown[] } };
    assert.deepEqual(webInfo.config.port_mappings, [
      { protocol: 'TCP', container_port: 8080, host_port: 0, host_ip: '' },
      { protocol: 'UDP', container_port: 5353, host_port: 0, host_ip: '' },
    ]);
  });
});

describe('port policy: any (the default)', { skip }, () => {
  let w: World;
  const probes: ProbeApp[] = [];

  before(async () => {
    w = await world([]);
  });

  after(async () => {
    await endWorld(w);
    for (const p of probes) await p.stop();
  });

  it('forwards an undeclared port as before; deny still closes a pod', async () => {
    const plain = await pod(w, 'plain', { tcp: [8080] }, [9090], probes);
    const forward = await kubectl(w, plain.id, [9090]);
    assert.equal((await roundTrip(forward.localPorts[0]!, Buffer.from('any'))).toString(), 'any');
    await forward.stop();
    const denied = await pod(w, 'closed', { annotations: { [ACCESS]: 'deny' } }, [], probes);
    const err = await grpcError(w.cri.call('PortForward', { pod_sandbox_id: denied.id, port: [] }));
    assert.equal(err.code, 7);
    assert.match(err.details, /pod test\/closed is closed to port-forward by its annotation/);
  });
});
