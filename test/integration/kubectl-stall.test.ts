// A stream whose app never reads, beside a busy one, on one kubectl SPDY session. SPDY has
// no per-stream flow control, so once the stalled stream's receive buffer is full the
// session stops reading kubectl (head-of-line): --stream-stall-timeout bounds how long.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { KubectlPortForward } from '../support/kubectl';
import { app, endWorld, exitsWithin, kubectl, metric, sandbox, world, type World } from '../support/kubectl-world';
import { rootSkipReason } from '../support/root';
import { dial, queuedBytes, roundTrip } from '../support/tcp-client';
import { until, untilSteady } from '../support/until';

const skip = rootSkipReason();
const STALL_TIMEOUT_MS = 2_000;

describe('kubectl port-forward over SPDY: a stream that never drains', { skip }, () => {
  let w: World;
  let forward: KubectlPortForward;
  let netns: string | null;
  const local: Record<string, number> = {};
  const remote: Record<string, number> = {};

  before(async () => {
    w = await world(['--stream-stall-timeout', `${STALL_TIMEOUT_MS}ms`]);
    const pod = await sandbox(w, 'stall');
    netns = pod.netns;
    const apps = { ignore: await app(w, netns, 'ignore'), echo: await app(w, netns, 'echo') };
    forward = await kubectl(w, pod.id, [apps.ignore.port, apps.echo.port]);
    local.ignore = forward.localPorts[0]!;
    local.echo = forward.localPorts[1]!;
    remote.ignore = apps.ignore.port;
  });

  after(() => endWorld(w));

  it('is reset after the stall timeout, and the rest of the session flows again', { timeout: 60_000 }, async () => {
    const stalled = await dial(local.ignore!);
    const stalledEnd = new Promise<void>((resolve) => {
      stalled.once('close', () => resolve());
      stalled.on('error', () => undefined);
    });
    // Far more than the stream's bound and every kernel buffer on the way.
    const chunk = Buffer.alloc(1 << 20);
    for (let i = 0; i < 64; i++) stalled.write(chunk);
    await until('bytes to reach the app that does not read', () => queuedBytes(netns, remote.ignore!) > 0);
    // The session has stopped reading kubectl: kubectl stops taking our client's bytes.
    await untilSteady('the stalled client to stop draining', () => stalled.writableLength, { quietMs: 300, timeoutMs: 30_000 });
    const started = Date.now();
    // Behind the stalled stream on the same session: this answer comes only after its reset.
    assert.equal((await roundTrip(local.echo!, Buffer.from('flows again'))).toString(), 'flows again');
    const waitedMs = Date.now() - started;
    assert.equal(await metric(w, 'cri_portforward_stream_stall_resets_total'), 1);
    await stalledEnd; // kubectl closes the local connection of the reset stream
    assert.ok(waitedMs < STALL_TIMEOUT_MS * 5, `the other stream waited ${waitedMs} ms`);
    assert.equal(await exitsWithin(forward, 300), 'still running', 'the kubectl session lives on');
    assert.equal((await roundTrip(local.echo!, Buffer.from('and again'))).toString(), 'and again');
  });
});
