// Copies bytes both ways between a client side (pipe-client.ts: a SPDY stream, or a Node
// Duplex such as a WebSocket channel or a TCP socket in tests) and the pod socket, the way
// socat does:
//
// - backpressure both ways: a slow reader pauses its writer;
// - half-close is propagated: the client's end becomes a FIN to the pod (containerd closes
//   the pod socket instead), and the pod's end ends the client side;
// - once the first direction has ended, the other lives while it moves bytes: it is ended
//   after `graceMs` (default 1 s, containerd's figure) in which no byte moved and nothing of
//   ours waited to be written. containerd gives the second direction 1 s from the first
//   end, however busy it is: on a loaded node that cuts answers still flowing. The expiry is
//   decided after the event loop's poll phase (setImmediate), so bytes or a FIN that
//   arrived while our own loop lagged count. It ends both sides cleanly, a FIN each way;
// - an error on either side (ECONNRESET, EPIPE, a destroyed stream) ends only this pipe:
//   the other side is destroyed with that error, so the protocol layer can reset its stream.
//   An app's reset that libuv reports as EOF (it arrived behind data in flight) is found
//   through SO_ERROR and treated as the reset it is.
//
// The pipe owns the pod socket from birth: a PodSocket made from the dialled fd in the
// constructor (Node's TCP handle without net.Socket, src/pod-socket.ts).
//
// Hot path: the pod socket reads into a buffer owned by the pipe, so pod -> client costs
// no allocation but the view Node needs for each write. The buffer is reused only once
// the client has taken the previous chunk: while a write is pending the pod socket does
// not read (a SPDY stream takes a small chunk at once: it copies it). This relies on the
// Writable contract that a stream does not touch a chunk after calling its write callback.
//
// Memory bound per pipe, beyond kernel socket buffers: pod -> client holds one read buffer
// (the chunk in flight is a view of it): 16 KiB, or 1 MiB while a bulk transfer fills it
// and the buffer budget lends the difference (plus, briefly, the buffer a pending write
// still holds); client -> pod queues 64 KiB, or 1 MiB on loan from the budget, plus one
// client chunk and the client's own readable buffer while paused. So about 16 KiB for an
// idle or interactive connection and at most about 2.2 MiB for one moving bulk data both
// ways, with all the loans together bounded by --max-buffer-memory
// (test/integration/pod-side.test.ts and buffer-budget.test.ts check these).

import { closeSync } from 'node:fs';
import { BudgetedBound, type BufferBudget } from './buffer-budget';
import { connectionEnded, connectionStarted } from './memory-trim';
import { addon } from './netns/addon';
import type { PipeClient, PipeClientEvents } from './pipe-client';
import { PodSocket } from './pod-socket';
import { socketError } from './tcp-handle';

/** The pod read buffer of a pipe that is not (yet) moving bulk data. */
export const POD_READ_BUFFER_BYTES = 16 * 1024;
/**
 * The pod read buffer once reads fill the small one: fewer, larger reads and writes halve
 * the CPU per GiB (bench: 1.16 s/GiB with 64 KiB reads, 0.52 with 1 MiB, socat -b1048576
 * 0.35-0.45), at the price of this much memory while a transfer is running.
 */
export const POD_BULK_READ_BUFFER_BYTES = 1024 * 1024;
/** A read shorter than this does not look like a bulk transfer. */
const SHORT_READ_BYTES = 64 * 1024;
/**
 * Client -> pod bytes queued on the pod socket before the client is paused. Chunks that
 * arrive in one event-loop turn are written together (cork until setImmediate): one
 * writev instead of a syscall per SPDY frame or per 64 KiB read (bench: upload CPU per GiB
 * 1.3 s -> 0.85 s). The queue must hold a turn's worth of chunks for that to happen.
 */
export const POD_WRITE_HIGH_WATER_MARK = 1024 * 1024;
/** Client -> pod bytes queued before the budget is asked for POD_WRITE_HIGH_WATER_MARK. */
export const POD_WRITE_BASE_BYTES = 64 * 1024;
/** Reads shorter than the small buffer in a row before the bulk buffer is given back. */
const SHRINK_AFTER_SHORT_READS = 32;
/**
 * Small pod read buffers of pipes that ended, for the next pipes (at most this many: 512 KiB).
 * A fresh one per connection is external memory, which V8 counts towards its old-generation
 * limit: a churn of kubectl connections drew a full GC every 500-600 connections, a tenth
 * of the server's CPU.
 */
const MAX_FREE_READ_BUFFERS = 32;
const freeReadBuffers: Buffer[] = [];

/** Read buffers waiting for the next pipe (tests watch it). */
export function idleReadBufferCount(): number {
  return freeReadBuffers.length;
}

function takeReadBuffer(): Buffer {
  return freeReadBuffers.pop() ?? Buffer.allocUnsafe(POD_READ_BUFFER_BYTES);
}

/** containerd's grace for the second direction once the first has ended. */
export const DEFAULT_HALF_CLOSE_GRACE_MS = 1_000;

/**
 * done: both directions ended; grace-expired: the second went idle for the grace, and both
 * sides were ended cleanly;
 * pod-error / client-error: that side failed (reset, broken pipe); client-closed: the
 * client side was closed without an error before both directions ended;
 * closed: close() was called from outside (the session ended).
 */
export type PipeOutcome = 'done' | 'grace-expired' | 'pod-error' | 'client-error' | 'client-closed' | 'closed';

export interface PipeResult {
  outcome: PipeOutcome;
  /** The error that ended the pipe, for pod-error and client-error. */
  error?: Error;
  bytesToPod: number;
  bytesToClient: number;
}

/** A pipe as an upgrade hands it over (freeze(), then exportState()); JSON. */
export interface PipeState {
  /** Index of the pod socket among the fds passed. */
  podFd: number;
  clientDone: boolean;
  podDone: boolean;
  /** One direction had ended; the other had been idle for idleMs. */
  inGrace: boolean;
  idleMs: number;
  bytesToPod: number;
  bytesToClient: number;
}

export interface PipeOptions {
  /** Once one direction has ended, how long the other may stay idle (default 1 s). */
  graceMs?: number;
  /** Where the bulk read buffer and the bulk write queue come from; none: always granted. */
  budget?: BufferBudget;
}

export class Pipe {
  readonly #client: PipeClient;
  /** Its chunks are views of buffers it reuses once released. */
  readonly #clientReleases: boolean;
  /** Client chunks queued on the pod socket, oldest first, while they must be released. */
  readonly #podQueue: Buffer[] = [];
  readonly #graceMs: number;
  #podBuffer = takeReadBuffer();
  #shortReads = 0;
  /** The pod read buffer's size: small, or bulk while the budget lends it. */
  readonly #readBound: BudgetedBound;
  /** Client -> pod bytes queued before the client is paused. */
  readonly #writeBound: BudgetedBound;
  /** The pod connection, the pipe's from construction (read-only access for tests). */
  readonly pod: PodSocket;
  #clientDone = false;
  #podDone = false;
  #podReadBlocked = false;
  #podCorked = false;
  readonly #podFd: number;
  /** One direction has ended: the other is watched for idleness. */
  #inGrace = false;
  /** When a byte last moved in the direction still open (Date.now(), only while in grace). */
  #lastMovedAt = 0;
  #graceTimer: NodeJS.Timeout | undefined;
  #result: PipeResult | undefined;
  #bytesToPod = 0;
  #bytesToClient = 0;
  #resolveDone!: (result: PipeResult) => void;
  /** An upgrade is taking the pipe: the pod socket is not read, no grace timer runs. */
  #frozen = false;
  /** When it was frozen: the time frozen does not count as idle. */
  #frozenAt = 0;
  /** Settles once, when the pipe has ended for any reason; never rejects. */
  readonly done: Promise<PipeResult>;

  /**
   * Start copying between `client` and the connected pod socket `podFd` (from
   * Forwarder.open). From here on the pipe owns both: it ends or destroys them.
   */
  constructor(client: PipeClient, podFd: number, options: PipeOptions = {}, adopted?: PipeState) {
    this.#client = client;
    this.#clientReleases = client.releasesChunks;
    this.#graceMs = options.graceMs ?? DEFAULT_HALF_CLOSE_GRACE_MS;
    this.#podFd = podFd;
    connectionStarted();
    this.#readBound = new BudgetedBound(options.budget, POD_READ_BUFFER_BYTES, POD_BULK_READ_BUFFER_BYTES);
    this.#writeBound = new BudgetedBound(options.budget, POD_WRITE_BASE_BYTES, POD_WRITE_HIGH_WATER_MARK);
    this.done = new Promise((resolve) => (this.#resolveDone = resolve));
    let pod: PodSocket;
    try {
      pod = new PodSocket(
        podFd,
        this.#podBuffer,
        { onRead: this.#onPodRead, onEnd: this.#onPodEnd, onError: this.#onPodError, onDrain: this.#onPodDrain },
        // write() says false past the base; the budget then decides whether to go on. An
        // adopted pipe reads nothing before start(): the old process may still take it back.
        { highWaterMark: POD_WRITE_BASE_BYTES, paused: adopted !== undefined },
      );
    } catch (err) {
      connectionEnded();
      closeSync(podFd);
      throw err;
    }
    this.pod = pod;
    if (adopted !== undefined) {
      this.#clientDone = adopted.clientDone;
      this.#podDone = adopted.podDone;
      this.#bytesToPod = adopted.bytesToPod;
      this.#bytesToClient = adopted.bytesToClient;
      this.#inGrace = adopted.inGrace;
      this.#lastMovedAt = Date.now() - adopted.idleMs;
      this.#frozen = true;
    }
    const events: PipeClientEvents = { onData: this.#onClientData, onEnd: this.#onClientEnd, onClose: this.#onClientClose, onError: this.#onClientError };
    client.attach(events);
    // The client went away while the pod was being dialled.
    if (client.destroyed) this.#finish(client.errored ? 'client-error' : 'client-closed', client.errored ?? undefined);
  }

  // ---- upgrade handover: freeze, wait until quiet, exportState; or thaw -------------

  /** Stop reading the pod and the grace timer; what is queued either way goes on being written. */
  freeze(): void {
    if (this.#result !== undefined) return;
    this.#frozen = true;
    this.#frozenAt = Date.now();
    this.pod.holdReads();
    if (this.#graceTimer !== undefined) clearTimeout(this.#graceTimer);
    this.#graceTimer = undefined;
  }

  /** Everything the client sent has been written to the pod (the pod may still be read). */
  get podBoundDrained(): boolean {
    return this.#result === undefined && this.pod.writableLength === 0 && this.#client.readableLength === 0 && !this.#podCorked;
  }

  /** Frozen, and nothing of this connection is in flight either way (the pipe has not ended). */
  get isQuiet(): boolean {
    const client = this.#client;
    return this.#result === undefined && this.pod.writableLength === 0 && client.writableLength === 0 && client.readableLength === 0 && !this.#podCorked;
  }

  /** The state to hand over; the pod socket's fd goes to `fds`. */
  exportState(fds: number[]): PipeState {
    fds.push(this.pod.fd);
    const idleMs = this.#inGrace ? this.#frozenAt - this.#lastMovedAt : 0;
    return { podFd: fds.length - 1, clientDone: this.#clientDone, podDone: this.#podDone, inGrace: this.#inGrace, idleMs, bytesToPod: this.#bytesToPod, bytesToClient: this.#bytesToClient };
  }

  /** Go on where freeze() stopped (also: an adopted pipe's start). */
  thaw(): void {
    if (!this.#frozen) return;
    this.#frozen = false;
    this.pod.releaseReads();
    if (this.#frozenAt !== 0) this.#lastMovedAt += Date.now() - this.#frozenAt; // not idle while frozen
    this.#frozenAt = 0;
    if (this.#result !== undefined) return;
    if (!this.#podReadBlocked) this.pod.resume();
    if (this.#inGrace) this.#graceTimer = setTimeout(this.#onGraceTimer, Math.max(0, this.#graceMs - (Date.now() - this.#lastMovedAt)));
  }

  /**
   * An adopted pipe: start. The kernel already has the FINs the old process sent and read;
   * the new socket objects learn of them again: our FIN to the app once more (a no-op for
   * the kernel), and the app's EOF is read again (EOF is sticky) and ends the client side,
   * whose protocol stream already knows it sent its FIN.
   */
  start(): void {
    if (this.#clientDone) this.pod.end();
    this.thaw();
  }

  /** The old process, once the new one owns this connection: let go of the socket without a word on the wire. */
  release(): void {
    this.#result ??= { outcome: 'closed', bytesToPod: this.#bytesToPod, bytesToClient: this.#bytesToClient };
    this.pod.release();
    connectionEnded();
  }

  /** End the pipe from outside (the session is going away): both sides are destroyed. */
  close(): void {
    this.#finish('closed');
  }

  // pod -> client ---------------------------------------------------------------------

  readonly #onPodRead = (nread: number, buffer: Buffer): boolean => {
    if (this.#result !== undefined) return false;
    this.#bytesToClient += nread;
    if (this.#inGrace) this.#lastMovedAt = Date.now();
    this.#sizePodBuffer(nread, buffer.length);
    const client = this.#client;
    client.write(nread === buffer.length ? buffer : buffer.subarray(0, nread), this.#onClientWritten);
    if (client.writableLength === 0) return true;
    // The client still holds a view of our buffer: stop reading until it lets go.
    this.#podReadBlocked = true;
    return false;
  };

  // Grow to the bulk size when a read fills the buffer and the budget lends it; give it back
  // after a run of short reads. The old buffer may still be held by a pending write: it is
  // left to that write.
  #sizePodBuffer(nread: number, size: number): void {
    if (nread === size) {
      this.#shortReads = 0;
      if (size < POD_BULK_READ_BUFFER_BYTES && this.#readBound.grow()) {
        this.#podBuffer = Buffer.allocUnsafe(POD_BULK_READ_BUFFER_BYTES);
        this.pod.setReadBuffer(this.#podBuffer);
      }
    } else if (size > POD_READ_BUFFER_BYTES && nread < SHORT_READ_BYTES) {
      if (++this.#shortReads >= SHRINK_AFTER_SHORT_READS) {
        this.#shortReads = 0;
        this.#readBound.release();
        this.#podBuffer = takeReadBuffer();
        this.pod.setReadBuffer(this.#podBuffer);
      }
    }
  }

  readonly #onClientWritten = (err?: Error | null): void => {
    if (err || !this.#podReadBlocked || this.#result !== undefined) return;
    if (this.#client.writableLength !== 0) return; // an earlier write is still pending
    this.#podReadBlocked = false;
    if (!this.#frozen) this.pod.resume();
  };

  readonly #onPodEnd = (): void => {
    const errno = addon.takeSocketError(this.#podFd);
    if (errno !== 0) {
      this.#finish('pod-error', socketError(-errno, 'read'));
      return;
    }
    this.#podDone = true;
    if (!this.#client.writableEnded) this.#client.end();
    this.#directionEnded();
  };

  // client -> pod ---------------------------------------------------------------------

  readonly #onClientData = (chunk: Buffer): void => {
    this.#bytesToPod += chunk.length;
    if (this.#inGrace) this.#lastMovedAt = Date.now();
    if (!this.#podCorked) {
      this.#podCorked = true;
      this.pod.cork();
      setImmediate(this.#uncorkPod);
    }
    let queued: boolean;
    if (!this.#clientReleases) {
      queued = this.pod.write(chunk);
    } else {
      this.#podQueue.push(chunk);
      queued = this.pod.write(chunk, this.#onPodChunkWritten);
    }
    // Past the base queue, go on only while the budget lends the bulk queue and it has room.
    if (!queued && !(this.#writeBound.grow() && this.pod.writableLength < this.#writeBound.limit)) {
      this.#client.pause();
    }
  };

  // Writes complete in order: this one is the oldest queued. Written or failed, the pod
  // socket holds it no more.
  readonly #onPodChunkWritten = (): void => {
    const chunk = this.#podQueue.shift();
    if (chunk !== undefined) this.#client.releaseChunk(chunk);
  };

  readonly #uncorkPod = (): void => {
    this.#podCorked = false;
    this.pod.uncork();
  };

  // The queue is empty: the bulk allowance goes back until the next burst asks again.
  readonly #onPodDrain = (): void => {
    this.#writeBound.release();
    this.#client.resume();
  };

  readonly #onClientEnd = (): void => {
    if (this.#clientDone) return;
    this.#clientDone = true;
    this.pod.end(); // FIN to the app; its remaining output still flows to the client
    this.#directionEnded();
  };

  // endings ---------------------------------------------------------------------------

  #directionEnded(): void {
    if (this.#result !== undefined) return;
    if (this.#clientDone && this.#podDone) {
      this.#finish('done');
    } else if (!this.#inGrace) {
      this.#inGrace = true;
      this.#lastMovedAt = Date.now();
      this.#graceTimer = setTimeout(this.#onGraceTimer, this.#graceMs);
    }
  }

  // Not decided here, in the timers phase: I/O that became ready while the loop lagged is
  // read in the poll phase that follows, and must count.
  readonly #onGraceTimer = (): void => {
    this.#graceTimer = undefined;
    setImmediate(this.#checkGrace);
  };

  readonly #checkGrace = (): void => {
    if (this.#result !== undefined) return;
    const now = Date.now();
    // Bytes of ours still waiting to be written: the direction is busy, not idle.
    if (this.#client.writableLength > 0 || this.#podReadBlocked || this.pod.writableLength > 0) this.#lastMovedAt = now;
    const idleMs = now - this.#lastMovedAt;
    if (idleMs >= this.#graceMs) {
      this.#finish('grace-expired');
    } else {
      this.#graceTimer = setTimeout(this.#onGraceTimer, this.#graceMs - idleMs);
    }
  };

  readonly #onPodError = (err: Error): void => this.#finish('pod-error', err);
  readonly #onClientError = (err: Error): void => this.#finish('client-error', err);

  readonly #onClientClose = (): void => {
    if (!this.#podDone || !this.#clientDone) this.#finish('client-closed');
  };

  #finish(outcome: PipeOutcome, error?: Error): void {
    if (this.#result !== undefined) return;
    this.#result = { outcome, bytesToPod: this.#bytesToPod, bytesToClient: this.#bytesToClient };
    if (error !== undefined) this.#result.error = error;
    if (this.#graceTimer !== undefined) clearTimeout(this.#graceTimer);
    this.#graceTimer = undefined;
    this.#readBound.release();
    this.#writeBound.release();
    connectionEnded();
    if (outcome === 'grace-expired') {
      this.#endCleanly();
    } else if (outcome === 'done' || outcome === 'client-closed') {
      // Done: our FIN may still wait behind what is queued for the app. Client-closed: the
      // client is gone without an error, what it sent is still delivered. Then FIN, close.
      this.#endPodSoon();
    } else {
      // The side that failed is passed the other's error, so a protocol layer can tell a
      // reset (pod-error: the client stream is destroyed with the pod's error) from a close.
      this.pod.destroy();
      if (outcome === 'pod-error') this.#client.destroy(error);
      else this.#client.destroy();
    }
    this.#recycleReadBuffer();
    this.#resolveDone(this.#result);
  }

  // The read buffer goes to the next pipe only when nothing can touch it again: the pod
  // socket reads no more (its EOF came, or it is destroyed), and no write to the client
  // holds a view of it (the pipe waits for a write's callback before reading again).
  #recycleReadBuffer(): void {
    const buffer = this.#podBuffer;
    if (buffer.length !== POD_READ_BUFFER_BYTES || this.#podReadBlocked || !(this.#podDone || this.pod.destroyed)) return;
    if (freeReadBuffers.length < MAX_FREE_READ_BUFFERS) freeReadBuffers.push(buffer);
  }

  // An idle connection is ended, not reset: a FIN each way, as if both had ended. What the
  // client still sends has nowhere to go and is dropped; the client side itself stays with
  // its protocol (a SPDY stream closes when the peer's FIN comes, or with its session).
  #endCleanly(): void {
    const client = this.#client;
    client.discard();
    if (!client.writableEnded) client.end();
    this.#endPodSoon();
  }

  // FIN after what is queued for the app, then close. An app that does not take what is
  // queued gets the grace, then the socket is destroyed: the pipe has ended, nobody waits.
  #endPodSoon(): void {
    this.pod.destroySoon(this.#graceMs);
  }
}

