// PodSocket against real TCP peers on the host loopback (the native dial with no
// namespace gives the connected fd, as it does for a pod): writes, their callbacks on every
// path, the FIN, errors and closing.

import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { addon } from '../../src/netns/addon';
import { PodSocket, type PodSocketEvents } from '../../src/pod-socket';
import { until } from '../support/until';

/** The app sides accepted and not yet closed: the tests' own, destroyed at the end. */
const apps = new Set<Socket>();

interface Peer {
  server: Server;
  port: number;
  /** The next connection the server accepts. */
  accepted(): Promise<Socket>;
}

async function peer(): Promise<Peer> {
  const waiting: ((s: Socket) => void)[] = [];
  const server = createServer({ allowHalfOpen: true }, (s) => {
    apps.add(s);
    s.once('close', () => apps.delete(s));
    waiting.shift()?.(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    server,
    port: (server.address() as { port: number }).port,
    accepted: () => new Promise((resolve) => waiting.push(resolve)),
  };
}

interface Seen {
  reads: Buffer[];
  ends: number;
  errors: Error[];
  drains: number;
}

async function open(p: Peer, highWaterMark = 64 * 1024): Promise<{ pod: PodSocket; app: Socket; seen: Seen }> {
  const accepted = p.accepted();
  const fd = await addon.dialInNetns(null, p.port, 2_000);
  assert.equal(typeof fd, 'number', 'dialled');
  const seen: Seen = { reads: [], ends: 0, errors: [], drains: 0 };
  const events: PodSocketEvents = {
    onRead: (nread, buffer) => {
      seen.reads.push(Buffer.from(buffer.subarray(0, nread)));
      return true;
    },
    onEnd: () => seen.ends++,
    onError: (err) => seen.errors.push(err),
    onDrain: () => seen.drains++,
  };
  const pod = new PodSocket(fd as number, Buffer.alloc(16 * 1024), events, { highWaterMark, paused: false });
  return { pod, app: await accepted, seen };
}

function readAll(s: Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  return new Promise((resolve) => s.once('end', () => resolve(Buffer.concat(chunks))));
}

describe('PodSocket', () => {
  let p: Peer;
  before(async () => {
    p = await peer();
  });
  after(async () => {
    for (const app of apps) app.destroy();
    await new Promise<void>((resolve) => p.server.close(() => resolve()));
  });

  it('sends what was written while corked in order, calls each callback once, then FIN', async () => {
    const { pod, app, seen } = await open(p);
    const received = readAll(app);
    const order: number[] = [];
    pod.cork();
    for (let i = 0; i < 5; i++) pod.write(Buffer.from(`chunk ${i};`), () => order.push(i));
    assert.equal(pod.writableLength, 5 * 8, 'queued while corked');
    assert.deepEqual(order, [], 'nothing written while corked');
    pod.uncork();
    pod.end();
    assert.equal((await received).toString(), 'chunk 0;chunk 1;chunk 2;chunk 3;chunk 4;');
    await until('every callback', () => order.length === 5);
    assert.deepEqual(order, [0, 1, 2, 3, 4]);
    assert.equal(pod.writableLength, 0);
    // The app answers and closes: the answer is read, then the EOF.
    app.end('answer');
    await until('the EOF', () => seen.ends === 1);
    assert.equal(Buffer.concat(seen.reads).toString(), 'answer');
    assert.deepEqual(seen.errors, []);
    pod.destroy();
  });

  it('says false past the high-water mark and drains once a reader takes it all', async () => {
    const { pod, app, seen } = await open(p, 64 * 1024);
    app.pause();
    const chunk = Buffer.alloc(256 * 1024, 1);
    let accepted = 0;
    while (pod.write(chunk)) accepted++;
    assert.ok(accepted < 64, 'write() said false');
    assert.ok(pod.writableLength >= 64 * 1024);
    const received = readAll(app);
    app.resume();
    await until('drain', () => seen.drains === 1);
    assert.equal(pod.writableLength, 0);
    pod.end();
    assert.equal((await received).length, (accepted + 1) * chunk.length);
    pod.destroy();
  });

  it('releases every chunk when destroyed with writes still held by the kernel side', async () => {
    const { pod, app, seen } = await open(p);
    app.pause(); // the app takes nothing: writes stay with libuv
    const chunk = Buffer.alloc(1024 * 1024, 2);
    let released = 0;
    for (let i = 0; i < 16; i++) pod.write(chunk, () => released++);
    assert.ok(pod.writableLength > 0, 'some writes are still pending');
    pod.destroy();
    await until('every chunk released', () => released === 16);
    assert.deepEqual(seen.errors, [], 'a destroy is not an error');
    app.destroy();
  });

  it('reports a reset once, as the error net.Socket would give', async () => {
    const { pod, app, seen } = await open(p);
    app.resetAndDestroy();
    // Reading sees the reset; writing after it fails too; only one error is reported.
    await until('the reset to be seen', () => seen.errors.length === 1 || seen.ends === 1);
    for (let i = 0; i < 4; i++) pod.write(Buffer.alloc(64 * 1024));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(seen.errors.length, 1, `errors: ${seen.errors.map((e) => e.message).join(', ')}`);
    assert.match(String((seen.errors[0] as NodeJS.ErrnoException).code), /^(ECONNRESET|EPIPE)$/);
    pod.destroy();
  });

  it('destroySoon: closes once the FIN is out, or at the grace if the app does not read', async () => {
    const quick = await open(p);
    const got = readAll(quick.app);
    quick.pod.write(Buffer.from('last words'));
    quick.pod.destroySoon(60_000);
    assert.equal((await got).toString(), 'last words');
    await until('closed after the FIN', () => quick.pod.destroyed);

    const deaf = await open(p);
    deaf.app.pause();
    let released = false;
    deaf.pod.write(Buffer.alloc(8 * 1024 * 1024), () => (released = true));
    const started = Date.now();
    deaf.pod.destroySoon(200);
    await until('destroyed at the grace', () => deaf.pod.destroyed);
    assert.ok(Date.now() - started >= 150, 'not before the grace');
    await until('the held chunk released', () => released);
    deaf.app.destroy();
  });
});
