// WebSocket v4 backpressure across channels: a data channel whose app does not read holds
// at most its bound, and then the WebSocket is not read at all (head-of-line, as SPDY),
// however much traffic another channel of the same WebSocket sees.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { startAppSandbox, type AppSandbox } from '../support/app-sandbox';
import type { PodApp } from '../support/apps';
import { rootSkipReason } from '../support/root';
import { cleanUpAndAssertNothingLeft } from '../support/server-process';
import { openChannels } from '../support/ws-client';

const skip = rootSkipReason();

/** Bytes queued for the app that never reads: far more than any buffer on the way. */
const STALLED_BYTES = 48 << 20;
/** Small, so that every read of the socket also holds messages for the other channel. */
const MESSAGE_BYTES = 16 << 10;
/** How long the other channel keeps sending while we watch the server not read. */
const OTHER_CHANNEL_TRAFFIC_MS = 2_000;

function rssBytes(pid: number): number {
  const kib = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  return Number(kib) * 1024;
}

describe('WebSocket port-forward: one stalled channel', { skip }, () => {
  let world: AppSandbox;

  before(async () => {
    world = await startAppSandbox(['ignore', 'sink'], [], 'ws-stall');
  });

  after(async () => {
    if (!world) return;
    assert.equal(await world.stop(), 0);
    cleanUpAndAssertNothingLeft(world.server, world.server.dir);
  });

  it('is not read past its bound while another channel of the WebSocket is busy', async () => {
    const { server, cri, sandboxId } = world;
    const [ignore, sink] = world.apps as [PodApp, PodApp];
    const { url } = await cri.call('PortForward', { pod_sandbox_id: sandboxId, port: [ignore.port, sink.port] });
    const { ws } = await openChannels(url, ['v4.channel.k8s.io']);
    const rssAtStart = rssBytes(server.proc.pid!);
    const stalled = Buffer.alloc(1 + MESSAGE_BYTES, 's');
    stalled[0] = 0; // data channel of the app that never reads
    // The other data channel carries small messages, interleaved, to an app that reads them.
    const busy = Buffer.alloc(1 + 1024, 'b');
    busy[0] = 2;
    for (let sent = 0; sent < STALLED_BYTES; sent += MESSAGE_BYTES) {
      ws.send(stalled);
      ws.send(busy);
    }
    // Time is what this test is about: the server must go on not reading for this long.
    const until = Date.now() + OTHER_CHANNEL_TRAFFIC_MS;
    while (Date.now() < until) {
      ws.send(busy);
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    const taken = STALLED_BYTES - ws.bufferedAmount;
    const grown = rssBytes(server.proc.pid!) - rssAtStart;
    // The server holds 1 MiB for the channel and 1 MiB queued on the pod socket; the kernel
    // holds a few MiB in the two sockets' buffers. Far from the 48 MiB we offered.
    assert.ok(taken < 24 << 20, `the server read ${taken >> 20} MiB of ${STALLED_BYTES >> 20} MiB meant for an app that does not read`);
    assert.ok(grown < 24 << 20, `server RSS grew by ${grown >> 20} MiB`);
    ws.terminate();
  });
});
