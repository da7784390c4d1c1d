// WebSocket port-forward straight to our URL with a raw `ws` client: the v4 channel
// protocols byte by byte, large echoes, endings, and malformed input.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { startPodApp, type PodApp } from '../support/apps';
import { criClient, podConfig, runSandbox, type CriTestClient } from '../support/cri-client';
import { rootSkipReason } from '../support/root';
import { cleanUpAndAssertNothingLeft, startServer, type ServerProcess } from '../support/server-process';
import { randomPayload, sha256 } from '../support/tcp-client';
import { until } from '../support/until';
import { channelBytes, openChannels as open } from '../support/ws-client';

const skip = rootSkipReason();

describe('WebSocket port-forward (raw ws client)', { skip }, () => {
  let server: ServerProcess;
  let cri: CriTestClient;
  let sandboxId: string;
  const apps: PodApp[] = [];
  let echo: PodApp;
  let answer: PodApp;

  const url = async (ports: number[]): Promise<string> =>
    (await cri.call('PortForward', { pod_sandbox_id: sandboxId, port: ports })).url;

  before(async () => {
    server = await startServer();
    cri = criClient(server.criAddress);
    const { id, netns } = await runSandbox(cri, 'ws');
    sandboxId = id;
    echo = await startPodApp(netns, 'echo');
    answer = await startPodApp(netns, 'answer-after-eof');
    apps.push(echo, answer);
  });

  after(async () => {
    for (const a of apps) await a.stop();
    if (!server) return;
    await cri.call('RemovePodSandbox', { pod_sandbox_id: sandboxId });
    cri.close();
    assert.equal(await server.stop(), 0);
    cleanUpAndAssertNothingLeft(server, server.dir);
  });

  for (const protocol of ['v4.channel.k8s.io', 'v4.base64.channel.k8s.io']) {
    it(`${protocol}: the port prefix on both channels of every port, then an echo`, async () => {
      const o = await open(await url([echo.port, answer.port]), [protocol]);
      assert.equal(o.ws.protocol, protocol);
      const le = (port: number): Buffer => Buffer.from([port & 0xff, port >> 8]);
      await until('the port prefix on all four channels', () => [0, 1, 2, 3].every((c) => o.channels.has(c)));
      assert.deepEqual(o.channels.get(0)![0], le(echo.port));
      assert.deepEqual(o.channels.get(1)![0], le(echo.port));
      assert.deepEqual(o.channels.get(2)![0], le(answer.port));
      assert.deepEqual(o.channels.get(3)![0], le(answer.port));
      const payload = Buffer.from('hello through the channel');
      if (protocol.includes('base64')) o.ws.send('0' + payload.toString('base64'));
      else o.ws.send(Buffer.concat([Buffer.from([0]), payload]));
      await until('the echo', () => channelBytes(o, 0).length === 2 + payload.length);
      assert.deepEqual(channelBytes(o, 0).subarray(2), payload);
      o.ws.close(1000);
      assert.equal((await o.closed).code, 1000);
    });
  }

  it('base64 framing is byte-exact: ASCII channel digit, then standard base64 with padding', async () => {
    const o = await open(await url([echo.port]), ['v4.base64.channel.k8s.io']);
    const raw: string[] = [];
    o.ws.on('message', (data: Buffer) => raw.push(data.toString('latin1')));
    await until('the port prefix on the error channel', () => o.channels.has(1));
    o.ws.send('0' + Buffer.from([0xfb, 0xff]).toString('base64')); // "+/8=": the non-url-safe alphabet
    await until('the base64 echo', () => raw.some((m) => m.startsWith('0') && m !== '0' + Buffer.from([echo.port & 0xff, echo.port >> 8]).toString('base64')));
    assert.ok(raw.includes('0+/8='), JSON.stringify(raw));
    o.ws.close(1000);
    await o.closed;
  });

  it('carries 64 MiB each way intact (binary)', async () => {
    const o = await open(await url([echo.port]), ['v4.channel.k8s.io']);
    const payload = randomPayload(64 << 20);
    await until('the port prefix on the data channel', () => o.channels.has(0));
    for (let offset = 0; offset < payload.length; offset += 1 << 20) {
      o.ws.send(Buffer.concat([Buffer.from([0]), payload.subarray(offset, offset + (1 << 20))]));
    }
    await until('the 64 MiB echo', () => channelBytes(o, 0).length === 2 + payload.length, { timeoutMs: 60_000 });
    assert.equal(sha256(channelBytes(o, 0).subarray(2)), sha256(payload));
    o.ws.close(1000);
    await o.closed;
  });

  it('closes the WebSocket normally once the app has closed its side (forwards over)', async () => {
    const o = await open(await url([answer.port]), ['v4.channel.k8s.io']);
    await until('the port prefix on the data channel', () => o.channels.has(0));
    // No half-close in v4: the app answers only at EOF, so close our side via the socket.
    o.ws.close(1000);
    assert.equal((await o.closed).code, 1000);
  });

  it('a client close ends the forward; the next WebSocket works', async () => {
    const o = await open(await url([echo.port]), ['v4.channel.k8s.io']);
    o.ws.terminate();
    await o.closed;
    const again = await open(await url([echo.port]), ['v4.channel.k8s.io']);
    again.ws.send(Buffer.from([0, 0x41]));
    await until('the echo on the next WebSocket', () => channelBytes(again, 0).length === 3);
    again.ws.close(1000);
    await again.closed;
  });

  it('writes the dial failure on the error channel and closes 1000 when the sandbox is gone', async () => {
    const gone = (await cri.call('RunPodSandbox', { config: podConfig('ws-gone') })).pod_sandbox_id;
    const { url: goneUrl } = await cri.call('PortForward', { pod_sandbox_id: gone, port: [80] });
    await cri.call('RemovePodSandbox', { pod_sandbox_id: gone });
    const o = await open(goneUrl, ['v4.channel.k8s.io']);
    const { code } = await o.closed;
    assert.equal(code, 1000);
    assert.match(channelBytes(o, 1).subarray(2).toString(), /error forwarding port 80 to pod .*network namespace for sandbox ".*" is closed/);
  });

  it('closes with a clear code and reason on malformed input', async () => {
    const cases: [string, (ws: WebSocket) => void, number, RegExp][] = [
      ['v4.channel.k8s.io', (ws) => ws.send(Buffer.from([7, 1, 2])), 1008, /unknown channel 7/],
      ['v4.channel.k8s.io', (ws) => ws.send(Buffer.from([1, 1])), 1008, /error channel/],
      ['v4.channel.k8s.io', (ws) => ws.send('0abc'), 1007, /text message/],
      ['v4.base64.channel.k8s.io', (ws) => ws.send('0%%%'), 1007, /invalid base64/],
      ['v4.base64.channel.k8s.io', (ws) => ws.send('0QUJ'), 1007, /invalid base64/],
      ['v4.base64.channel.k8s.io', (ws) => ws.send('9QUJD'), 1008, /unknown channel 9/],
      ['v4.base64.channel.k8s.io', (ws) => ws.send(Buffer.from([0, 1])), 1007, /binary message/],
    ];
    for (const [protocol, send, code, reason] of cases) {
      const o = await open(await url([echo.port]), [protocol]);
      await until('the port prefix on the error channel', () => o.channels.has(1));
      send(o.ws);
      const closed = await o.closed;
      assert.equal(closed.code, code, `${protocol}: ${reason}`);
      assert.match(closed.reason, reason);
    }
    // The server is unharmed.
    const ok = await open(await url([echo.port]), ['v4.channel.k8s.io']);
    ok.ws.close(1000);
    await ok.closed;
  });

  it('refuses a WebSocket whose token names no port, or an unknown subprotocol, with 400 and a body', async () => {
    await assert.rejects(open(await url([]), ['v4.channel.k8s.io']), /HTTP 400: port-forward over WebSocket needs the ports/);
    await assert.rejects(open(await url([echo.port]), ['v5.channel.k8s.io']), /HTTP 400: requested WebSocket subprotocols/);
  });

  it('answers with no subprotocol when none was offered (binary, as upstream)', async () => {
    const o = await open(await url([echo.port]), []);
    assert.equal(o.ws.protocol, '');
    await until('the port prefix on the error channel', () => o.channels.has(1));
    o.ws.close(1000);
    await once(o.ws, 'close');
  });
});

describe('WebSocket keepalive', { skip }, () => {
  let server: ServerProcess;
  let cri: CriTestClient;
  let sandboxId: string;
  let echo: PodApp;

  before(async () => {
    server = await startServer({ args: ['--websocket-ping-interval', '200ms', '--stream-idle-timeout', '1s'] });
    cri = criClient(server.criAddress);
    const { id, netns } = await runSandbox(cri, 'ws-ping');
    sandboxId = id;
    echo = await startPodApp(netns, 'echo');
  });

  after(async () => {
    await echo?.stop();
    if (!server) return;
    await cri.call('RemovePodSandbox', { pod_sandbox_id: sandboxId });
    cri.close();
    assert.equal(await server.stop(), 0);
    cleanUpAndAssertNothingLeft(server, server.dir);
  });

  it('pings an idle WebSocket; a client that answers (pong) outlives the idle timeout', async () => {
    const { url } = await cri.call('PortForward', { pod_sandbox_id: sandboxId, port: [echo.port] });
    const o = await open(url, ['v4.channel.k8s.io']);
    let pings = 0;
    o.ws.on('ping', () => pings++);
    // Time is the test here: the ping rate over 2 s, and outliving the 1 s idle timeout.
    await new Promise((r) => setTimeout(r, 2000));
    assert.ok(pings >= 5, `${pings} pings in 2 s`);
    assert.equal(o.ws.readyState, WebSocket.OPEN);
    o.ws.close(1000);
    await o.closed;
  });

  it('closes a WebSocket whose client is silent (no pong) after the idle timeout', async () => {
    const { url } = await cri.call('PortForward', { pod_sandbox_id: sandboxId, port: [echo.port] });
    const ws = new WebSocket(url.replace(/^http/, 'ws'), ['v4.channel.k8s.io'], { autoPong: false });
    const started = Date.now();
    const [code, reason] = (await once(ws, 'close')) as [number, Buffer];
    const elapsed = Date.now() - started;
    assert.equal(code, 1000);
    assert.equal(reason.toString(), 'idle timeout');
    assert.ok(elapsed >= 900 && elapsed < 4000, `closed after ${elapsed} ms`);
  });
});
