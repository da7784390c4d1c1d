// A WebSocket message that spans two reads is copied by ws into one buffer; with
// consumeIntoSpanBuffers that buffer comes from the socket's ReadSlabs and is reused once
// the message has been retained and released (as a pod socket's write does). ws's own
// Sender makes the masked client frames and ws's own Receiver parses them: every message
// must come out byte for byte at every read size, a buffer must never be handed out again
// while a view of it is held, and a steady stream of large messages must reuse a few.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import type { WebSocket } from 'ws';
import { ReadSlabs } from '../../src/streaming/owned-reads';
import { consumeIntoSpanBuffers } from '../../src/streaming/portforward/ws-server';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const wsPackage = require('ws') as {
  Receiver: new (options: Record<string, unknown>) => NodeJS.WritableStream & NodeJS.EventEmitter;
  Sender: { frame(data: Buffer, options: Record<string, unknown>): Buffer[] };
};
const { Receiver, Sender } = wsPackage;

function clientFrame(payload: Buffer, opcode = 2): Buffer {
  return Buffer.concat(Sender.frame(Buffer.from(payload), { fin: true, opcode, mask: true, readOnly: false, rsv1: false }));
}

interface Harness {
  receiver: NodeJS.WritableStream & NodeJS.EventEmitter;
  slabs: ReadSlabs;
  /** Every buffer spanBuffer handed out, in order. */
  handedOut: Buffer[];
}

function harness(onMessage: (data: Buffer) => void): Harness {
  const receiver = new Receiver({ isServer: true, allowSynchronousEvents: true, maxPayload: 4 << 20, binaryType: 'nodebuffer' });
  const slabs = new ReadSlabs(undefined); // no budget: bulk from the start
  const handedOut: Buffer[] = [];
  const spanBuffer = slabs.spanBuffer.bind(slabs);
  slabs.spanBuffer = (n: number): Buffer => {
    const b = spanBuffer(n);
    handedOut.push(b);
    return b;
  };
  receiver.on('message', (data: Buffer) => onMessage(data));
  receiver.on('error', (err: Error) => assert.fail(`ws receiver error: ${err.message}`));
  consumeIntoSpanBuffers({ _receiver: receiver } as unknown as WebSocket, slabs);
  return { receiver, slabs, handedOut };
}

/** Write `stream` to the receiver `readSize` bytes at a time (copies: a read buffer is the socket's). */
function feed(receiver: NodeJS.WritableStream, stream: Buffer, readSize: number): void {
  for (let at = 0; at < stream.length; at += readSize) receiver.write(Buffer.from(stream.subarray(at, at + readSize)));
}

describe('consumeIntoSpanBuffers (ws Receiver)', () => {
  const sizes = [5, 70 * 1024, 64 * 1024, (1 << 20) + 1, 200 * 1024, 125, 65_535, 3 << 20];
  const payloads = sizes.map((n) => randomBytes(n));
  const stream = Buffer.concat([
    ...payloads.slice(0, 4).map((p) => clientFrame(p)),
    clientFrame(Buffer.from('ping!'), 0x9), // a control frame between messages
    ...payloads.slice(4).map((p) => clientFrame(p)),
  ]);

  for (const readSize of [1000, 4096, 65_536, 100_000, 1 << 20, 3 << 20]) {
    it(`delivers every message byte for byte, read ${readSize} bytes at a time`, () => {
      const got: Buffer[] = [];
      const h = harness((data) => got.push(Buffer.from(data)));
      feed(h.receiver, stream, readSize);
      assert.equal(got.length, payloads.length);
      for (const [i, p] of payloads.entries()) assert.ok(got[i]!.equals(p), `message ${i} (${p.length} bytes) intact`);
      // Only messages of 64 KiB or more that spanned a read come from span buffers.
      for (const b of h.handedOut) assert.ok(b.length >= 64 * 1024, `span buffer of ${b.length} bytes`);
      if (readSize < 64 * 1024) assert.ok(h.handedOut.length >= 5, `${h.handedOut.length} span buffers for the large messages`);
      h.slabs.close();
    });
  }

  it('reuses a span buffer once the message in it is retained and released, and never while held', () => {
    const message = randomBytes((1 << 20) + 1);
    const frame = clientFrame(message);
    const held: Buffer[] = [];
    const h = harness((data) => {
      h.slabs.retain(data.subarray(1)); // the payload after the channel byte goes to the pod
      held.push(data);
    });
    // 20 messages, each released (the pod socket has written it) before the next arrives...
    for (let i = 0; i < 20; i++) {
      feed(h.receiver, frame, 256 * 1024);
      h.slabs.release(held.pop()!.subarray(1));
    }
    const distinct = new Set(h.handedOut.map((b) => b.buffer));
    assert.equal(h.handedOut.length, 20);
    assert.equal(distinct.size, 1, `${distinct.size} buffers for 20 messages released in turn`);
    // ...then one held while three more arrive: it is not handed out, and its bytes stay.
    feed(h.receiver, frame, 256 * 1024);
    const kept = held.pop()!;
    for (let i = 0; i < 3; i++) {
      feed(h.receiver, frame, 256 * 1024);
      h.slabs.release(held.pop()!.subarray(1));
    }
    for (const b of h.handedOut.slice(-3)) assert.notEqual(b.buffer, kept.buffer, 'not handed out while held');
    assert.ok(kept.equals(message), 'the held message is intact');
    h.slabs.release(kept.subarray(1));
    h.slabs.close();
  });

  it('does not recycle a span buffer that was never retained (a fragment ws concatenates)', () => {
    const h = harness(() => undefined); // nobody retains: the buffer is ws's and then the GC's
    const frame = clientFrame(randomBytes(300 * 1024));
    for (let i = 0; i < 12; i++) feed(h.receiver, frame, 100_000);
    const distinct = new Set(h.handedOut.map((b) => b.buffer));
    assert.equal(distinct.size, 12, 'a fresh buffer each time: none came back');
    h.slabs.close();
  });
});
