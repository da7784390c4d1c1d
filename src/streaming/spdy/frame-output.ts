// Where a SPDY session's frames go: its transport, as one write per event-loop turn
// (frame-writer.ts batches them).
//
// A plain TCP client socket (kubectl's, kubelet's, crictl's connection) is written through
// its TCP handle directly (tcp-handle.ts), not through net.Socket's Writable. An allocation
// profile of the 64-byte round trip behind kubectl put Writable's write path at a third of
// what the server allocated per round trip (the write's state and callback records, the
// afterWrite tick, and the promise-rejection pass every tick queue ends with: 880 of
// 2740 bytes), and every scavenge that garbage causes stops the session for 0.5-1.5 ms.
// What Writable gave is kept: one write with libuv at a time, what comes meanwhile queued
// and written as one writev when it completes, callbacks in order, a failed write
// destroying the socket with its error. The socket stays net.Socket's for everything else
// (reads, end, destroy, events): libuv runs a shutdown only after the writes before it,
// so end() needs only to wait for what is still queued here.
//
// Any other transport (TLS, the SPDY-in-WebSocket tunnel's byte stream) is a Duplex and is
// written as one: cork, a write per chunk, uncork.

import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { WriteCallback } from '../../pipe-client';
import { binding, socketError, type TcpHandle, type WriteReq } from '../../tcp-handle';

/** A write to a socket already gone fails with what the kernel would have said. */
const UV_EPIPE = -32;

export interface FrameOutput {
  /** Bytes handed over that the kernel has not taken yet. */
  readonly backlog: number;
  /**
   * `chunk` (held, not copied); `callback` once the kernel has it, or with the error of a
   * failed write. It may run before this returns.
   */
  writeOne(chunk: Buffer, callback: WriteCallback): void;
  /** `chunks` in order, each callback (where set) as writeOne's. Both arrays are the output's from now on. */
  writeMany(chunks: Buffer[], callbacks: (WriteCallback | undefined)[]): void;
  /** Our FIN, after everything written. */
  end(): void;
}

/** The output for a session's transport: its TCP handle when it is a plain net.Socket. */
export function frameOutputFor(transport: Duplex): FrameOutput {
  if (transport instanceof Socket && transport.constructor === Socket) {
    const handle = (transport as unknown as { _handle: unknown })._handle;
    if (handle instanceof binding.TCP) return new SocketHandleOutput(transport, handle);
  }
  return new DuplexOutput(transport);
}

class DuplexOutput implements FrameOutput {
  readonly #transport: Duplex;

  constructor(transport: Duplex) {
    this.#transport = transport;
  }

  get backlog(): number {
    return this.#transport.writableLength;
  }

  writeOne(chunk: Buffer, callback: WriteCallback): void {
    this.#transport.write(chunk, callback);
  }

  writeMany(chunks: Buffer[], callbacks: (WriteCallback | undefined)[]): void {
    const transport = this.#transport;
    transport.cork();
    for (let i = 0; i < chunks.length; i++) transport.write(chunks[i]!, callbacks[i]);
    transport.uncork();
  }

  end(): void {
    this.#transport.end();
  }
}

type Req = WriteReq<SocketHandleOutput>;

class SocketHandleOutput implements FrameOutput {
  readonly #socket: Socket;
  readonly #handle: TcpHandle;
  /** What was written while a write was with libuv: it leaves, as one writev, when that one completes. */
  #queue: Buffer[] = [];
  #queueCallbacks: (WriteCallback | undefined)[] = [];
  #inFlight = false;
  /** Bytes queued here or with libuv. */
  #pendingBytes = 0;
  #ending = false;
  /** The first failed write's error: every later write fails with it. */
  #error: Error | null = null;

  constructor(socket: Socket, handle: TcpHandle) {
    this.#socket = socket;
    this.#handle = handle;
  }

  get backlog(): number {
    return this.#pendingBytes;
  }

  writeOne(chunk: Buffer, callback: WriteCallback): void {
    this.#pendingBytes += chunk.length;
    if (this.#inFlight) {
      this.#queue.push(chunk);
      this.#queueCallbacks.push(callback);
      return;
    }
    this.#send(chunk, [callback], chunk.length);
  }

  writeMany(chunks: Buffer[], callbacks: (WriteCallback | undefined)[]): void {
    let bytes = 0;
    for (let i = 0; i < chunks.length; i++) bytes += chunks[i]!.length;
    this.#pendingBytes += bytes;
    if (this.#inFlight) {
      for (let i = 0; i < chunks.length; i++) {
        this.#queue.push(chunks[i]!);
        this.#queueCallbacks.push(callbacks[i]);
      }
      return;
    }
    this.#send(chunks, callbacks, bytes);
  }

  end(): void {
    if (this.#ending) return;
    this.#ending = true;
    if (!this.#inFlight) this.#socket.end(); // nothing is queued here without a write in flight
  }

  #send(chunks: Buffer | Buffer[], callbacks: (WriteCallback | undefined)[], bytes: number): void {
    const req = new binding.WriteWrap<SocketHandleOutput>();
    req.handle = this.#handle;
    req.oncomplete = onWriteComplete;
    req.owner = this;
    req.chunks = chunks;
    req.callbacks = callbacks;
    req.bytes = bytes;
    if (this.#error !== null || this.#socket.destroyed) return this.#written(req, this.#error ?? socketError(UV_EPIPE, 'write'));
    const err = Buffer.isBuffer(chunks)
      ? this.#handle.writeBuffer(req, chunks)
      : chunks.length === 1
        ? this.#handle.writeBuffer(req, chunks[0]!)
        : this.#handle.writev(req, chunks, true);
    if (err !== 0) return this.#written(req, socketError(err, 'write'));
    if (binding.state[binding.lastWriteWasAsync] !== 0) this.#inFlight = true;
    else this.#written(req, null);
  }

  /** libuv is done with a write (done, failed, or cancelled by the socket's close). */
  completed(req: Req, status: number): void {
    this.#inFlight = false;
    this.#written(req, status < 0 ? socketError(status, 'write') : null);
    if (this.#queue.length > 0) {
      const chunks = this.#queue;
      const callbacks = this.#queueCallbacks;
      this.#queue = [];
      this.#queueCallbacks = [];
      let bytes = 0;
      for (let i = 0; i < chunks.length; i++) bytes += chunks[i]!.length;
      this.#send(chunks, callbacks, bytes);
    }
    if (this.#ending && !this.#inFlight && !this.#socket.destroyed) this.#socket.end();
  }

  #written(req: Req, err: Error | null): void {
    this.#pendingBytes -= req.bytes;
    const callbacks = req.callbacks!;
    req.callbacks = null;
    if (err !== null && this.#error === null) {
      this.#error = err;
      this.#socket.destroy(err); // as Writable does with a failed write: 'error', then 'close'
    }
    for (let i = 0; i < callbacks.length; i++) callbacks[i]?.(err);
  }
}

// One function for every write: `this` is the request, which names its output.
function onWriteComplete(this: Req, status: number): void {
  this.owner.completed(this, status);
}
