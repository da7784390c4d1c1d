// Small TCP client helpers for end-to-end tests through a forwarded local port.

import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';

export function dial(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    socket.once('connect', () => resolve(socket));
    socket.once('error', reject);
  });
}

/** Everything the socket receives until the peer ends or resets it. */
export function collect(socket: Socket): Promise<{ data: Buffer; error?: Error }> {
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  return new Promise((resolve) => {
    socket.once('end', () => resolve({ data: Buffer.concat(chunks) }));
    socket.once('error', (error) => resolve({ data: Buffer.concat(chunks), error }));
    socket.once('close', () => resolve({ data: Buffer.concat(chunks) }));
  });
}

/** Send `payload`, half-close, and return what comes back (an echo app echoes it). */
export async function roundTrip(port: number, payload: Buffer): Promise<Buffer> {
  const socket = await dial(port);
  const received = collect(socket);
  socket.end(payload);
  const { data, error } = await received;
  socket.destroy();
  if (error) throw error;
  return data;
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export function randomPayload(bytes: number): Buffer {
  return randomBytes(bytes);
}

/** Read a source app's whole output (`fill` bytes, `bytes` long) and check it is intact. */
export async function downloadIntact(port: number, bytes: number, fill = 's'): Promise<void> {
  const block = Buffer.alloc(1 << 20, fill);
  const expected = createHash('sha256');
  for (let left = bytes; left > 0; left -= block.length) expected.update(left >= block.length ? block : block.subarray(0, left));
  const socket = await dial(port);
  const hash = createHash('sha256');
  let received = 0;
  socket.on('data', (c: Buffer) => {
    hash.update(c);
    received += c.length;
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('end', () => resolve());
    socket.once('error', reject);
  });
  socket.destroy();
  if (received !== bytes) throw new Error(`downloaded ${received} of ${bytes} bytes`);
  if (hash.digest('hex') !== expected.digest('hex')) throw new Error('downloaded bytes differ from what the app sent');
}

/** Write `total` bytes of `fill` with backpressure, then end the socket. */
export function writeFill(socket: Socket, total: number, fill: string): void {
  const chunk = Buffer.alloc(1 << 20, fill);
  let left = total;
  const more = (): void => {
    while (left > 0) {
      const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
      left -= piece.length;
      if (!socket.write(piece)) return;
    }
    socket.end();
  };
  socket.on('drain', more);
  more();
}

/**
 * Bytes the kernel holds on the TCP connections to or from `port` in a network namespace
 * (null: this one): Recv-Q (not read yet) plus Send-Q (not acknowledged yet) of both ends,
 * from `ss`. Shows where a stalled transfer's bytes sit, which no socket event tells.
 */
export function queuedBytes(netns: string | null, port: number): number {
  const ss = ['ss', '-Htn', `( sport = :${port} or dport = :${port} )`];
  const [cmd, ...args] = netns === null ? ss : ['nsenter', `--net=${netns}`, ...ss];
  let total = 0;
  for (const line of execFileSync(cmd!, args, { encoding: 'utf8' }).split('\n')) {
    const [, recvQ, sendQ] = line.trim().split(/\s+/);
    if (recvQ !== undefined && sendQ !== undefined) total += Number(recvQ) + Number(sendQ);
  }
  return total;
}

/** What came back on a connection and how its reading side ended: the peer's FIN, an error (a reset), or a close with neither. */
export interface EchoEnding {
  received: Buffer;
  endedBy: 'end' | 'error' | 'close';
  error?: Error;
}

/** Connect, write `payload` and half-close right after it, then read until the socket ends or fails. */
export async function echoToEnd(port: number, payload: Buffer): Promise<EchoEnding> {
  const socket = await dial(port);
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  const ending = new Promise<EchoEnding>((resolve) => {
    socket.once('end', () => resolve({ received: Buffer.concat(chunks), endedBy: 'end' }));
    socket.once('error', (error) => resolve({ received: Buffer.concat(chunks), endedBy: 'error', error }));
    socket.once('close', () => resolve({ received: Buffer.concat(chunks), endedBy: 'close' }));
  });
  socket.end(payload);
  const result = await ending;
  socket.destroy();
  return result;
}
