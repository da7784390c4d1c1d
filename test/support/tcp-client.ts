// Small TCP client helpers for end-to-end tests through a forwarded local port.

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
