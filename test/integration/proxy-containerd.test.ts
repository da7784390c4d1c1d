// Proxy mode in front of a real containerd, each release the harness runs (1.6, 1.7, 2.1;
// a private instance, test/support/containerd/): every CRI call through our socket answers
// as containerd's own; PortForward gives our URL; kubectl (plain SPDY and the default
// WebSocket tunnel) reaches an app in the containerd sandbox's network namespace; a
// containerd restart does not disturb a running forward.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { connect as http2Connect, constants as http2Constants } from 'node:http2';
import { statSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { netnsPathFromInfo } from '../../src/sandbox/upstream';
import { startPodApp, type PodApp } from '../support/apps';
import {
  CONTAINERD_RELEASES,
  containerdPodConfig,
  containerdSkipReason,
  removeAllSandboxes,
  startContainerd,
  type PrivateContainerd,
} from '../support/containerd';
import { grpcError, rawUnary } from '../support/cri-client';
import { FakeApiServer } from '../support/fake-apiserver';
import { namespaceInodeFds } from '../support/namespace-fds';
import { startPortForward, type KubectlPortForward } from '../support/kubectl';
import { startProxy, stopProxy, type ProxiedCri } from '../support/proxy';
import { dial, randomPayload, roundTrip, sha256 } from '../support/tcp-client';
import { until } from '../support/until';

const skip = containerdSkipReason();

function withoutTimestamps(value: any): any {
  const copy = structuredClone(value);
  delete copy.timestamp;
  return copy;
}

/** HTTP/2 error codes by number (RFC 9113, section 7). */
const H2_ERRORS = ['NO_ERROR', 'PROTOCOL_ERROR', 'INTERNAL_ERROR', 'FLOW_CONTROL_ERROR', 'SETTINGS_TIMEOUT', 'STREAM_CLOSED',
  'FRAME_SIZE_ERROR', 'REFUSED_STREAM', 'CANCEL', 'COMPRESSION_ERROR', 'CONNECT_ERROR', 'ENHANCE_YOUR_CALM',
  'INADEQUATE_SECURITY', 'HTTP_1_1_REQUIRED'];

/**
 * What a server-streaming call gets from a socket, seen at the HTTP/2 level (a gRPC client
 * would turn a stream reset into a status of its own, and its own deadline usually fires
 * first): the call is sent with `grpc-timeout` `deadlineMs` and watched until a status, a
 * RST_STREAM, or `deadlineMs` + 1 s (time for the server's reaction to its deadline).
 * For GetContainerEvents, containerd 1.6 answers UNIMPLEMENTED; 1.7 keeps the stream open
 * past the deadline without a word; 2.1 resets it (CANCEL) at the deadline.
 */
function serverStreamOutcome(socketPath: string, method: string, deadlineMs: number): Promise<{ data: Buffer; end: string }> {
  return new Promise((resolve) => {
    const session = http2Connect('http://localhost', { createConnection: () => netConnect(socketPath) });
    session.on('error', () => undefined); // the stream's close says what happened
    const req = session.request({
      ':method': 'POST',
      ':path': method,
      'content-type': 'application/grpc',
      te: 'trailers',
      'grpc-timeout': `${deadlineMs}m`,
    });
    const chunks: Buffer[] = [];
    let end = '';
    const status = (h: Record<string, unknown>) => {
      if (h['grpc-status'] !== undefined) end = `grpc-status ${h['grpc-status']} ${JSON.stringify(h['grpc-message'] ?? '')}`;
    };
    req.on('response', status);
    req.on('trailers', status);
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('error', () => undefined);
    const watchdog = setTimeout(() => {
      end = `still open ${deadlineMs + 1000} ms after the call, past its deadline`;
      req.close(http2Constants.NGHTTP2_CANCEL);
    }, deadlineMs + 1000);
    req.on('close', () => {
      clearTimeout(watchdog);
      if (!end) end = req.rstCode ? `RST_STREAM ${H2_ERRORS[req.rstCode] ?? req.rstCode}` : 'closed without a status';
      session.close();
      resolve({ data: Buffer.concat(chunks), end });
    });
    req.end(Buffer.alloc(5)); // an empty GetEventsRequest, length-prefixed
  });
}

for (const release of CONTAINERD_RELEASES) describe(`proxy mode in front of containerd ${release}`, { skip }, () => {
  let containerd: PrivateContainerd;
  let p: ProxiedCri;
  let api: FakeApiServer;
  let sandboxId: string;
  let netnsPath: string;
  let echo: PodApp;
  const forwards: KubectlPortForward[] = [];

  before(async () => {
    containerd = await startContainerd({ release });
    p = await startProxy(containerd.address);
    api = await FakeApiServer.start({ criAddress: p.proxy.criAddress, namespace: 'test', refuseWebSocket: false });
  });

  after(async () => {
    for (const f of forwards) await f.stop();
    await echo?.stop();
    await api?.close();
    if (containerd) await removeAllSandboxes(containerd.address);
    await stopProxy(p);
    await containerd?.stop();
  });

  it("answers Version, Status and the sandbox RPCs exactly as containerd's own socket does", async () => {
    assert.deepEqual(await p.viaProxy.call('Version', { version: 'v1' }), await p.direct.call('Version', { version: 'v1' }));
    const status = await p.viaProxy.call('Status', { verbose: false });
    assert.deepEqual(status, await p.direct.call('Status', { verbose: false }));
    const config = containerdPodConfig(containerd, 'web');
    sandboxId = (await p.viaProxy.call('RunPodSandbox', { config })).pod_sandbox_id;
    const through = await p.viaProxy.call('PodSandboxStatus', { pod_sandbox_id: sandboxId, verbose: true });
    assert.deepEqual(withoutTimestamps(through), withoutTimestamps(await p.direct.call('PodSandboxStatus', { pod_sandbox_id: sandboxId, verbose: true })));
    netnsPath = netnsPathFromInfo(through.info.info)!;
    const filter = { filter: { label_selector: { app: 'web' } } };
    assert.deepEqual(await p.viaProxy.call('ListPodSandbox', filter), await p.direct.call('ListPodSandbox', filter));
    // Raw bytes too: nothing is decoded on the way.
    const listRequest = Buffer.alloc(0);
    const rawThrough = await rawUnary(p.proxy.criAddress, '/runtime.v1.RuntimeService/ListPodSandbox', listRequest);
    const rawDirect = await rawUnary(containerd.address, '/runtime.v1.RuntimeService/ListPodSandbox', listRequest);
    assert.deepEqual(rawThrough.response, rawDirect.response);
  });

  it('passes an image RPC, a server-streaming RPC and error statuses through unchanged', async () => {
    const images = await rawUnary(p.proxy.criAddress, '/runtime.v1.ImageService/ListImages', Buffer.alloc(0));
    assert.deepEqual(images, await rawUnary(containerd.address, '/runtime.v1.ImageService/ListImages', Buffer.alloc(0)));
    assert.ok(images.response!.length > 0, 'the pause image is listed');
    const notFound = await grpcError(p.viaProxy.call('PodSandboxStatus', { pod_sandbox_id: 'nope' }));
    const notFoundDirect = await grpcError(p.direct.call('PodSandboxStatus', { pod_sandbox_id: 'nope' }));
    assert.deepEqual([notFound.code, notFound.details], [notFoundDirect.code, notFoundDirect.details]);
    // GetContainerEvents is server-streaming. containerd 1.7 and 2.1 queue the events of
    // sandbox "web" (made above) until some stream reads them, and one stream takes them:
    // so through our socket first (the events must come through), then containerd's own
    // socket (nothing queued is left). Either way the stream must end as containerd ends it.
    const method = '/runtime.v1.RuntimeService/GetContainerEvents';
    const through = await serverStreamOutcome(p.proxy.criAddress.replace(/^unix:\/\//, ''), method, 2000);
    const direct = await serverStreamOutcome(containerd.socket, method, 2000);
    if (!direct.end.startsWith(`grpc-status ${grpc.status.UNIMPLEMENTED} `)) {
      assert.ok(through.data.includes(sandboxId), `the queued events of sandbox ${sandboxId} came through our socket`);
    }
    assert.equal(through.end, direct.end);
  });

  it('answers PortForward with our URL', async () => {
    const { url } = await p.viaProxy.call('PortForward', { pod_sandbox_id: sandboxId, port: [8080] });
    assert.ok(url.startsWith(`${p.proxy.streamBaseUrl}/portforward/`), url);
  });

  for (const transport of ['spdy', 'default'] as const) {
    it(`kubectl (${transport === 'spdy' ? 'plain SPDY' : 'WebSocket tunnel'}) reaches the containerd sandbox: 16 x 1 MiB echo`, async () => {
      echo ??= await startPodApp(netnsPath, 'echo');
      const forward = await startPortForward({ kubeconfig: api.kubeconfig(p.proxy.dir), pod: sandboxId, ports: [`0:${echo.port}`], transport });
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
    await until('the first 1000 bytes echoed', () => echoed >= 1000);
    const restarting = containerd.restart();
    socket.write(Buffer.alloc(1000));
    await restarting;
    socket.write(Buffer.alloc(1000));
    await until('all 3000 bytes echoed', () => echoed >= 3000, { timeoutMs: 5000 }).catch(() => undefined); // asserted next
    assert.equal(echoed, 3000);
    socket.destroy();
    assert.equal((await p.viaProxy.call('Version', { version: 'v1' })).runtime_name, 'containerd');
    assert.equal((await p.viaProxy.call('PodSandboxStatus', { pod_sandbox_id: sandboxId })).status.state, 'SANDBOX_READY');
  });

  it('stops and removes the sandbox through the proxy, as containerd answers them, holding nothing of its namespace', async () => {
    // A dial keeps a handle on the sandbox's namespace (native/netns_handles.c)...
    const payload = randomPayload(1024);
    assert.equal(sha256(await roundTrip(forwards[0]!.localPorts[0]!, payload)), sha256(payload));
    const pinned = statSync(netnsPath);
    assert.equal(namespaceInodeFds(pinned, p.proxy.proc.pid!), 1, 'the dial kept a handle on the namespace');
    for (const f of forwards.splice(0)) await f.stop();
    await echo?.stop();
    assert.deepEqual(await p.viaProxy.call('StopPodSandbox', { pod_sandbox_id: sandboxId }), {});
    // ...which must not keep it alive once containerd has torn it down.
    assert.equal(namespaceInodeFds(pinned, p.proxy.proc.pid!), 0, 'no fd left on the stopped sandbox namespace');
    assert.equal((await p.direct.call('PodSandboxStatus', { pod_sandbox_id: sandboxId })).status.state, 'SANDBOX_NOTREADY');
    assert.deepEqual(await p.viaProxy.call('RemovePodSandbox', { pod_sandbox_id: sandboxId }), {});
    const gone = await grpcError(p.direct.call('PodSandboxStatus', { pod_sandbox_id: sandboxId }));
    assert.equal(gone.code, grpc.status.NOT_FOUND);
    // Removing again is fine, as containerd says.
    assert.deepEqual(await p.viaProxy.call('RemovePodSandbox', { pod_sandbox_id: sandboxId }), {});
  });
});
