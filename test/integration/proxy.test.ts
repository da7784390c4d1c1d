// Proxy mode in front of an upstream CRI runtime. Here the upstream is a second
// cri-portforward in embedded mode (a real gRPC server with real namespaces): every call
// but PortForward must come back from it unchanged, and PortForward must give our URL.
// (containerd as the upstream is test/integration/proxy-containerd.test.ts.)

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import { startPodApp, type PodApp } from '../support/apps';
import { criClient, grpcError, podConfig, runSandbox } from '../support/cri-client';
import { startProxy, stopProxy, type ProxiedCri } from '../support/proxy';
import { rootSkipReason } from '../support/root';
import { SpdyLoadSession } from '../support/spdy-load';
import { cleanUpAndAssertNothingLeft, startServer, type ServerProcess } from '../support/server-process';
import { until } from '../support/until';
import { channelBytes, openChannels } from '../support/ws-client';

const skip = rootSkipReason();

describe('proxy mode (upstream: an embedded cri-portforward)', { skip }, () => {
  let upstream: ServerProcess;
  let p: ProxiedCri;
  const apps: PodApp[] = [];

  before(async () => {
    upstream = await startServer();
    p = await startProxy(upstream.criAddress, ['--log-level', 'debug']);
  });

  after(async () => {
    for (const a of apps) await a.stop();
    await stopProxy(p);
    if (!upstream) return;
    assert.equal(await upstream.stop(), 0);
    cleanUpAndAssertNothingLeft(upstream, upstream.dir);
  });

  it('passes sandbox RPCs through unchanged', async () => {
    assert.deepEqual(await p.viaProxy.call('Version', {}), await p.direct.call('Version', {}));
    const { pod_sandbox_id: id } = await p.viaProxy.call('RunPodSandbox', { config: podConfig('proxied') });
    const through = await p.viaProxy.call('PodSandboxStatus', { pod_sandbox_id: id, verbose: true });
    const straight = await p.direct.call('PodSandboxStatus', { pod_sandbox_id: id, verbose: true });
    delete through.timestamp;
    delete straight.timestamp;
    assert.deepEqual(through, straight);
    assert.deepEqual(await p.viaProxy.call('ListPodSandbox', {}), await p.direct.call('ListPodSandbox', {}));
    await p.viaProxy.call('StopPodSandbox', { pod_sandbox_id: id });
    assert.equal((await p.direct.call('PodSandboxStatus', { pod_sandbox_id: id })).status.state, 'SANDBOX_NOTREADY');
    await p.viaProxy.call('RemovePodSandbox', { pod_sandbox_id: id });
    assert.deepEqual((await p.direct.call('ListPodSandbox', {})).items, []);
  });

  it('passes error statuses and unknown methods through with their code and message', async () => {
    const notFound = await grpcError(p.viaProxy.call('PodSandboxStatus', { pod_sandbox_id: 'nope' }));
    assert.equal(notFound.code, status.NOT_FOUND);
    assert.equal(notFound.details, (await grpcError(p.direct.call('PodSandboxStatus', { pod_sandbox_id: 'nope' }))).details);
    const unknown = await p.viaProxy.callRaw('/runtime.v1.RuntimeService/SomeMethodOfNextYear');
    assert.equal(unknown?.code, status.UNIMPLEMENTED);
    assert.match(unknown!.details, /SomeMethodOfNextYear/);
  });

  it('answers PortForward itself: validation, upstream resolution, our URL', async () => {
    const { pod_sandbox_id: id } = await p.viaProxy.call('RunPodSandbox', { config: podConfig('pf-proxied') });
    const { url } = await p.viaProxy.call('PortForward', { pod_sandbox_id: id, port: [8080] });
    assert.ok(url.startsWith(`${p.proxy.streamBaseUrl}/portforward/`), url);
    assert.equal((await grpcError(p.viaProxy.call('PortForward', { pod_sandbox_id: '', port: [] }))).code, status.INVALID_ARGUMENT);
    assert.equal((await grpcError(p.viaProxy.call('PortForward', { pod_sandbox_id: 'f'.repeat(64), port: [] }))).code, status.NOT_FOUND);
    await p.viaProxy.call('StopPodSandbox', { pod_sandbox_id: id });
    assert.equal((await grpcError(p.viaProxy.call('PortForward', { pod_sandbox_id: id, port: [] }))).code, status.FAILED_PRECONDITION);
    await p.viaProxy.call('RemovePodSandbox', { pod_sandbox_id: id });
  });

  it('forwards through our streaming server into the upstream sandbox namespace', async () => {
    const { id, netns } = await runSandbox(p.viaProxy, 'pf-echo');
    const echo = await startPodApp(netns, 'echo');
    apps.push(echo);
    const { url } = await p.viaProxy.call('PortForward', { pod_sandbox_id: id, port: [echo.port] });
    const o = await openChannels(url, ['v4.channel.k8s.io']);
    o.ws.send(Buffer.from([0, ...Buffer.from('through the proxy')]));
    await until('the echo through the proxy', () => channelBytes(o, 0).length >= 2 + 17, { timeoutMs: 5000 });
    assert.equal(channelBytes(o, 0).subarray(2).toString(), 'through the proxy');
    o.ws.close(1000);
    await p.viaProxy.call('RemovePodSandbox', { pod_sandbox_id: id });
  });

  it('asks upstream for a sandbox once for many connections, and again once its netns is gone', async () => {
    const upstreamLookups = (): number => p.proxy.logs.filter((l) => l['msg'] === 'asking upstream for a sandbox').length;
    const { id, netns } = await runSandbox(p.viaProxy, 'pf-cached');
    const echo = await startPodApp(netns, 'echo');
    apps.push(echo);
    const before = upstreamLookups();
    const forwardedBytes = async (): Promise<[number, number]> => {
      const metrics = await (await fetch(`${p.proxy.streamBaseUrl}/metrics`)).text();
      const bytes = (direction: string): number =>
        Number(new RegExp(`^cri_portforward_bytes_total\\{direction="${direction}"\\} (\\d+)$`, 'm').exec(metrics)?.[1] ?? 0);
      return [bytes('to_pod'), bytes('to_client')];
    };
    const bytesBefore = await forwardedBytes();
    const { url } = await p.viaProxy.call('PortForward', { pod_sandbox_id: id, port: [echo.port] });
    const session = await SpdyLoadSession.open(url);
    try {
      const results = await Promise.all(Array.from({ length: 20 }, () => session.echo(echo.port, 64)));
      assert.deepEqual(results.map((r) => [r.end, r.echoed, r.matches]), results.map(() => ['fin', 64, true]));
      assert.equal(upstreamLookups() - before, 1, 'PortForward and 20 connections: one PodSandboxStatus');
      const [toPod, toClient] = await forwardedBytes();
      assert.deepEqual([toPod - bytesBefore[0], toClient - bytesBefore[1]], [20 * 64, 20 * 64]);
      // Stopped and removed behind the proxy's back (at upstream), its app killed as a
      // runtime's Stop kills the pod's containers: the dial finds the namespace it kept is
      // not at the path any more, the proxy asks again, and the connection gets upstream's
      // text for a gone sandbox.
      await echo.stop();
      await p.direct.call('RemovePodSandbox', { pod_sandbox_id: id });
      const gone = await session.echo(echo.port, 64);
      assert.match(gone.errorText, new RegExp(`network namespace for sandbox "${id}" is closed`));
      assert.equal(upstreamLookups() - before, 2);
    } finally {
      await session.close();
    }
  });

  it('answers UNAVAILABLE naming the upstream while it is down, and recovers when it is back', async () => {
    const upstreamDir = upstream.dir;
    assert.equal(await upstream.stop(), 0);
    const down = await grpcError(p.viaProxy.call('Version', {}));
    assert.equal(down.code, status.UNAVAILABLE);
    assert.ok(down.details.includes(upstream.criAddress), down.details);
    upstream = await startServer({ dir: upstreamDir });
    p.direct.close();
    p.direct = criClient(upstream.criAddress);
    assert.equal((await p.viaProxy.call('Version', {})).runtime_name, 'cri-portforward');
  });
});

describe('proxy mode: what the pass-through carries', () => {
  it('carries the deadline, metadata, status code, message and trailers unchanged', async () => {
    const http2 = await import('node:http2');
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = mkdtempSync(join(tmpdir(), 'cripf-fake-upstream-'));
    const seen: Record<string, unknown>[] = [];
    // A bare HTTP/2 upstream that records what arrives and answers with a chosen status.
    const upstream = http2.createServer();
    upstream.on('stream', (stream, headers) => {
      seen.push({ ...headers });
      stream.on('data', () => undefined);
      stream.on('end', () => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.on('wantTrailers', () =>
          stream.sendTrailers({ 'grpc-status': '9', 'grpc-message': 'custom%20failure', 'x-upstream-trailer': 'kept' }),
        );
        stream.end();
      });
    });
    await new Promise<void>((resolve) => upstream.listen(join(dir, 'up.sock'), resolve));
    const proxy = await startServer({ args: ['--upstream', `unix://${join(dir, 'up.sock')}`] });
    try {
      const client = new grpc.Client(proxy.criAddress, grpc.credentials.createInsecure());
      const metadata = new grpc.Metadata();
      metadata.set('x-request-meta', 'passed');
      const error = await new Promise<grpc.ServiceError>((resolve) => {
        client.makeUnaryRequest(
          '/runtime.v1.RuntimeService/ListContainers',
          (b: Buffer) => b,
          (b: Buffer) => b,
          Buffer.from([0x0a, 0x00]),
          metadata,
          { deadline: Date.now() + 7000 },
          (err) => resolve(err!),
        );
      });
      client.close();
      assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
      assert.equal(error.details, 'custom failure');
      assert.deepEqual(error.metadata.get('x-upstream-trailer'), ['kept']);
      const request = seen[0]!;
      assert.equal(request[':path'], '/runtime.v1.RuntimeService/ListContainers');
      assert.equal(request['x-request-meta'], 'passed');
      const timeout = String(request['grpc-timeout']);
      assert.match(timeout, /^\d+[mSMu]$/, 'the deadline travels as grpc-timeout');
    } finally {
      assert.equal(await proxy.stop(), 0);
      cleanUpAndAssertNothingLeft(proxy, proxy.dir);
      await new Promise<void>((resolve) => upstream.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
