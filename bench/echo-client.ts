// The TCP client side of the connection benchmarks, against an echo port (kubectl's local
// port, or an echo app directly); one implementation for the embedded and proxy sections,
// so both measure the same thing:
// - echoChurn: short connections, `inFlight` at a time; each connects, writes 64 bytes,
//   reads them back, ends, and waits for the close, so the whole teardown through kubectl
//   and the server is inside the time;
// - roundTrips: one connection, sequential 64-byte write -> read-back round trips; or two
//   (through two servers), their round trips taken in turn.
// Every echo is checked byte for byte; any short, long, differing or reset echo throws.

import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { percentile } from './stats';

export const ECHO_BYTES = 64;
/** A connection that has not closed by then has hung: fail it rather than wait forever. */
const CONNECTION_TIMEOUT_MS = 10_000;
/** Likewise for a whole round-trip loop. */
const LOOP_TIMEOUT_MS = 60_000;

/** Payloads are read at offsets of their own, so a mix-up between connections shows. */
const PAYLOAD_BLOCK = randomBytes(64 * 1024);

function payloadFor(i: number): Buffer {
  const at = (i * 4099) % (PAYLOAD_BLOCK.length - ECHO_BYTES);
  return PAYLOAD_BLOCK.subarray(at, at + ECHO_BYTES);
}

/** One echo connection: resolves once it has closed after the whole echo came back equal. */
function echoOnce(port: number, payload: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1' });
    socket.setNoDelay(true);
    const got = Buffer.alloc(payload.length);
    let received = 0;
    let failure: Error | undefined;
    const fail = (err: Error): void => {
      failure ??= err;
      socket.destroy();
    };
    const timer = setTimeout(() => fail(new Error(`not closed within ${CONNECTION_TIMEOUT_MS} ms (${received} bytes back)`)), CONNECTION_TIMEOUT_MS);
    socket.once('connect', () => socket.write(payload));
    socket.on('data', (chunk: Buffer) => {
      if (received + chunk.length > payload.length) return fail(new Error(`more than the ${payload.length} bytes sent came back`));
      chunk.copy(got, received);
      received += chunk.length;
      // End only once the echo is back, as a request/response client does; the close
      // follows the peer's FIN (no allowHalfOpen), i.e. once the server has torn down.
      if (received === payload.length) socket.end();
    });
    socket.on('error', fail);
    socket.once('close', () => {
      clearTimeout(timer);
      if (failure === undefined && received !== payload.length) failure = new Error(`closed after ${received} of ${payload.length} bytes`);
      if (failure === undefined && !got.equals(payload)) failure = new Error('the echo differs from what was sent');
      if (failure === undefined) resolve();
      else reject(failure);
    });
  });
}

/**
 * `total` tasks, `inFlight` at a time. After a failure no new task starts; the running ones
 * are waited for (their sockets close) before the first failure is thrown.
 */
export async function inParallel(total: number, inFlight: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  await Promise.all(
    Array.from({ length: Math.min(inFlight, total) }, async () => {
      while (failure === undefined && next < total) {
        try {
          await task(next++);
        } catch (error) {
          failure ??= { error };
        }
      }
    }),
  );
  if (failure !== undefined) throw failure.error;
}

/** `connections` echo connections to 127.0.0.1:`port`, `inFlight` at a time: the seconds they took. */
export async function echoChurn(port: number, connections: number, inFlight: number): Promise<number> {
  const started = process.hrtime.bigint();
  await inParallel(connections, inFlight, (i) => echoOnce(port, payloadFor(i)));
  return Number(process.hrtime.bigint() - started) / 1e9;
}

export interface Latency {
  p50Us: number;
  p99Us: number;
}

function dial(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1' });
    socket.setNoDelay(true); // each 64-byte write leaves at once: no Nagle delay in the figure
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/**
 * Sequential 64-byte round trips on `sockets` (one, or two in turn), `warmUp` + `count` on
 * each: the last `count` of each in microseconds. With two, each round trip on one is
 * followed by one on the other, and who goes first swaps every time, so that both see the
 * same moments of a noisy machine, round trip by round trip.
 */
function roundTripLoop(sockets: Socket[], count: number, warmUp: number): Promise<Float64Array[]> {
  const micros = sockets.map(() => new Float64Array(count));
  const got = Buffer.alloc(ECHO_BYTES);
  const steps = sockets.length * (count + warmUp);
  return new Promise((resolve, reject) => {
    let step = 0;
    let socket = sockets[0]!;
    let which = 0;
    let received = 0;
    let payload = payloadFor(0);
    let sentAt = 0n;
    const send = (): void => {
      const n = Math.floor(step / sockets.length);
      // Two sockets: A B, then B A, then A B...
      which = sockets.length === 1 ? 0 : (step + n) % 2;
      socket = sockets[which]!;
      payload = payloadFor(step);
      received = 0;
      sentAt = process.hrtime.bigint();
      socket.write(payload);
    };
    const onData = (chunk: Buffer): void => {
      const now = process.hrtime.bigint();
      const n = Math.floor(step / sockets.length) - warmUp; // negative while warming up
      if (received + chunk.length > ECHO_BYTES) return finish(new Error(`round trip ${n}: more bytes came back than were sent`));
      chunk.copy(got, received);
      received += chunk.length;
      if (received < ECHO_BYTES) return;
      if (!got.equals(payload)) return finish(new Error(`round trip ${n}: the echo differs from what was sent`));
      if (n >= 0) micros[which]![n] = Number(now - sentAt) / 1e3;
      if (++step === steps) return finish();
      send();
    };
    const onEnd = (): void => finish(new Error(`a connection ended after ${step} round trips`));
    const timer = setTimeout(() => finish(new Error(`${steps} round trips took over ${LOOP_TIMEOUT_MS} ms`)), LOOP_TIMEOUT_MS);
    function finish(err?: Error): void {
      clearTimeout(timer);
      for (const s of sockets) {
        s.off('data', onData);
        s.off('error', finish);
        s.off('end', onEnd);
      }
      if (err === undefined) resolve(micros);
      else reject(err);
    }
    for (const s of sockets) {
      s.on('data', onData);
      s.on('error', finish);
      s.on('end', onEnd);
    }
    send();
  });
}

/** End the socket and wait for the peer's FIN to close it (destroyed if that takes over 5 s). */
function endAndClose(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => socket.destroy(), 5_000);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.on('error', () => undefined); // the close follows
    socket.resume();
    socket.end();
  });
}

/**
 * One connection to 127.0.0.1 on each of `ports` (one, or two measured in turn round trip
 * by round trip: roundTripLoop): `warmUp` round trips, then `count` measured ones; each
 * port's latency.
 */
export async function roundTrips(ports: number[], count: number, warmUp: number): Promise<Latency[]> {
  const sockets: Socket[] = [];
  try {
    for (const port of ports) sockets.push(await dial(port));
    const micros = await roundTripLoop(sockets, count, warmUp);
    for (const socket of sockets) await endAndClose(socket);
    return micros.map((m) => ({ p50Us: percentile(m, 0.5), p99Us: percentile(m, 0.99) }));
  } finally {
    for (const socket of sockets) socket.destroy();
  }
}
