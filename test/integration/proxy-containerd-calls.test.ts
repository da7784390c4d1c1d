// Long-lived and cut-short calls through proxy mode, against each containerd release the
// harness runs (1.6, 1.7, 2.1): the container-event stream kubelet watches delivers through
// our socket what containerd's own socket delivers, byte for byte; a call whose deadline
// passes ends through us as it ends directly (a status, or containerd 2.x's RST_STREAM), at
// the same moment; a cancelled stream leaves no handler behind in containerd.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { CONTAINERD_RELEASES, containerdPodConfig, containerdSkipReason, removeAllSandboxes, startContainerd, type PrivateContainerd } from '../support/containerd';
import { startProxy, stopProxy, type ProxiedCri } from '../support/proxy';
import { until } from '../support/until';

const skip = containerdSkipReason();
const EVENTS_PATH = '/runtime.v1.RuntimeService/GetContainerEvents';

interface CallEnd {
  reset?: string;
  grpcStatus?: string;
  seconds: number;
}

/** A raw HTTP/2 call by curl (nghttp2), which enforces no deadline of its own: how the server ends it, and when. */
async function curlCall(socket: string, path: string, timeout: string): Promise<CallEnd> {
  const args = ['-s', '-v', '--max-time', '3', '--unix-socket', socket, '--http2-prior-knowledge', '-X', 'POST', '-H', 'content-type: application/grpc', '-H', 'te: trailers', '-H', `grpc-timeout: ${timeout}`, '--data-binary', '@-', '-o', '/dev/null', '-w', '%{time_total}', `http://localhost${path}`];
  const curl = spawn('curl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  curl.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  curl.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  curl.stdin.end(Buffer.alloc(5));
  await once(curl, 'close');
  const reset = /not closed cleanly: (\w+) \(err (\d+)\)/.exec(stderr);
  return { reset: reset ? `${reset[1]} ${reset[2]}` : undefined, grpcStatus: /< grpc-status: (\d+)/.exec(stderr)?.[1], seconds: Number(stdout) };
}

/** Subscribe to container events: every message's raw bytes, and how the call ended. */
function watchEvents(address: string): { messages: Buffer[]; status: Promise<grpc.StatusObject>; cancel(): void; close(): void } {
  const client = new grpc.Client(address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
  const call = client.makeServerStreamRequest(EVENTS_PATH, (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0));
  const messages: Buffer[] = [];
  call.on('data', (m: Buffer) => messages.push(m));
  call.on('error', () => undefined); // the status carries it
  const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
  return { messages, status, cancel: () => call.cancel(), close: () => client.close() };
}

/** Goroutines in containerd now serving GetContainerEvents (its pprof on the debug socket). */
async function eventHandlers(c: PrivateContainerd): Promise<number> {
  const curl = spawn('curl', ['-s', '--max-time', '5', '--unix-socket', c.debugSocket, 'http://localhost/debug/pprof/goroutine?debug=2'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  curl.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await once(curl, 'close');
  assert.match(out, /^goroutine \d+/m, 'containerd answers its pprof goroutine dump');
  return out.split('\n\n').filter((g) => g.includes('GetContainerEvents')).length;
}

for (const release of CONTAINERD_RELEASES) {
  describe(`proxy mode: long and cut-short calls, containerd ${release}`, { skip }, () => {
    let containerd: PrivateContainerd;
    let p: ProxiedCri;

    before(async () => {
      containerd = await startContainerd({ release });
      p = await startProxy(containerd.address);
    });

    after(async () => {
      if (containerd) await removeAllSandboxes(containerd.address);
      await stopProxy(p);
      await containerd?.stop();
    });

    it('GetContainerEvents through us delivers what containerd delivers for a sandbox made, stopped and removed', async () => {
      // One subscriber at a time: containerd 1.7 and 2.1 hand each event to one reader.
      const eventsOf = async (address: string, name: string): Promise<{ code: number | undefined; mentions: number }> => {
        const w = watchEvents(address);
        try {
          await new Promise((r) => setTimeout(r, 200)); // subscribed before the sandbox exists
          const id = (await p.viaProxy.call('RunPodSandbox', { config: containerdPodConfig(containerd, name) })).pod_sandbox_id;
          await p.viaProxy.call('StopPodSandbox', { pod_sandbox_id: id });
          await p.viaProxy.call('RemovePodSandbox', { pod_sandbox_id: id });
          const ended = await Promise.race([w.status, new Promise<undefined>((r) => setTimeout(() => r(undefined), 1500))]);
          return { code: ended?.code, mentions: w.messages.filter((m) => m.includes(id)).length };
        } finally {
          w.cancel();
          w.close();
        }
      };
      const direct = await eventsOf(containerd.address, 'events-direct');
      const through = await eventsOf(p.proxy.criAddress, 'events-through');
      assert.equal(through.code, direct.code, 'the stream ends (or not) alike');
      if (direct.code === grpc.status.UNIMPLEMENTED) return; // containerd 1.6 has no event stream
      assert.equal(direct.code, undefined);
      // Not an exact count: a cancelled subscriber lives on in containerd until it is handed
      // one more event, which the next subscriber then misses (so on 1.7, directly too).
      for (const [side, got] of [['direct', direct], ['through us', through]] as const) {
        assert.ok(got.mentions >= 3, `${side}: created, stopped, deleted: ${got.mentions} events name the sandbox`);
      }
    });

    it('a call whose 1 s deadline passes ends through us as it does directly, at the same moment', async () => {
      const direct = await curlCall(containerd.socket, EVENTS_PATH, '1S');
      const through = await curlCall(p.proxy.criAddress.slice('unix://'.length), EVENTS_PATH, '1S');
      assert.deepEqual({ reset: through.reset, grpcStatus: through.grpcStatus }, { reset: direct.reset, grpcStatus: direct.grpcStatus });
      // containerd 1.7 keeps the stream open past its deadline (curl gives up after 3 s on both).
      assert.ok(Math.abs(through.seconds - direct.seconds) < 0.1, `direct ${direct.seconds} s, through us ${through.seconds} s`);
    });

    it('a client that cancels event streams leaves nothing behind: containerd ends its handlers at the next event, as for direct cancels', async () => {
      // containerd notices a cancelled subscriber when it next has an event for it (a direct
      // cancel leaves the handler just as long): one event first ends what earlier tests left.
      const flush = async (name: string): Promise<void> => {
        const id = (await p.direct.call('RunPodSandbox', { config: containerdPodConfig(containerd, name) })).pod_sandbox_id;
        await p.direct.call('RemovePodSandbox', { pod_sandbox_id: id });
        await until('no event handler left in containerd', async () => (await eventHandlers(containerd)) === 0, { timeoutMs: 5000, intervalMs: 100 });
      };
      await flush('before-cancels');
      // One at a time: containerd 1.7 hands an event to one subscriber, so only that one ends.
      for (let i = 0; i < 3; i++) {
        const w = watchEvents(p.proxy.criAddress);
        // containerd 1.6 answers UNIMPLEMENTED at once: no handler to see.
        if (release !== '1.6') await until('the subscription open in containerd', async () => (await eventHandlers(containerd)) === 1, { timeoutMs: 5000, intervalMs: 50 });
        w.cancel();
        await w.status;
        w.close();
        await flush(`after-cancel-${i}`);
      }
    });
  });
}
