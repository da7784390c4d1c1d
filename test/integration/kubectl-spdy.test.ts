// kubectl port-forward over plain SPDY (KUBECTL_PORT_FORWARD_WEBSOCKETS=false) through
// FakeApiServer, which relays the upgrade to our streaming server as kubelet does, into
// apps in real network namespaces: the cases of upstream's e2e suite and our error policy.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { PodApp } from '../support/apps';
import type { KubectlPortForward } from '../support/kubectl';
import { app, assertNextConnectionEndsKubectl, assertSandboxRemovalEndsKubectl, endWorld, exitsWithin, kubectl, metric, sandbox, world, type World } from '../support/kubectl-world';
import { rootSkipReason } from '../support/root';
import { hasLogged } from '../support/server-process';
import { collect, dial, downloadIntact, queuedBytes, randomPayload, roundTrip, sha256 } from '../support/tcp-client';
import { until, untilSteady } from '../support/until';

const skip = rootSkipReason();
const GiB = 2 ** 30;
const IDLE_TIMEOUT_MS = 8_000;
const IDLE_TIMEOUT = ['--stream-idle-timeout', `${IDLE_TIMEOUT_MS / 1000}s`];

describe('kubectl port-forward over SPDY', { skip }, () => {
  let w: World;
  let pod: { id: string; netns: string | null };
  let forward: KubectlPortForward;
  const local: Record<string, number> = {};
  /** The apps' ports inside the sandbox. */
  const remote: Record<string, number> = {};
  let unusedPort = 0;
  let ignoring: PodApp;

  before(async () => {
    w = await world(IDLE_TIMEOUT);
    pod = await sandbox(w, 'web');
    const apps = {
      echo: await app(w, pod.netns, 'echo'),
      answer: await app(w, pod.netns, 'answer-after-eof'),
      source: await app(w, pod.netns, `source:${GiB}`),
      v6: await app(w, pod.netns, 'echo', '::1'),
      any: await app(w, pod.netns, 'echo', '0.0.0.0'),
      ignore: await app(w, pod.netns, 'ignore'),
      writer: await app(w, pod.netns, `source:${64 << 20}`),
      reply: await app(w, pod.netns, 'reply-and-close:64'),
    };
    ignoring = apps.ignore;
    unusedPort = apps.echo.port === 1 ? 2 : 1;
    const names = [...Object.keys(apps), 'unused'];
    forward = await kubectl(w, pod.id, [...Object.values(apps).map((a) => a.port), unusedPort]);
    names.forEach((name, i) => (local[name] = forward.localPorts[i]!));
    for (const [name, a] of Object.entries(apps)) remote[name] = a.port;
  });

  after(() => endWorld(w));

  it('a connection the app answers and closes ends as a close in the audit trail, not an error, though kubectl resets its data stream then', async () => {
    // client-go (1.29+) resets the data stream once the pod's side of it has ended, while its
    // own side is still open: the client here keeps its side open until the answer's EOF.
    const connections = 10;
    for (let i = 0; i < connections; i++) {
      const socket = await dial(local.reply!);
      const received = collect(socket);
      socket.write(Buffer.alloc(64, 'q'));
      const { data, error } = await received;
      socket.destroy();
      assert.equal(error, undefined);
      assert.equal(data.length, 64);
    }
    const ended = await until('a forward-ended line per connection', () => {
      const lines = w.server.logs.filter((l) => l.msg === 'forward ended' && l.port === remote.reply);
      return lines.length === connections && lines;
    });
    assert.deepEqual(
      ended.filter((l) => l.reason !== 'done' && l.reason !== 'client-closed').map((l) => `${String(l.reason)}: ${String(l.err)}`),
      [],
    );
    assert.ok(ended.every((l) => l.err === undefined && l.bytesToPod === 64 && l.bytesToClient === 64), JSON.stringify(ended));
  });

  it('connects and disconnects sending nothing: the app sees EOF, the client 0 bytes', async () => {
    assert.equal((await roundTrip(local.echo!, Buffer.alloc(0))).length, 0);
  });

  it('carries 64 concurrent connections x 1 MiB through an echo app, sha256-equal', async () => {
    await Promise.all(
      Array.from({ length: 64 }, async () => {
        const payload = randomPayload(1 << 20);
        const echoed = await roundTrip(local.echo!, payload);
        assert.equal(echoed.length, payload.length);
        assert.equal(sha256(echoed), sha256(payload));
      }),
    );
  });

  it('propagates half-close: "abc" then CloseWrite, the 100-byte answer arrives', async () => {
    const answer = await roundTrip(local.answer!, Buffer.from('abc'));
    assert.deepEqual(answer, Buffer.alloc(100, 'x'));
  });

  it('reaches apps bound to ::1 only and to 0.0.0.0', async () => {
    assert.equal((await roundTrip(local.v6!, Buffer.from('six'))).toString(), 'six');
    assert.equal((await roundTrip(local.any!, Buffer.from('any'))).toString(), 'any');
  });

  it('resets only the refused connection (default policy): kubectl lives on, the next one works', async () => {
    const refusedBefore = await metric(w, 'cri_portforward_dial_errors_total{reason="refused"}');
    const socket = await dial(local.unused!);
    const { data } = await collect(socket);
    socket.destroy();
    assert.equal(data.length, 0);
    assert.equal(await exitsWithin(forward, 500), 'still running');
    assert.equal((await roundTrip(local.echo!, Buffer.from('after refused'))).toString(), 'after refused');
    assert.equal(await metric(w, 'cri_portforward_dial_errors_total{reason="refused"}'), refusedBefore + 1);
  });

  it('survives a client that drops while the app writes', async () => {
    const socket = await dial(local.writer!);
    await new Promise<void>((resolve) => socket.once('data', () => resolve()));
    socket.destroy();
    // The server ends that connection (the only one to the writing app) once the app is done
    // (kubectl gives no signal: its reset after its own FIN sends nothing), and lives on.
    await until('the server to end the dropped connection', () => hasLogged(w.server, { msg: 'forward ended', port: remote.writer }));
    assert.equal((await roundTrip(local.echo!, Buffer.from('next'))).toString(), 'next');
  });

  it('downloads 1 GiB intact', async () => {
    await downloadIntact(local.source!, GiB);
  });

  it('does not let one stalled app stall the others while its buffer bound holds, and bounds memory', async () => {
    const rss = (): number => Number(readFileSync(`/proc/${w.server.proc.pid}/statm`, 'utf8').split(' ')[1]) * 4096;
    const stalled = await dial(local.ignore!);
    stalled.on('error', () => undefined);
    stalled.write(Buffer.alloc(512 * 1024));
    // The 512 KiB have come through kubectl and the session and sit, unread, at the app.
    const unread = (): number => queuedBytes(pod.netns, remote.ignore!);
    await until('bytes to reach the stalled app', () => unread() > 0);
    await untilSteady('the bytes to the stalled app to stop moving', unread, { intervalMs: 50 });
    assert.equal((await roundTrip(local.echo!, Buffer.from('not stalled'))).toString(), 'not stalled');
    // Far past the bound: the session stops reading kubectl, so memory stays flat.
    const before = rss();
    const chunk = Buffer.alloc(1 << 20);
    for (let i = 0; i < 64; i++) stalled.write(chunk);
    // Until kubectl stops taking bytes from the client: the stall has reached it.
    await untilSteady('the stalled client to stop draining', () => stalled.writableLength, { quietMs: 500, timeoutMs: 30_000 });
    const grown = rss() - before;
    assert.ok(grown < 48 * 1024 * 1024, `server RSS grew ${grown} bytes`);
    stalled.destroy();
    // The app never reads: stopping it resets the pod socket and frees the session.
    await ignoring.stop();
  });
});

describe('kubectl port-forward over SPDY: session-wide cases', { skip }, () => {
  let w: World;
  before(async () => {
    w = await world(IDLE_TIMEOUT);
  });
  after(() => endWorld(w));

  it('forwards to a host-network sandbox', async () => {
    const host = await sandbox(w, 'host', true);
    const echo = await app(w, null, 'echo');
    const forward = await kubectl(w, host.id, [echo.port]);
    assert.equal((await roundTrip(forward.localPorts[0]!, Buffer.from('host'))).toString(), 'host');
  });

  it("keeps an idle session alive past the idle timeout with kubectl's PINGs", async () => {
    const pod = await sandbox(w, 'idle');
    const echo = await app(w, pod.netns, 'echo');
    const forward = await kubectl(w, pod.id, [echo.port]);
    assert.equal((await roundTrip(forward.localPorts[0]!, Buffer.from('1'))).toString(), '1');
    // Time is the test here: the session must outlive twice the idle timeout with no data.
    await new Promise((r) => setTimeout(r, 2 * IDLE_TIMEOUT_MS));
    // kubectl PINGs every 5 s: by now at least 3 have been answered.
    await until('3 PINGs answered', async () => (await metric(w, 'cri_portforward_spdy_pings_total')) >= 3);
    assert.equal(await exitsWithin(forward, 10), 'still running');
    assert.equal((await roundTrip(forward.localPorts[0]!, Buffer.from('2'))).toString(), '2');
    assert.ok((await metric(w, 'cri_portforward_spdy_pings_total')) >= 3);
  });

  it('tells kubectl when the sandbox is removed mid-session: kubectl exits non-zero', () => assertSandboxRemovalEndsKubectl(w, 'doomed'));
});

describe('kubectl port-forward over SPDY with --refused-dial=error', { skip }, () => {
  let w: World;
  before(async () => {
    w = await world(['--refused-dial', 'error']);
  });
  after(() => endWorld(w));

  it('reports the refused dial as upstream does: the error text, and kubectl exits', async () => {
    const pod = await sandbox(w, 'strict');
    const forward = await kubectl(w, pod.id, [1]);
    await assertNextConnectionEndsKubectl(forward, /failed to connect to localhost:1 inside namespace/);
  });
});
