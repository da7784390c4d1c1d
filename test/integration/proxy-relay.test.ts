// The proxy's HTTP/2 relay ends every call as the upstream ended it, with peers we did not
// write: curl (nghttp2) and grpc-js as clients, Node's http2 server (nghttp2) as a runtime
// that resets, dies, sends GOAWAY and streams on demand (test/support/h2-upstream.ts).
// What containerd itself does through the relay is in proxy-containerd.test.ts.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import * as http2 from 'node:http2';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { startH2Upstream, type H2Upstream } from '../support/h2-upstream';
import { startProxy, stopProxy, type ProxiedCri } from '../support/proxy';
import { until } from '../support/until';

const EMPTY_MESSAGE = Buffer.alloc(5);

/**
 * How a call ended, as curl (nghttp2) tells it: the reset code, or the grpc-status. Run
 * asynchronously: the upstream lives in this process.
 */
async function curlCall(socket: string, path: string): Promise<{ reset?: string; grpcStatus?: string; grpcMessage?: string }> {
  const args = ['-s', '-v', '--max-time', '5', '--unix-socket', socket, '--http2-prior-knowledge', '-X', 'POST', '-H', 'content-type: application/grpc', '-H', 'te: trailers', '--data-binary', '@-', '-o', '/dev/null', `http://localhost${path}`];
  const curl = spawn('curl', args, { stdio: ['pipe', 'ignore', 'pipe'] });
  let stderr = '';
  curl.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  curl.stdin.end(EMPTY_MESSAGE);
  const [code] = (await once(curl, 'close')) as [number | null];
  assert.ok(code === 0 || code === 92 || code === 16, `curl exited ${code}: ${stderr}`); // 92/16: HTTP/2 stream error
  const reset = /not closed cleanly: (\w+) \(err (\d+)\)/.exec(stderr);
  return {
    reset: reset ? `${reset[1]} ${reset[2]}` : undefined,
    grpcStatus: /< grpc-status: (\d+)/.exec(stderr)?.[1],
    grpcMessage: /< grpc-message: (.*)/.exec(stderr)?.[1]?.trim(),
  };
}

describe('CRI proxy relay: calls end as the upstream ended them', () => {
  let dir: string;
  let upstream: H2Upstream;
  let p: ProxiedCri;
  let proxySocket: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cripf-relay-'));
    upstream = await startH2Upstream(join(dir, 'upstream.sock'));
    p = await startProxy(upstream.address);
    proxySocket = p.proxy.criAddress.slice('unix://'.length);
  });

  after(async () => {
    await stopProxy(p);
    await upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('an upstream RST_STREAM reaches the client with the same code, before or after a response', async () => {
    for (const path of ['/reset-before/8', '/reset-before/2', '/reset-after/8', '/reset-after/2', '/ok/0']) {
      const direct = await curlCall(join(dir, 'upstream.sock'), path);
      const through = await curlCall(proxySocket, path);
      assert.deepEqual(through, direct, path);
    }
    assert.deepEqual(await curlCall(proxySocket, '/reset-before/8'), { reset: 'CANCEL 8', grpcStatus: undefined, grpcMessage: undefined });
  });

  it('an upstream connection lost mid-call ends the call UNAVAILABLE, naming the upstream; the next call reconnects', async () => {
    const lost = await curlCall(proxySocket, '/kill/0');
    assert.equal(lost.grpcStatus, String(grpc.status.UNAVAILABLE));
    assert.match(lost.grpcMessage ?? '', /upstream CRI runtime unix:\/\/.*went away mid-call/);
    assert.equal((await curlCall(proxySocket, '/ok/0')).grpcStatus, '0');
  });

  it("a client's cancel and deadline reset the upstream stream (CANCEL); nothing stays open", async () => {
    const client = new grpc.Client(p.proxy.criAddress, grpc.credentials.createInsecure());
    try {
      const call = (deadlineMs: number): Promise<grpc.StatusObject> =>
        new Promise((resolve) => {
          const c = client.makeServerStreamRequest('/wait/0', (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), { deadline: Date.now() + deadlineMs });
          c.on('data', () => undefined);
          c.on('error', () => undefined);
          c.on('status', resolve);
        });
      const resetsBefore = upstream.resetsSeen.length;
      assert.equal((await call(300)).code, grpc.status.DEADLINE_EXCEEDED);
      await until('the deadline reset seen upstream', () => upstream.resetsSeen.length === resetsBefore + 1 && upstream.openStreams() === 0);
      const cancelled = client.makeServerStreamRequest('/wait/0', (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0));
      cancelled.on('error', () => undefined);
      await until('the call open upstream', () => upstream.openStreams() === 1);
      cancelled.cancel();
      await until('both resets seen upstream, no stream left', () => upstream.resetsSeen.length === resetsBefore + 2 && upstream.openStreams() === 0, { state: () => JSON.stringify({ resets: upstream.resetsSeen, open: upstream.openStreams() }) });
      assert.deepEqual(upstream.resetsSeen.slice(resetsBefore), [http2.constants.NGHTTP2_CANCEL, http2.constants.NGHTTP2_CANCEL]);
    } finally {
      client.close();
    }
  });

  it('after an upstream GOAWAY, the call in flight goes on and new calls take a new connection', async () => {
    const session = http2.connect('http://localhost', { createConnection: () => connect(proxySocket) });
    try {
      const inFlight = session.request({ ':method': 'POST', ':path': '/wait/0', 'content-type': 'application/grpc' });
      inFlight.end(EMPTY_MESSAGE);
      inFlight.on('error', () => undefined);
      await new Promise((resolve) => inFlight.once('response', resolve));
      const connectionsBefore = upstream.connections();
      upstream.goaway();
      await until('a call after the GOAWAY answered', async () => (await curlCall(proxySocket, '/ok/0')).grpcStatus === '0', { timeoutMs: 5000 });
      assert.equal(upstream.connections(), connectionsBefore + 1, 'one new upstream connection');
      assert.ok(!inFlight.closed, 'the call in flight is still open');
      inFlight.close(http2.constants.NGHTTP2_CANCEL);
      await until('the in-flight call reset upstream', () => upstream.openStreams() === 0);
    } finally {
      session.destroy();
    }
  });

  it('a slow client holds a server-streaming upstream back (flow control), then gets every byte', async () => {
    const total = 64 << 20;
    const session = http2.connect('http://localhost', { createConnection: () => connect(proxySocket) });
    try {
      const before = upstream.streamed;
      const call = session.request({ ':method': 'POST', ':path': `/stream/${total}`, 'content-type': 'application/grpc' });
      call.end(EMPTY_MESSAGE);
      call.pause();
      await new Promise((resolve) => call.once('response', resolve));
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const sentWhilePaused = upstream.streamed - before;
      assert.ok(sentWhilePaused < 16 << 20, `the upstream sent ${sentWhilePaused >> 20} MiB while the client read nothing`);
      let received = 0;
      call.on('data', (d: Buffer) => (received += d.length));
      const trailers = new Promise<http2.IncomingHttpHeaders>((resolve) => call.once('trailers', resolve));
      call.resume();
      assert.equal((await trailers)['grpc-status'], '0');
      await new Promise((resolve) => call.once('close', resolve));
      assert.equal(received, total);
    } finally {
      session.destroy();
    }
  });
});
