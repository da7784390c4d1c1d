// What ws's Receiver holds, handed over: at every split point of a client byte stream
// (masked frames made by ws's own Sender, a message fragmented with a ping between its
// fragments, 7-, 16- and 64-bit lengths), a Receiver given the first part, then a fresh
// Receiver given receiverPending() of the first and the rest, together emit exactly the
// messages one Receiver emits for the whole stream. The Receivers are ws's, not ours.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { WebSocket } from 'ws';
import { receiverPending } from '../../src/streaming/portforward/ws-handover';

// ws's own Receiver and Sender, as its server side uses them (exported by the package).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const wsPackage = require('ws') as {
  Receiver: new (options: Record<string, unknown>) => NodeJS.WritableStream & NodeJS.EventEmitter;
  Sender: { frame(data: Buffer, options: Record<string, unknown>): Buffer[] };
};
const { Receiver, Sender } = wsPackage;

function clientFrame(data: Buffer | string, opcode: number, fin = true): Buffer {
  const payload = Buffer.from(data);
  return Buffer.concat(Sender.frame(payload, { fin, opcode, mask: true, readOnly: false, rsv1: false }));
}

function receiver(events: string[]): NodeJS.WritableStream & NodeJS.EventEmitter {
  const r = new Receiver({ isServer: true, allowSynchronousEvents: true, maxPayload: 4 << 20, binaryType: 'nodebuffer' });
  r.on('message', (data: Buffer, isBinary: boolean) => events.push(`${isBinary ? 'binary' : 'text'} ${Buffer.from(data).toString('hex')}`));
  r.on('ping', (data: Buffer) => events.push(`ping ${data.toString('hex')}`));
  r.on('pong', (data: Buffer) => events.push(`pong ${data.toString('hex')}`));
  r.on('error', (err: Error) => events.push(`error ${err.message}`));
  return r;
}

function pendingOf(r: unknown): Buffer {
  const pending = receiverPending({ _receiver: r } as unknown as WebSocket);
  assert.ok(pending !== undefined, 'the receiver can always be handed over between writes');
  return pending;
}

describe('receiverPending (ws Receiver handover)', () => {
  const big = Buffer.alloc(70_000, 7); // 64-bit length
  const mid = Buffer.alloc(300, 3); // 16-bit length
  const stream = Buffer.concat([
    clientFrame('small', 0x2),
    clientFrame('frag-1-', 0x2, false),
    clientFrame('ping!', 0x9),
    clientFrame(mid, 0x0, false),
    clientFrame('-frag-3', 0x0, true),
    clientFrame('text message', 0x1),
    clientFrame(big, 0x2),
    clientFrame('', 0x2),
    clientFrame('t1', 0x1, false),
    clientFrame('t2', 0x0, true),
    clientFrame('last', 0x2),
  ]);
  // ws unmasks payloads in place: every Receiver is given its own copy.
  const copy = (b: Buffer): Buffer => Buffer.from(b);
  const expected: string[] = [];
  receiver(expected).write(copy(stream));

  it('is the whole stream, parsed the same, at every split point', () => {
    assert.equal(expected.length, 8, expected.join('\n'));
    assert.ok(!expected.some((e) => e.startsWith('error')));
    // every byte around the small frames, and a stride through the 70 kB one
    const points: number[] = [];
    for (let i = 0; i <= stream.length; i += i < 400 || i > stream.length - 100 ? 1 : 97) points.push(i);
    for (const i of points) {
      const events: string[] = [];
      const first = receiver(events);
      first.write(copy(stream.subarray(0, i)));
      const second = receiver(events);
      second.write(Buffer.concat([pendingOf(first), stream.subarray(i)]));
      assert.deepEqual(events, expected, `split at ${i}`);
    }
  });

  it('hands over twice in a row (two upgrades within one message)', () => {
    for (const [a, b] of [[10, 40], [25, 26], [330, 400]] as const) {
      const events: string[] = [];
      const first = receiver(events);
      first.write(copy(stream.subarray(0, a)));
      const second = receiver(events);
      second.write(Buffer.concat([pendingOf(first), stream.subarray(a, b)]));
      const third = receiver(events);
      third.write(Buffer.concat([pendingOf(second), stream.subarray(b)]));
      assert.deepEqual(events, expected, `splits at ${a} and ${b}`);
    }
  });
});
