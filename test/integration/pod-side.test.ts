// The pod side: dials through the native setns addon into real namespaces made by the
// embedded store, real TCP apps inside them, and the pipe between a client and the app.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { createServer, Socket } from 'node:net';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '../../src/log';
import { addon } from '../../src/netns/addon';
import { DialError, Forwarder } from '../../src/netns/forwarder';
import { forgetNamespace, NETNS_HANDLE_IDLE_MS } from '../../src/netns/handles';
import { EmbeddedSandboxStore } from '../../src/sandbox/embedded';
import { Duplex } from 'node:stream';
import { idleReadBufferCount, Pipe, POD_BULK_READ_BUFFER_BYTES, POD_WRITE_HIGH_WATER_MARK } from '../../src/pipe';
import { DuplexClient } from '../../src/pipe-client';
import { startPodApp, type PodApp } from '../support/apps';
import { dialMany, runEmbeddedSandbox } from '../support/embedded';
import { mountsUnder } from '../support/mounts';
import { namespaceFds, namespaceInodeFds } from '../support/namespace-fds';
import { PipeHarness } from '../support/pipe-harness';
import { rootSkipReason } from '../support/root';
import { makeTempDir } from '../support/server-process';
import { until, untilSteady } from '../support/until';

const skip = rootSkipReason();

function readAll(socket: Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  return new Promise((resolve, reject) => {
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
  });
}

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** This process's socket fds. */
function socketFdCount(): number {
  let count = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith('socket:')) count++;
    } catch {
      // closed while we looked
    }
  }
  return count;
}

/** Write `payload` on a connected fd, end, and read back all the app answers. */
async function echoOnFd(fd: number, payload: Buffer): Promise<{ answer: Buffer; remoteAddress: string | undefined }> {
  const socket = new Socket({ fd, readable: true, writable: true });
  const remoteAddress = socket.remoteAddress;
  const answer = readAll(socket);
  socket.end(payload);
  return { answer: await answer, remoteAddress };
}

/** Network namespace of every thread of this process. */
function threadNamespaces(): Set<string> {
  return new Set(readdirSync('/proc/self/task').map((tid) => readlinkSync(`/proc/self/task/${tid}/ns/net`)));
}

async function echoRoundTrip(forwarded: { client: Socket }, payload: Buffer): Promise<Buffer> {
  const received = readAll(forwarded.client);
  forwarded.client.end(payload);
  return received;
}

/** Each thread of this process and its scheduling policy (field 41 of its stat). */
function threadPolicies(): Map<number, number> {
  const policies = new Map<number, number>();
  for (const tid of readdirSync('/proc/self/task')) {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from 3 on
    policies.set(Number(tid), Number(fields[41 - 3]));
  }
  return policies;
}

describe('pod side: dial in the sandbox namespace and pipe', { skip }, () => {
  const dir = skip ? '' : makeTempDir();
  const log = createLogger('error');
  const apps: PodApp[] = [];
  let store: EmbeddedSandboxStore;
  let forwarder: Forwarder;
  let harness: PipeHarness;
  let sandboxId: string;
  let netnsPath: string;
  let fdsAtStart: number;

  const app = async (...args: Parameters<typeof startPodApp>): Promise<PodApp> => {
    const started = await startPodApp(...args);
    apps.push(started);
    return started;
  };

  before(async () => {
    fdsAtStart = fdCount();
    store = await EmbeddedSandboxStore.open(`${dir}/state`, log, { namespaceRemoving: forgetNamespace });
    forwarder = new Forwarder(store);
    harness = await PipeHarness.start();
    const record = await runEmbeddedSandbox(store, 'pod');
    sandboxId = record.id;
    netnsPath = record.netnsPath!;
  });

  after(async () => {
    await Promise.all(apps.map((a) => a.stop()));
    await harness?.close();
    if (store) {
      for (const s of store.list()) await store.remove(s.id);
      await store.close();
    }
    if (!dir) return;
    const leftovers = mountsUnder(dir);
    for (const m of leftovers) execFileSync('umount', [m]);
    rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(leftovers, [], 'no namespace left mounted');
    // Let the last sockets finish closing before counting descriptors.
    await until('the last sockets to close', () => fdCount() <= fdsAtStart, { timeoutMs: 5_000 }).catch(() => undefined);
    assert.equal(fdCount(), fdsAtStart, 'no fd left open');
  });

  it('reaches an app on 127.0.0.1 inside the namespace, not the host', async () => {
    const echo = await app(netnsPath, 'echo', '127.0.0.1');
    const forwarded = await harness.forward(forwarder, sandboxId, echo.port);
    assert.equal(forwarded.pod.remoteAddress, '127.0.0.1');
    assert.equal((await echoRoundTrip(forwarded, Buffer.from('hello pod'))).toString(), 'hello pod');
    assert.equal((await forwarded.result).outcome, 'done');
    // The same port on the host's loopback has nothing listening.
    await assert.rejects(new Promise((resolve, reject) => {
      const probe = createServer().listen(echo.port, '127.0.0.1', () => probe.close(resolve));
      probe.on('error', reject);
    }).then(() => Promise.reject(new Error('port free on the host, as expected'))), /as expected/);
  });

  it('falls back to [::1] for an IPv6-only app', async () => {
    const v6 = await app(netnsPath, 'echo', '::1');
    const forwarded = await harness.forward(forwarder, sandboxId, v6.port);
    assert.equal(forwarded.pod.remoteAddress, '::1');
    assert.equal((await echoRoundTrip(forwarded, Buffer.from('six'))).toString(), 'six');
  });

  it('reaches an app bound to 0.0.0.0', async () => {
    const any = await app(netnsPath, 'echo', '0.0.0.0');
    const forwarded = await harness.forward(forwarder, sandboxId, any.port);
    assert.equal((await echoRoundTrip(forwarded, Buffer.from('any'))).toString(), 'any');
  });

  it('reports both refused dials in upstream format when nothing listens', async () => {
    const err = await forwarder.open(sandboxId, 1).then(
      () => assert.fail('dial must fail'),
      (e: unknown) => e as DialError,
    );
    assert.ok(err instanceof DialError);
    assert.equal(err.failure, 'refused');
    assert.equal(
      err.message,
      `failed to execute portforward in network namespace "${netnsPath}": failed to connect to localhost:1 inside namespace "${sandboxId}", ` +
        'IPv4: dial tcp4 127.0.0.1:1: connect: connection refused IPv6 dial tcp6 [::1]:1: connect: connection refused ',
    );
  });

  it('reaches an app on the host loopback for a host-network sandbox', async () => {
    const host = await runEmbeddedSandbox(store, 'host', 'NODE');
    const onHost = await app(null, 'echo', '127.0.0.1');
    const forwarded = await harness.forward(forwarder, host.id, onHost.port);
    assert.equal((await echoRoundTrip(forwarded, Buffer.from('host'))).toString(), 'host');
    await store.remove(host.id);
  });

  it('says the namespace is closed when the sandbox was removed, or its namespace vanished', async () => {
    const gone = await runEmbeddedSandbox(store, 'gone');
    // Vanished: the bind mount is gone but the record says READY (what a reboot leaves).
    execFileSync('umount', [gone.netnsPath!]);
    const vanished = await forwarder.open(gone.id, 80).catch((e: unknown) => e as DialError);
    assert.ok(vanished instanceof DialError);
    assert.equal(vanished.failure, 'netns-closed');
    assert.match(vanished.message, new RegExp(`^network namespace for sandbox "${gone.id}" is closed`));
    await store.remove(gone.id);
    const removed = await forwarder.open(gone.id, 80).catch((e: unknown) => e as DialError);
    assert.ok(removed instanceof DialError);
    assert.equal(removed.failure, 'sandbox-gone');
    assert.equal(removed.message, `network namespace for sandbox "${gone.id}" is closed`);
  });

  it('leaves every thread in the host namespace and no fd open but the namespace handle after 10 000 dials', async () => {
    const echo = await app(netnsPath, 'echo', '127.0.0.1');
    const hostNs = readlinkSync('/proc/self/ns/net');
    addon.forgetNetns();
    // Earlier tests' sockets may still be closing: count once the number holds still.
    const fdsBefore = await untilSteady('the fd count to settle', fdCount, { quietMs: 100 });
    const socketsBefore = socketFdCount();
    // 8 dials in flight keep every libuv worker thread busy with setns.
    await dialMany(forwarder, sandboxId, echo.port, 10_000, 8);
    assert.deepEqual([...threadNamespaces()], [hostNs]);
    assert.equal(namespaceFds(netnsPath), 1, 'one handle on the namespace, kept for the next dials');
    // With it, the spare sockets its dials made there for the next dials (at most 16),
    // counted once a refill still running on a worker thread has handed its sockets over.
    const spares = await untilSteady('the spare sockets to settle', () => socketFdCount() - socketsBefore, { quietMs: 100 });
    assert.ok(spares >= 0 && spares <= 16, `${spares} spare sockets`);
    assert.equal(fdCount(), fdsBefore + 1 + spares);
    addon.forgetNetns();
    assert.equal(fdCount(), fdsBefore);
    // The threads that dialled run SCHED_BATCH (waking one must not preempt the main
    // thread); the main thread keeps the normal policy.
    const SCHED_OTHER = 0;
    const SCHED_BATCH = 3;
    const policies = threadPolicies();
    assert.equal(policies.get(process.pid), SCHED_OTHER);
    assert.ok([...policies.values()].includes(SCHED_BATCH), `thread policies: ${JSON.stringify([...policies])}`);
  });

  it('connects later dials from spare sockets made in the namespace, and closes them with its handle', async () => {
    const echo = await app(netnsPath, 'echo', '127.0.0.1');
    const v6 = await app(netnsPath, 'echo', '::1');
    addon.forgetNetns();
    const fdsBefore = await untilSteady('the fd count to settle', fdCount, { quietMs: 100 });
    const socketsBefore = socketFdCount();
    // A dial with no spare goes to a worker thread, which enters the namespace and makes
    // spare sockets there while it is in.
    closeSync(await forwarder.open(sandboxId, echo.port));
    const spares = socketFdCount() - socketsBefore;
    assert.ok(spares >= 1 && spares <= 16, `${spares} spare sockets after the first dial`);
    // Each connects on this thread, synchronously, to the app inside the namespace.
    const connected: number[] = [];
    for (let fd = addon.dialSpare(netnsPath, echo.port); typeof fd === 'number' && fd >= 0; fd = addon.dialSpare(netnsPath, echo.port)) {
      connected.push(fd);
    }
    assert.equal(connected.length, spares, 'every spare connected, then none is left (-1)');
    const { answer, remoteAddress } = await echoOnFd(connected[0]!, Buffer.from('spare'));
    assert.equal(answer.toString(), 'spare');
    assert.equal(remoteAddress, '127.0.0.1');
    for (const fd of connected.slice(1)) closeSync(fd);
    // Running low, they were refilled in the background: a later dial finds one again. (The
    // refill's sockets show in the fd count before the worker hands them over: on a busy
    // machine, counting them was not enough.)
    const refilled = await until(
      'a refilled spare',
      () => {
        const fd = addon.dialSpare(netnsPath, echo.port);
        return typeof fd === 'number' && fd >= 0 ? fd : undefined;
      },
      { timeoutMs: 2_000 },
    );
    closeSync(refilled);
    // A port nothing listens on: the refusal comes back for a worker thread to try [::1].
    assert.deepEqual(addon.dialSpare(netnsPath, 1), { errno4: 111 /* ECONNREFUSED */ });
    // The Forwarder does exactly that for an IPv6-only app.
    const six = await echoOnFd(await forwarder.open(sandboxId, v6.port), Buffer.from('six'));
    assert.deepEqual([six.answer.toString(), six.remoteAddress], ['six', '::1']);
    // The spares are the handle's: forgetting it closes them.
    assert.ok(socketFdCount() > socketsBefore);
    addon.forgetNetns(netnsPath);
    assert.equal(addon.dialSpare(netnsPath, echo.port), -1);
    await until('the connections to close', () => fdCount() === fdsBefore, { timeoutMs: 2_000 });
    assert.equal(socketFdCount(), socketsBefore);
  });

  it('waits out a connect the app does not answer (SYNs dropped), on a worker thread, then tries [::1]', async () => {
    const echo = await app(netnsPath, 'echo', '127.0.0.1');
    const silent = await app(netnsPath, 'echo', '127.0.0.1');
    addon.forgetNetns();
    const fdsBefore = await untilSteady('the fd count to settle', fdCount, { quietMs: 100 });
    const drop = ['-p', 'tcp', '--dport', String(silent.port), '--syn', '-j', 'DROP'];
    execFileSync('nsenter', [`--net=${netnsPath}`, 'iptables', '-I', 'INPUT', ...drop]);
    try {
      const quick = new Forwarder(store, { dialTimeoutMs: 1_000 });
      closeSync(await quick.open(sandboxId, echo.port)); // leaves spares
      // A spare's connect is still under way when dialSpare returns: a worker waits for it.
      const left = addon.dialSpare(netnsPath, silent.port);
      assert.ok(typeof left === 'object' && typeof left.connectingFd === 'number' && left.connectingFd >= 0, JSON.stringify(left));
      const waited = Date.now();
      const raw = await addon.dialInNetns(netnsPath, silent.port, 1_000, left.connectingFd, 0);
      assert.ok(Date.now() - waited >= 900, 'waited for the deadline');
      assert.deepEqual(raw, { fd: -1, errno4: 110 /* ETIMEDOUT */, errno6: 111 /* ECONNREFUSED */, nsErrno: 0 });
      // And through the Forwarder, in upstream's words.
      const err = await quick.open(sandboxId, silent.port).catch((e: unknown) => e as DialError);
      assert.ok(err instanceof DialError);
      assert.match(err.message, new RegExp(`IPv4: dial tcp4 127\\.0\\.0\\.1:${silent.port}: connect: connection timed out IPv6 dial tcp6 \\[::1\\]:${silent.port}: connect: connection refused $`));
    } finally {
      execFileSync('nsenter', [`--net=${netnsPath}`, 'iptables', '-D', 'INPUT', ...drop]);
    }
    addon.forgetNetns();
    await until('the sockets to close', () => fdCount() === fdsBefore, { timeoutMs: 2_000 });
  });

  it('opens the namespace once for a burst of dials and closes it once they stop', async () => {
    const echo = await app(netnsPath, 'echo', '127.0.0.1');
    addon.forgetNetns();
    assert.equal(namespaceFds(netnsPath), 0);
    await dialMany(forwarder, sandboxId, echo.port, 500, 8);
    assert.equal(namespaceFds(netnsPath), 1, '500 dials share one handle on the namespace');
    const idleSince = Date.now();
    await until('the idle handle to be closed', () => namespaceFds(netnsPath) === 0, { timeoutMs: 4 * NETNS_HANDLE_IDLE_MS });
    assert.ok(Date.now() - idleSince >= NETNS_HANDLE_IDLE_MS - 50, 'kept for the dials of the next second');
  });

  it('closes the namespace handle of a removed sandbox at once', async () => {
    const removed = await runEmbeddedSandbox(store, 'removed');
    // A refused dial keeps the handle too (its namespace is the path's).
    const refused = await forwarder.open(removed.id, 1).catch((e: unknown) => e as DialError);
    assert.equal((refused as DialError).failure, 'refused');
    assert.equal(namespaceFds(removed.netnsPath!), 1);
    // A dial that connected leaves spare sockets in the namespace: they go too.
    const echo = await app(removed.netnsPath!, 'echo', '127.0.0.1');
    const socketsBefore = socketFdCount();
    closeSync(await forwarder.open(removed.id, echo.port));
    assert.ok(socketFdCount() > socketsBefore, 'spare sockets kept');
    const pinned = statSync(removed.netnsPath!);
    await store.remove(removed.id);
    assert.equal(namespaceInodeFds(pinned), 0, 'no fd left on the removed namespace');
    assert.equal(socketFdCount(), socketsBefore, 'no spare socket left');
  });

  it('dials the namespace now at the path when the one it kept was replaced behind its back', async () => {
    const replaced = await runEmbeddedSandbox(store, 'replaced');
    const path = replaced.netnsPath!;
    const before = await app(path, 'echo', '127.0.0.1');
    const first = await harness.forward(forwarder, replaced.id, before.port);
    assert.equal((await echoRoundTrip(first, Buffer.from('old'))).toString(), 'old');
    // The runtime tears the namespace down and pins a new one at the same path (the old
    // app lives on in the old namespace, which our handle also still holds). Runtimes
    // detach (containerd, ip netns del: MNT_DETACH): a plain umount fails while an fd is open on the path.
    execFileSync('umount', ['--lazy', path]);
    execFileSync('unshare', [`--net=${path}`, 'ip', 'link', 'set', 'lo', 'up']);
    const after = await app(path, 'echo', '127.0.0.1');
    const second = await harness.forward(forwarder, replaced.id, after.port);
    assert.equal((await echoRoundTrip(second, Buffer.from('new'))).toString(), 'new');
    // And the old app is out of reach: the dial went into the new namespace.
    const old = await forwarder.open(replaced.id, before.port).catch((e: unknown) => e as DialError);
    assert.ok(old instanceof DialError && old.failure === 'refused', `old app: ${String(old)}`);
    assert.equal(namespaceFds(path), 1);
    await store.remove(replaced.id);
  });

  it('propagates half-close: "abc" then FIN, the app answers 100 bytes after EOF', async () => {
    const answering = await app(netnsPath, 'answer-after-eof');
    const forwarded = await harness.forward(forwarder, sandboxId, answering.port);
    const answer = await echoRoundTrip(forwarded, Buffer.from('abc'));
    assert.equal(answer.length, 100);
    const result = await forwarded.result;
    assert.equal(result.outcome, 'done');
    assert.deepEqual([result.bytesToPod, result.bytesToClient], [3, 100]);
  });

  it('cuts an app that never closes after the grace period (default 1 s, and configured)', async () => {
    const stubborn = await app(netnsPath, 'never-close');
    for (const [graceMs, min, max] of [
      [undefined, 900, 1800],
      [250, 200, 900],
    ] as const) {
      const forwarded = await harness.forward(forwarder, sandboxId, stubborn.port, graceMs);
      const closed = once(forwarded.client, 'close');
      const ended = once(forwarded.client, 'end');
      let clientError: Error | undefined;
      forwarded.client.on('data', () => undefined);
      forwarded.client.on('error', (err) => (clientError = err));
      const started = Date.now();
      forwarded.client.end('bye');
      const result = await forwarded.result;
      await closed;
      const elapsed = Date.now() - started;
      assert.equal(result.outcome, 'grace-expired');
      assert.ok(elapsed >= min && elapsed <= max, `closed after ${elapsed} ms (grace ${graceMs ?? 'default'})`);
      // Ended cleanly: a FIN, not a reset.
      await ended;
      assert.equal(clientError, undefined);
    }
  });

  it('keeps the second direction past the grace while it still moves bytes', async () => {
    // After the client's FIN the app answers 6 bytes, one every 400 ms: 2.4 s, past a 1 s
    // grace counted from the first end, never 1 s idle.
    const slow = await app(netnsPath, 'trickle-after-eof:6:400');
    const forwarded = await harness.forward(forwarder, sandboxId, slow.port);
    const answer = await echoRoundTrip(forwarded, Buffer.from('question'));
    assert.equal(answer.toString(), 'tttttt');
    const result = await forwarded.result;
    assert.equal(result.outcome, 'done');
  });

  it('does not let its own event-loop lag cut an answer that has arrived', async () => {
    // The app answers 200 ms after the client's FIN: while this process is blocked.
    const answering = await app(netnsPath, 'trickle-after-eof:1:200');
    const forwarded = await harness.forward(forwarder, sandboxId, answering.port);
    const received = readAll(forwarded.client);
    forwarded.client.end('abc');
    // Once the pipe has seen the client's end (its grace runs), block this event loop for
    // longer than the grace: the app's answer and FIN wait in the kernel meanwhile. Blocked
    // in the check phase, so that the next loop turn runs the (overdue) timers before it
    // polls for that answer.
    await until('the pipe to pass the FIN on to the app', () => forwarded.pod.writableEnded);
    await new Promise<void>((resolve) =>
      setImmediate(() => {
        const blockedUntil = Date.now() + 1_500;
        while (Date.now() < blockedUntil);
        resolve();
      }),
    );
    assert.equal((await received).toString(), 't');
    assert.equal((await forwarded.result).outcome, 'done');
  });

  it("passes on an app's reset as a reset even when it overtakes data in flight", async () => {
    // The app resets as soon as the client speaks, with data still on the way: libuv then
    // reports a plain EOF, which the pipe must not take for the app's FIN.
    const resetting = await app(netnsPath, 'reset');
    for (let i = 0; i < 10; i++) {
      const forwarded = await harness.forward(forwarder, sandboxId, resetting.port);
      forwarded.client.on('data', () => undefined);
      forwarded.client.on('error', () => undefined);
      forwarded.client.write('go');
      const result = await forwarded.result;
      assert.equal(result.outcome, 'pod-error', `connection ${i}: ${result.outcome} after ${result.bytesToClient} bytes`);
      assert.equal((result.error as NodeJS.ErrnoException).code, 'ECONNRESET');
      assert.ok(forwarded.clientSide.destroyed);
    }
  });

  it('ends only the one connection when the app resets mid-transfer', async () => {
    const resetting = await app(netnsPath, 'reset');
    const echo = await app(netnsPath, 'echo');
    const other = await harness.forward(forwarder, sandboxId, echo.port);
    const forwarded = await harness.forward(forwarder, sandboxId, resetting.port);
    forwarded.client.on('error', () => undefined);
    // The app resets once the client has spoken; the client speaks once it has the whole
    // 1 MiB. An RST that overtakes data in flight is reported by libuv as a plain EOF
    // (a partial read, then POLLHUP), which is not the case this test is about.
    let received = 0;
    forwarded.client.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received === 1 << 20) forwarded.client.write('go');
    });
    const result = await forwarded.result;
    assert.equal(result.outcome, 'pod-error');
    assert.match(String((result.error as NodeJS.ErrnoException).code), /ECONNRESET|EPIPE/);
    assert.ok(forwarded.clientSide.destroyed);
    // The other connection is untouched.
    assert.equal((await echoRoundTrip(other, Buffer.from('still here'))).toString(), 'still here');
  });

  it('keeps memory per connection bounded when the client does not read', async () => {
    const flood = await app(netnsPath, 'flood');
    const forwarded = await harness.forward(forwarder, sandboxId, flood.port);
    forwarded.client.pause();
    // Until the flow towards the paused client has stopped: the kernel buffers are full.
    const { clientSide } = forwarded;
    await untilSteady('the flow to the paused client to stop', () => [clientSide.bytesWritten, clientSide.writableLength]);
    // The pod socket buffers nothing of its own: it reads into the pipe's buffer only.
    const held = forwarded.clientSide.writableLength;
    assert.ok(held <= POD_BULK_READ_BUFFER_BYTES, `pod -> client holds ${held} bytes`);
    const before = forwarded.clientSide.bytesWritten;
    // Time is the test here: nothing moves for 200 ms, the pod side has stopped reading.
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(forwarded.clientSide.bytesWritten, before, 'the pod side stopped reading');
    forwarded.client.destroy();
    assert.match((await forwarded.result).outcome, /^client-(error|closed)$/);
  });

  it('keeps memory per connection bounded when the app does not read', async () => {
    const deaf = await app(netnsPath, 'ignore');
    const forwarded = await harness.forward(forwarder, sandboxId, deaf.port);
    const chunk = Buffer.alloc(64 * 1024);
    let accepted = 0;
    const pump = (): void => {
      while (forwarded.client.write(chunk)) accepted += chunk.length;
    };
    forwarded.client.on('drain', pump);
    pump();
    // Until the flow from the client has stopped: the deaf app's buffers are full.
    const { client, clientSide, pod } = forwarded;
    await untilSteady('the flow to the deaf app to stop', () => [accepted, client.writableLength, clientSide.bytesRead, pod.writableLength]);
    const held = forwarded.pod.writableLength + forwarded.clientSide.readableLength;
    // The queue on the pod socket, one client chunk, and the client's paused readable buffer.
    assert.ok(held <= POD_WRITE_HIGH_WATER_MARK + 2 * 64 * 1024 + 16 * 1024, `client -> pod holds ${held} bytes`);
    assert.ok(accepted < 64 * 1024 * 1024, 'the client was paused');
    // The app dies with unread data: the kernel resets, and only this pipe ends.
    forwarded.client.on('error', () => undefined);
    await deaf.stop();
    assert.equal((await forwarded.result).outcome, 'pod-error');
    forwarded.client.destroy();
  });

  it('hands a read buffer to the next connection only once nothing can write from it', async () => {
    const echo = await app(netnsPath, 'echo');
    // A connection that ended cleanly: its buffer waits for the next pipe, which takes it.
    const first = await harness.forward(forwarder, sandboxId, echo.port);
    assert.equal((await echoRoundTrip(first, Buffer.from('one'))).toString(), 'one');
    assert.equal((await first.result).outcome, 'done');
    const idle = idleReadBufferCount();
    assert.ok(idle >= 1, 'the ended pipe gave its buffer back');
    const second = await harness.forward(forwarder, sandboxId, echo.port);
    assert.equal(idleReadBufferCount(), idle - 1, 'the next pipe took it');
    assert.equal((await echoRoundTrip(second, Buffer.from('two'))).toString(), 'two');
    await second.result;

    // A client side whose write of the app's answer never completes: the pipe ends (the
    // client side fails, the pod socket is destroyed) with a view of its buffer still
    // queued there, so the buffer must not go to another connection, which would read over
    // those bytes.
    let pending: Buffer | undefined;
    const stuck = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, _callback) {
        pending = chunk;
      },
    });
    const pipe = new Pipe(new DuplexClient(stuck), await forwarder.open(sandboxId, echo.port));
    stuck.push('hello');
    await until('the echo to be written to the stuck client', () => pending !== undefined);
    const before = idleReadBufferCount();
    stuck.destroy(new Error('client gone'));
    assert.equal((await pipe.done).outcome, 'client-error');
    assert.equal(idleReadBufferCount(), before, 'a buffer still held by a write is not handed on');
    assert.equal(pending!.toString(), 'hello');
  });

  it('carries 1 GiB both ways through an echo app, sha256-equal', async () => {
    const echo = await app(netnsPath, 'echo');
    const forwarded = await harness.forward(forwarder, sandboxId, echo.port);
    const total = 1 << 30;
    const block = randomBytes(1 << 20);
    const sent = createHash('sha256');
    const received = createHash('sha256');
    let receivedBytes = 0;
    forwarded.client.on('data', (c: Buffer) => {
      received.update(c);
      receivedBytes += c.length;
    });
    const ended = once(forwarded.client, 'end');
    let written = 0;
    const pump = (): void => {
      while (written < total) {
        // Vary the block so that a dropped or repeated chunk changes the hash.
        const piece = Buffer.from(block);
        piece.writeUInt32BE(written / block.length);
        sent.update(piece);
        written += piece.length;
        if (!forwarded.client.write(piece)) return;
      }
      forwarded.client.end();
    };
    forwarded.client.on('drain', pump);
    pump();
    await ended;
    assert.equal(receivedBytes, total);
    assert.equal(received.digest('hex'), sent.digest('hex'));
    const result = await forwarded.result;
    assert.deepEqual([result.outcome, result.bytesToPod, result.bytesToClient], ['done', total, total]);
  });
});
