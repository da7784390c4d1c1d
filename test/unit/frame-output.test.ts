// The output a SPDY session writes its frames to (frame-output.ts), against real TCP peers
// on the loopback: a plain socket written on its TCP handle keeps Writable's contract
// (order, callbacks, the FIN after everything, a failed write destroying the socket); any
// other Duplex is written as one.

import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { frameOutputFor } from '../../src/streaming/spdy/frame-output';
import { socketPair } from '../support/spdy-frames';
import { until } from '../support/until';

/** `count` chunks of `bytes`, each filled with its own index, so that order shows. */
function numberedChunks(count: number, bytes: number): Buffer[] {
  return Array.from({ length: count }, (_, i) => Buffer.alloc(bytes, i & 0xff));
}

function readAll(socket: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    socket.on('data', (c: Buffer) => parts.push(c));
    socket.once('end', () => resolve(Buffer.concat(parts)));
    socket.once('error', reject);
  });
}

describe('frame output on a plain socket', () => {
  it('writes past a peer that does not read, in order, with every callback, then the FIN', async () => {
    const pair = await socketPair();
    try {
      pair.client.pause(); // the kernel's buffers fill: writes go async and queue behind each other
      const output = frameOutputFor(pair.server);
      const chunks = numberedChunks(256, 64 * 1024);
      const called: number[] = [];
      const expected: number[] = [];
      const errors: unknown[] = [];
      const callback = (i: number) => (err?: Error | null) => {
        if (err) errors.push(err);
        called.push(i);
      };
      // Single chunks and batches, as the frame writer hands them over.
      for (let i = 0; i < chunks.length; ) {
        if (i % 3 === 0) {
          output.writeOne(chunks[i]!, callback(i));
          expected.push(i);
          i++;
        } else {
          output.writeMany([chunks[i]!, chunks[i + 1]!], [undefined, callback(i + 1)]);
          expected.push(i + 1);
          i += 2;
        }
      }
      output.end();
      assert.ok(output.backlog > 0, 'the kernel took everything: nothing was queued');
      assert.equal(pair.server.writableLength, 0, 'the bytes went through Writable: the handle was not written directly');

      const received = readAll(pair.client);
      pair.client.resume();
      const bytes = await received;
      assert.equal(bytes.length, chunks.length * 64 * 1024);
      assert.ok(bytes.equals(Buffer.concat(chunks)), 'bytes out of order or lost');
      assert.deepEqual(errors, []);
      assert.deepEqual(called, expected, 'callbacks out of order or missing');
      assert.equal(output.backlog, 0);
    } finally {
      pair.destroy();
    }
  });

  it('fails the writes of a reset connection with its error and destroys the socket', async () => {
    const pair = await socketPair();
    try {
      const socketErrors: Error[] = [];
      pair.server.on('error', (err) => socketErrors.push(err));
      const output = frameOutputFor(pair.server);
      pair.client.resetAndDestroy();
      await new Promise<void>((resolve) => pair.client.once('close', () => resolve()));
      const failures: (Error | null | undefined)[] = [];
      // The first write after the reset may still be taken by the kernel; a later one fails.
      for (let i = 0; i < 50 && !failures.some((f) => f); i++) {
        await new Promise<void>((resolve) => output.writeOne(Buffer.alloc(64 * 1024), (err) => {
          failures.push(err);
          resolve();
        }));
      }
      const failed = failures.find((f) => f) as NodeJS.ErrnoException | undefined;
      assert.ok(failed, 'no write failed after the peer reset the connection');
      assert.match(failed.code ?? '', /^(EPIPE|ECONNRESET)$/);
      // Destroyed with this error, or with the same reset seen by a read first.
      await until('the socket to be destroyed', () => pair.server.destroyed && socketErrors.length > 0);
      assert.equal(socketErrors.length, 1);
      // Later writes fail at once with the same error, without touching the handle.
      const later = await new Promise<Error | null | undefined>((resolve) => output.writeOne(Buffer.from('x'), resolve));
      assert.equal(later, failed);
      assert.equal(output.backlog, 0);
    } finally {
      pair.destroy();
    }
  });
});

describe('frame output on any other Duplex', () => {
  it('writes through the Duplex, in order, then ends it', async () => {
    const duplex = new PassThrough();
    const output = frameOutputFor(duplex);
    const received = readAll(duplex);
    const called: number[] = [];
    output.writeOne(Buffer.from('a'), () => called.push(0));
    output.writeMany([Buffer.from('b'), Buffer.from('c')], [undefined, () => called.push(1)]);
    output.end();
    assert.equal((await received).toString(), 'abc');
    assert.deepEqual(called, [0, 1]);
  });
});
