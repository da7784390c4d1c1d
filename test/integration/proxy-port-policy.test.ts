// --port-policy declared in proxy mode, in front of a real containerd (each release the
// harness runs: 1.6, 1.7, 2.1): the declared ports come from containerd's verbose
// PodSandboxStatus (its `config.port_mappings`), the annotations from the status. Sandboxes are made through our socket with port_mappings,
// as kubelet makes them; kubectl reaches the declared port and not the other.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  CONTAINERD_RELEASES,
  containerdPodConfig,
  containerdSkipReason,
  removeAllSandboxes,
  startContainerd,
  type PrivateContainerd,
} from '../support/containerd';
import { grpcError, sandboxNetns } from '../support/cri-client';
import { FakeApiServer } from '../support/fake-apiserver';
import { startPortForward, type KubectlPortForward } from '../support/kubectl';
import { startProbeApp, type ProbeApp } from '../support/probe-app';
import { startProxy, stopProxy, type ProxiedCri } from '../support/proxy';
import { hasLogged } from '../support/server-process';
import { collect, dial, roundTrip } from '../support/tcp-client';
import { until } from '../support/until';

const skip = containerdSkipReason();

for (const release of CONTAINERD_RELEASES) describe(`port policy in proxy mode, in front of containerd ${release}`, { skip }, () => {
  let containerd: PrivateContainerd;
  let p: ProxiedCri;
  let api: FakeApiServer;
  let sandboxId: string;
  const apps: ProbeApp[] = [];
  const forwards: KubectlPortForward[] = [];

  before(async () => {
    containerd = await startContainerd({ release });
    p = await startProxy(containerd.address, ['--port-policy', 'declared']);
    api = await FakeApiServer.start({ criAddress: p.proxy.criAddress, namespace: 'test' });
    const config = { ...containerdPodConfig(containerd, 'web'), port_mappings: [{ protocol: 'TCP', container_port: 8080, host_port: 0 }] };
    sandboxId = (await p.viaProxy.call('RunPodSandbox', { config })).pod_sandbox_id;
    const netns = (await sandboxNetns(p.direct, sandboxId))!;
    for (const port of [8080, 9090]) apps.push(await startProbeApp(netns, port));
  });

  after(async () => {
    for (const f of forwards) await f.stop();
    for (const a of apps) await a.stop();
    await api?.close();
    if (containerd) await removeAllSandboxes(containerd.address);
    await stopProxy(p);
    await containerd?.stop();
  });

  it('PortForward: the declared port gets a URL, an undeclared one PERMISSION_DENIED naming the declared ones', async () => {
    assert.match((await p.viaProxy.call('PortForward', { pod_sandbox_id: sandboxId, port: [8080] })).url, /\/portforward\//);
    const err = await grpcError(p.viaProxy.call('PortForward', { pod_sandbox_id: sandboxId, port: [9090] }));
    assert.equal(err.code, 7);
    assert.match(err.details, /port 9090 of pod test\/web is closed to port-forward: .*it declares TCP 8080/);
  });

  it('kubectl over SPDY: the declared port echoes; the undeclared one is reset before the app sees it', async () => {
    const forward = await startPortForward({ kubeconfig: api.kubeconfig(p.proxy.dir), pod: sandboxId, ports: ['0:8080', '0:9090'] });
    forwards.push(forward);
    const [declared, undeclared] = forward.localPorts as [number, number];
    assert.equal((await roundTrip(declared, Buffer.from('containerd'))).toString(), 'containerd');
    const socket = await dial(undeclared);
    const received = collect(socket);
    socket.write('hello');
    const { data } = await received;
    socket.destroy();
    assert.equal(data.length, 0);
    assert.deepEqual(apps[1]!.events, [], 'the undeclared app was never dialled');
    assert.equal((await roundTrip(declared, Buffer.from('again'))).toString(), 'again');
    await until('the refusal logged with the pod', () =>
      hasLogged(p.proxy, { msg: 'forward refused: port policy', port: 9090, podNamespace: 'test', podName: 'web', podUid: 'web-uid' }),
    );
  });

  it('a deny annotation in the sandbox closes it, read from containerd', async () => {
    const config = { ...containerdPodConfig(containerd, 'closed'), annotations: { 'cri-portforward.io/port-forward': 'deny' } };
    const id = (await p.viaProxy.call('RunPodSandbox', { config })).pod_sandbox_id;
    const err = await grpcError(p.viaProxy.call('PortForward', { pod_sandbox_id: id, port: [] }));
    assert.equal(err.code, 7);
    assert.match(err.details, /pod test\/closed is closed to port-forward by its annotation/);
  });

  it('a malformed ports annotation (which containerd accepted) closes the pod, naming the annotation and the value', async () => {
    const config = { ...containerdPodConfig(containerd, 'typo'), annotations: { 'cri-portforward.io/ports': '8080-' } };
    const id = (await p.viaProxy.call('RunPodSandbox', { config })).pod_sandbox_id;
    const err = await grpcError(p.viaProxy.call('PortForward', { pod_sandbox_id: id, port: [8080] }));
    assert.equal(err.code, 9, 'FAILED_PRECONDITION');
    assert.match(err.details, /pod test\/typo is closed to port-forward: its annotation cri-portforward\.io\/ports="8080-" is malformed: "8080-" is not a port/);
  });
});
