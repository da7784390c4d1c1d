// WebSocket v4 backpressure across channels: a data channel whose app does not read holds
// at most its bound, and then the WebSocket is not read at all (head-of-line, as SPDY),
// however much traffic another channel of the same WebSocket sees.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { startPodApp, type PodApp } from '../support/apps';
import { criClient, runSandbox, type CriTestClient } from '../support/cri-client';
import { rootSkipReason } from '../support/root';
import { cleanUpAndAssertNothingLeft, startServer, type ServerProcess } from '../support/server-process';
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
  let server: ServerProcess;
  let cri: CriTestClient;
  let sandboxId: string;
  let ignore: PodApp;
  let sink: PodApp;

  before(async () => {
    server = await startServer();
    cri = criClient(server.criAddress);
    const { id, netns } = await runSandbox(cri, 'ws-stall');
    sandboxId = id;
    ignore = await startPodApp(netns, 'ignore');
    sink = await startPodApp(netns, 'sink');
  });

  after(async () => {
    await ignore?.stop();
    await sink?.stop();
    if (!server) return;
    await cri.call('RemovePodSandbox', { pod_sandbox_id: sandboxId });
    cri.close();
    assert.equal(await server.stop(), 0);
    cleanUpAndAssertNothingLeft(server, server.dir);
  });

  it('is not read past its bound while another channel of the WebSocket is busy', async () => {
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
