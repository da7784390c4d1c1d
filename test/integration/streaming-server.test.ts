// The streaming server's front door: token redemption, health, metrics, TLS, bad requests.
// Host-network sandboxes need no namespace, so this suite also runs without root.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { criClient, HOST_NETWORK, podConfig, type CriTestClient } from '../support/cri-client';
import { cleanUpAndAssertNothingLeft, makeTempDir, serverMetric, startServer, type ServerProcess } from '../support/server-process';
import { until } from '../support/until';
import { startPodApp } from '../support/apps';
import { channelBytes, openChannels } from '../support/ws-client';

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function request(url: string, options: https.RequestOptions = {}): Promise<Reply> {
  const lib = url.startsWith('https:') ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(url, options, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** An upgrade request written by hand, so we see the raw answer Node's client would hide. */
function rawUpgrade(baseUrl: string, path: string, upgrade: string): Promise<string> {
  const { hostname, port } = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (text += d));
    socket.on('end', () => resolve(text));
    socket.on('error', reject);
    socket.write(`GET ${path} HTTP/1.1\r\nHost: ${hostname}\r\nConnection: Upgrade\r\nUpgrade: ${upgrade}\r\n\r\n`);
  });
}

/** Minimal check of the Prometheus text exposition format, line by line. */
function assertPrometheusText(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      assert.match(line, /^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$/, line);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})?) (-?[0-9.e+-]+|NaN|[+-]Inf)( -?\d+)?$/.exec(line);
    assert.ok(m, `not a Prometheus sample line: ${line}`);
    samples.set(m[1]!, Number(m[2]));
  }
  return samples;
}

describe('streaming server', () => {
  let server: ServerProcess;
  let cri: CriTestClient;
  let sandboxId: string;
  const portForwardUrl = async (): Promise<string> =>
    (await cri.call('PortForward', { pod_sandbox_id: sandboxId, port: [8080] })).url;

  before(async () => {
    server = await startServer({ args: ['--token-ttl', '300ms'] });
    cri = criClient(server.criAddress);
    sandboxId = (await cri.call('RunPodSandbox', { config: podConfig('front', HOST_NETWORK) })).pod_sandbox_id;
  });

  after(async () => {
    cri?.close();
    if (!server) return;
    assert.equal(await server.stop(), 0);
    cleanUpAndAssertNothingLeft(server, server.dir);
  });

  it('redeems a token once: a request without an upgrade gets 400 naming what is served, then 404', async () => {
    const url = await portForwardUrl();
    const first = await request(url, { method: 'POST' });
    assert.equal(first.status, 400);
    assert.match(first.body, /port-forward needs a protocol upgrade/);
    const second = await request(url);
    assert.equal(second.status, 404);
    assert.match(second.body, /unknown, expired or already used/);
  });

  it('answers an upgrade no protocol accepts with 400 on the raw socket, and the token is spent', async () => {
    const path = new URL(await portForwardUrl()).pathname;
    const answer = await rawUpgrade(server.streamBaseUrl, path, 'h2c');
    assert.match(answer, /^HTTP\/1\.1 400 Bad Request\r\n/);
    assert.match(answer, /port-forward needs a protocol upgrade/);
    assert.match(await rawUpgrade(server.streamBaseUrl, path, 'h2c'), /^HTTP\/1\.1 404 /);
  });

  it('answers 404 for an expired token', async () => {
    const expiredBefore = await serverMetric(server, 'cri_portforward_tokens_expired_total');
    const url = await portForwardUrl();
    // The server's purge (once per TTL) counts the token expired: every other token so far was redeemed.
    await until('the token to expire', async () => (await serverMetric(server, 'cri_portforward_tokens_expired_total')) > expiredBefore, {
      intervalMs: 50,
    });
    const reply = await request(url);
    assert.equal(reply.status, 404);
    assert.match(reply.body, /expired/);
  });

  it('answers 404 for an unknown token and unknown paths, 405 for wrong methods, always with a body', async () => {
    const base = server.streamBaseUrl;
    const unknown = await request(`${base}/portforward/AAAAAAAAAAAAAAAAAAAAAA`);
    assert.equal(unknown.status, 404);
    const nowhere = await request(`${base}/exec/abc`);
    assert.equal(nowhere.status, 404);
    assert.match(nowhere.body, /no such path: \/exec\/abc/);
    const put = await request(await portForwardUrl(), { method: 'PUT' });
    assert.equal(put.status, 405);
    assert.equal(put.headers.allow, 'GET, POST');
    assert.match(put.body, /method not allowed/);
    const postHealth = await request(`${base}/healthz`, { method: 'POST' });
    assert.equal(postHealth.status, 405);
  });

  it('serves /healthz', async () => {
    const reply = await request(`${server.streamBaseUrl}/healthz`);
    assert.deepEqual([reply.status, reply.body.trim()], [200, 'ok']);
  });

  it('serves /metrics as Prometheus text with token and sandbox counts', async () => {
    const reply = await request(`${server.streamBaseUrl}/metrics`);
    assert.equal(reply.status, 200);
    assert.match(String(reply.headers['content-type']), /^text\/plain/);
    const samples = assertPrometheusText(reply.body);
    assert.ok(samples.get('cri_portforward_tokens_issued_total')! >= 4);
    assert.ok(samples.get('cri_portforward_tokens_redeemed_total')! >= 2);
    assert.ok(samples.get('cri_portforward_tokens_rejected_total{reason="unknown"}')! >= 3);
    assert.ok(samples.get('cri_portforward_tokens_expired_total')! >= 1);
    assert.equal(samples.get('cri_portforward_sandboxes{state="SANDBOX_READY"}'), 1);
    assert.ok(samples.has('process_cpu_seconds_total'));
  });
});

describe('streaming server over TLS', () => {
  let server: ServerProcess;
  const dir = makeTempDir();

  before(async () => {
    const cert = join(dir, 'cert.pem');
    const key = join(dir, 'key.pem');
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1',
    ], { stdio: 'ignore' });
    server = await startServer({ dir, args: ['--tls-cert', cert, '--tls-key', key] });
  });

  after(async () => {
    if (server) assert.equal(await server.stop(), 0);
    cleanUpAndAssertNothingLeft(server, dir);
  });

  it('serves https with the given certificate and hands out https URLs', async () => {
    assert.match(server.streamBaseUrl, /^https:\/\/127\.0\.0\.1:\d+$/);
    const ca = readFileSync(join(dir, 'cert.pem'));
    const reply = await request(`${server.streamBaseUrl}/healthz`, { ca });
    assert.equal(reply.status, 200);
    const cri = criClient(server.criAddress);
    const id = (await cri.call('RunPodSandbox', { config: podConfig('tls', HOST_NETWORK) })).pod_sandbox_id;
    const { url } = await cri.call('PortForward', { pod_sandbox_id: id, port: [80] });
    assert.ok(url.startsWith(`${server.streamBaseUrl}/portforward/`));
    assert.equal((await request(url, { ca })).status, 400);
    cri.close();
    // Plain http to the TLS port gets no answer we could mistake for success.
    await assert.rejects(request(server.streamBaseUrl.replace('https:', 'http:') + '/healthz'));
  });

  it('forwards over wss (a TLS socket keeps Node\'s own reads): 1 MiB up and back', async () => {
    const ca = readFileSync(join(dir, 'cert.pem'));
    const echo = await startPodApp(null, 'echo');
    const cri = criClient(server.criAddress);
    try {
      const id = (await cri.call('RunPodSandbox', { config: podConfig('tls-echo', HOST_NETWORK) })).pod_sandbox_id;
      const { url } = await cri.call('PortForward', { pod_sandbox_id: id, port: [echo.port] });
      const o = await openChannels(url, ['v4.channel.k8s.io'], { ca });
      const payload = randomBytes(1 << 20);
      for (let at = 0; at < payload.length; at += 16 * 1024) o.ws.send(Buffer.concat([Buffer.from([0]), payload.subarray(at, at + 16 * 1024)]));
      await until('the echo over wss', () => channelBytes(o, 0).length >= 2 + payload.length, { timeoutMs: 20_000 });
      assert.ok(channelBytes(o, 0).subarray(2).equals(payload));
      o.ws.close(1000);
      await o.closed;
      await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
    } finally {
      cri.close();
      await echo.stop();
    }
  });
});
