// kubectl 1.32 with its default transport: SPDY tunnelled in WebSocket
// (SPDY/3.1+portforward.k8s.io), relayed by FakeApiServer as kubelet's proxy would. Upstream
// runtimes refuse this upgrade and kubectl falls back to plain SPDY; we must answer 101.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { KubectlPortForward } from '../support/kubectl';
import { app, assertSandboxRemovalEndsKubectl, endWorld, kubectl, metric, sandbox, world, type World } from '../support/kubectl-world';
import { rootSkipReason } from '../support/root';
import { downloadIntact, randomPayload, roundTrip, sha256 } from '../support/tcp-client';

const skip = rootSkipReason();
const GiB = 2 ** 30;

describe('kubectl port-forward, default transport (SPDY in WebSocket)', { skip }, () => {
  let w: World;
  let pod: { id: string; netns: string | null };
  let forward: KubectlPortForward;
  const local: Record<string, number> = {};

  before(async () => {
    w = await world([], true);
    pod = await sandbox(w, 'tunnel');
    const echo = await app(w, pod.netns, 'echo');
    const answer = await app(w, pod.netns, 'answer-after-eof');
    const source = await app(w, pod.netns, `source:${GiB}`);
    forward = await kubectl(w, pod.id, [echo.port, answer.port, source.port]);
    [local.echo, local.answer, local.source] = forward.localPorts;
  });

  after(() => endWorld(w));

  it('is served through the tunnel: the WebSocket upgrade was answered 101, no fallback', async () => {
    assert.equal((await roundTrip(local.echo!, Buffer.from('via tunnel'))).toString(), 'via tunnel');
    const upgrades = w.api.upgrades.map((u) => [u.method, String(u.headers['sec-websocket-protocol'] ?? ''), u.responseStatusLine]);
    assert.deepEqual(upgrades, [['GET', 'SPDY/3.1+portforward.k8s.io', 'HTTP/1.1 101 Switching Protocols']]);
    assert.equal(await metric(w, 'cri_portforward_sessions_total{protocol="spdy-websocket"}'), 1);
  });

  it('carries 16 concurrent connections x 1 MiB, sha256-equal', async () => {
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        const payload = randomPayload(1 << 20);
        assert.equal(sha256(await roundTrip(local.echo!, payload)), sha256(payload));
      }),
    );
  });

  it('propagates half-close through the tunnel', async () => {
    assert.deepEqual(await roundTrip(local.answer!, Buffer.from('abc')), Buffer.alloc(100, 'x'));
  });

  it('downloads 1 GiB intact', async () => {
    await downloadIntact(local.source!, GiB);
  });

  it('tells kubectl when the sandbox is removed: kubectl exits non-zero', () => assertSandboxRemovalEndsKubectl(w, 'tunnel-doomed'));
});
