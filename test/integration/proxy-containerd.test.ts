// Proxy mode in front of a real containerd 1.6 (a private instance, test/support/containerd.ts):
// every CRI call through our socket answers as containerd's own; PortForward gives our URL;
// kubectl (plain SPDY and the default WebSocket tunnel) reaches an app in the containerd
// sandbox's network namespace; a containerd restart does not disturb a running forward.

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { startPodApp, type PodApp } from '../support/apps';
import { containerdSkipReason, removeAllSandboxes, startContainerd, type PrivateContainerd } from '../support/containerd';
import { criClient, grpcError, type CriTestClient } from '../support/cri-client';
import { FakeApiServer } from '../support/fake-apiserver';
import { startPortForward, type KubectlPortForward } from '../support/kubectl';
import { cleanUpAndAssertNothingLeft, startServer, type ServerProcess } from '../support/server-process';
import { dial, randomPayload, roundTrip, sha256 } from '../support/tcp-client';

const skip = containerdSkipReason();

/** A raw call: request bytes in, response bytes (or the status) out, nothing decoded. */
function rawUnary(address: string, path: string, request: Buffer): Promise<{ response?: Buffer; error?: grpc.ServiceError }> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  return new Promise((resolve) => {
    client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, request, { deadline: Date.now() + 10_000 }, (error, response) => {
      client.close();
      resolve(error ? { error } : { response: response! });
    });
  });
}

function withoutTimestamps(value: any): any {
  const copy = structuredClone(value);
  delete copy.timestamp;
  return copy;
}

describe('proxy mode in front of containerd 1.6', { skip }, () => {
  let containerd: PrivateContainerd;
  let proxy: ServerProcess;
  let viaProxy: CriTestClient;
  let direct: CriTestClient;
  let api: FakeApiServer;
  let sandboxId: string;
  let netnsPath: string;
  let echo: PodApp;
  const forwards: KubectlPortForward[] = [];

  before(async () => {
    containerd = await startContainerd();
    proxy = await startServer({ args: ['--upstream', containerd.address] });
    viaProxy = criClient(proxy.criAddress);
    direct = criClient(containerd.address);
    api = await FakeApiServer.start({ criAddress: proxy.criAddress, namespace: 'test', refuseWebSocket: false });
  });

  after(async () => {
    for (const f of forwards) await f.stop();
    await echo?.stop();
    await api?.close();
    if (containerd) await removeAllSandboxes(containerd.address);
    viaProxy?.close();
    direct?.close();
    if (proxy) {
      assert.equal(await proxy.stop(), 0);
      cleanUpAndAssertNothingLeft(proxy, proxy.dir);
    }
    await containerd?.stop();
  });

  it("answers Version, Status and the sandbox RPCs exactly as containerd's own socket does", async () => {
    assert.deepEqual(await viaProxy.call('Version', { version: 'v1' }), await direct.call('Version', { version: 'v1' }));
    const status = await viaProxy.call('Status', { verbose: false });
    assert.deepEqual(status, await direct.call('Status', { verbose: false }));
    const config = {
      metadata: { name: 'web', namespace: 'test', uid: 'web-uid', attempt: 0 },
      labels: { app: 'web' },
      log_directory: join(containerd.dir, 'pod-logs'),
      linux: {},
    };
    sandboxId = (await viaProxy.call('RunPodSandbox', { config })).pod_sandbox_id;
    const through = await viaProxy.call('PodSandboxStatus', { pod_sandbox_id: sandboxId, verbose: true });
    assert.deepEqual(withoutTimestamps(through), withoutTimestamps(await direct.call('PodSandboxStatus', { pod_sandbox_id: sandboxId, verbose: true })));
    netnsPath = JSON.parse(through.info.info).runtimeSpec.linux.namespaces.find((n: any) => n.type === 'network').path;
    const filter = { filter: { label_selector: { app: 'web' } } };
    assert.deepEqual(await viaProxy.call('ListPodSandbox', filter), await direct.call('ListPodSandbox', filter));
    // Raw bytes too: nothing is decoded on the way.
    const listRequest = Buffer.alloc(0);
    const rawThrough = await rawUnary(proxy.criAddress, '/runtime.v1.RuntimeService/ListPodSandbox', listRequest);
    const rawDirect = await rawUnary(containerd.address, '/runtime.v1.RuntimeService/ListPodSandbox', listRequest);
    assert.deepEqual(rawThrough.response, rawDirect.response);
  });

  it('passes an image RPC, a server-streaming RPC and error statuses through unchanged', async () => {
    const images = await rawUnary(proxy.criAddress, '/runtime.v1.ImageService/ListImages', Buffer.alloc(0));
    assert.deepEqual(images, await rawUnary(containerd.address, '/runtime.v1.ImageService/ListImages', Buffer.alloc(0)));
    assert.ok(images.response!.length > 0, 'the pause image is listed');
    const notFound = await grpcError(viaProxy.call('PodSandboxStatus', { pod_sandbox_id: 'nope' }));
    const notFoundDirect = await grpcError(direct.call('PodSandboxStatus', { pod_sandbox_id: 'nope' }));
    assert.deepEqual([notFound.code, notFound.details], [notFoundDirect.code, notFoundDirect.details]);
    // GetContainerEvents is server-streaming (containerd 1.6 answers it UNIMPLEMENTED): same answer.
    const events = async (address: string): Promise<[number, string]> => {
      const client = new grpc.Client(address, grpc.credentials.createInsecure());
      const call = client.makeServerStreamRequest('/runtime.v1.RuntimeService/GetContainerEvents', (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), { deadline: Date.now() + 2000 });
      call.on('data', () => undefined);
      call.on('error', () => undefined); // the status event below carries it
      const st = await new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
      client.close();
      return [st.code, st.details];
    };
    assert.deepEqual(await events(proxy.criAddress), await events(containerd.address));
  });

  it('answers PortForward with our URL', async () => {
    const { url } = await viaProxy.call('PortForward', { pod_sandbox_id: sandboxId, port: [8080] });
    assert.ok(url.startsWith(`${proxy.streamBaseUrl}/portforward/`), url);
  });

  for (const transport of ['spdy', 'default'] as const) {
    it(`kubectl (${transport === 'spdy' ? 'plain SPDY' : 'WebSocket tunnel'}) reaches the containerd sandbox: 16 x 1 MiB echo`, async () => {
      echo ??= await startPodApp(netnsPath, 'echo');
      const forward = await startPortForward({ kubeconfig: api.kubeconfig(proxy.dir), pod: sandboxId, ports: [`0:${echo.port}`], transport });
      forwards.push(forward);
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          const payload = randomPayload(1 << 20);
          assert.equal(sha256(await roundTrip(forward.localPorts[0]!, payload)), sha256(payload));
        }),
      );
    });
  }

  it('keeps a running forward going while containerd restarts; CRI calls work again once it is back', async () => {
    const forward = forwards[0]!;
    const socket = await dial(forward.localPorts[0]!);
    let echoed = 0;
    socket.on('data', (d: Buffer) => (echoed += d.length));
    socket.write(Buffer.alloc(1000));
    await new Promise((r) => setTimeout(r, 300));
    const restarting = containerd.restart();
    socket.write(Buffer.alloc(1000));
    await restarting;
    socket.write(Buffer.alloc(1000));
    const deadline = Date.now() + 5000;
    while (echoed < 3000 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(echoed, 3000);
    socket.destroy();
    assert.equal((await viaProxy.call('Version', { version: 'v1' })).runtime_name, 'containerd');
    assert.equal((await viaProxy.call('PodSandboxStatus', { pod_sandbox_id: sandboxId })).status.state, 'SANDBOX_READY');
  });

  it('stops and removes the sandbox through the proxy, as containerd answers them', async () => {
    for (const f of forwards.splice(0)) await f.stop();
    await echo?.stop();
    assert.deepEqual(await viaProxy.call('StopPodSandbox', { pod_sandbox_id: sandboxId }), {});
    assert.equal((await direct.call('PodSandboxStatus', { pod_sandbox_id: sandboxId })).status.state, 'SANDBOX_NOTREADY');
    assert.deepEqual(await viaProxy.call('RemovePodSandbox', { pod_sandbox_id: sandboxId }), {});
    const gone = await grpcError(direct.call('PodSandboxStatus', { pod_sandbox_id: sandboxId }));
    assert.equal(gone.code, grpc.status.NOT_FOUND);
    // Removing again is fine, as containerd says.
    assert.deepEqual(await viaProxy.call('RemovePodSandbox', { pod_sandbox_id: sandboxId }), {});
  });
});
