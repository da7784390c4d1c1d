// The pod side of one forwarded connection: the connected TCP socket the dial returned,
// driven through Node's own TCP handle (what net.Socket wraps) without net.Socket.
//
// Why not net.Socket: a pipe reads the pod into a buffer of its own and writes what the
// client sent in batches; of net.Socket it used only the handle, yet a profile of a kubectl
// churn showed its construction (a Duplex with both stream states, the handle-type probe,
// the event wiring) at 12% of the server's main thread, and its stream machinery (ending,
// destroying, the write queue's bookkeeping) as much again. Here a connection is one small
// object and the handle: reads land in the buffer the pipe gives, writes queued in one
// event-loop turn go out as one writev, and the owner is told of what happens through four
// callbacks, synchronously.
//
// The handle and the calls made on it are tcp-handle.ts's: the same calls net.Socket makes,
// in the same order.

import { binding, socketError, UV_ECANCELED, UV_ENOTCONN, UV_EOF, type ShutdownReq as AnyShutdownReq, type TcpHandle, type WriteReq as AnyWriteReq } from './tcp-handle';

type WriteReq = AnyWriteReq<PodSocket>;
type ShutdownReq = AnyShutdownReq<PodSocket>;

/** What a pod socket tells its owner (the pipe), synchronously, each at most as documented. */
export interface PodSocketEvents {
  /**
   * `nread` bytes were read into `buffer` (from its start). Return false to stop reading
   * until resume() (the bytes are still held elsewhere).
   */
  onRead(nread: number, buffer: Buffer): boolean;
  /** The app's FIN: nothing more will be read. Once. */
  onEnd(): void;
  /** A read, write or shutdown failed; the socket is not destroyed by it. Once. */
  onError(err: Error): void;
  /** Everything queued has been written, after a write() that said false. */
  onDrain(): void;
}

export interface PodSocketOptions {
  /** Bytes queued before write() says false. */
  highWaterMark: number;
  /** Do not read before resume() (an upgrade's adopted connection). */
  paused: boolean;
}

export class PodSocket {
  readonly #handle: TcpHandle;
  readonly #events: PodSocketEvents;
  readonly #highWaterMark: number;
  /** The buffer reads land in; the next one once the owner changes it. */
  #buffer: Buffer;
  #nextBuffer: Buffer | undefined;
  #reading = false;
  /** The owner wants reads (resume) or not (pause, onRead false). */
  #paused: boolean;
  /** Reads held for an upgrade: resume() does not start them. */
  #held = false;
  #eof = false;
  /** Chunks written while corked, with their callbacks. */
  #queue: Buffer[] = [];
  #queueCallbacks: (() => void)[] | null = null;
  #corked = false;
  /** Bytes queued or being written. */
  #pendingBytes = 0;
  /** Writes libuv still has: 0 or 1. */
  #inFlight = 0;
  #needDrain = false;
  #ending = false;
  #shutdownSent = false;
  /** Our FIN is out. */
  #finished = false;
  #destroyAfterFinish = false;
  /** destroySoon's limit; cleared by destroy(), so that it holds nothing past the close. */
  #graceTimer: NodeJS.Timeout | undefined;
  #destroyed = false;
  #failed = false;

  constructor(fd: number, buffer: Buffer, events: PodSocketEvents, options: PodSocketOptions) {
    const handle = new binding.TCP(binding.tcpSocketType);
    const err = handle.open(fd);
    if (err !== 0) {
      handle.close();
      throw socketError(err, 'open');
    }
    this.#handle = handle;
    this.#events = events;
    this.#highWaterMark = options.highWaterMark;
    this.#buffer = buffer;
    this.#paused = options.paused;
    handle.onread = this.#onRead;
    handle.useUserBuffer(buffer);
    if (!this.#paused) this.#startReading();
  }

  get fd(): number {
    return this.#handle.fd;
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Bytes written but not yet taken by the kernel (queued here or in libuv). */
  get writableLength(): number {
    return this.#pendingBytes;
  }

  /** end() was called: our FIN goes (or went) out after what is queued. */
  get writableEnded(): boolean {
    return this.#ending;
  }

  /** The peer's address ('127.0.0.1' or '::1' for a pod dial), or undefined once closed. */
  get remoteAddress(): string | undefined {
    if (this.#destroyed) return undefined;
    const out: { address?: string } = {};
    return this.#handle.getpeername(out) === 0 ? out.address : undefined;
  }

  /** Reads go into `buffer` from the next read on (the current one may still be held). */
  setReadBuffer(buffer: Buffer): void {
    if (buffer !== this.#buffer) this.#nextBuffer = buffer;
  }

  pause(): void {
    this.#paused = true;
    this.#stopReading();
  }

  resume(): void {
    this.#paused = false;
    if (!this.#held) this.#startReading();
  }

  /** An upgrade: no read until releaseReads(), whatever resume() says. */
  holdReads(): void {
    this.#held = true;
    this.#stopReading();
  }

  releaseReads(): void {
    this.#held = false;
  }

  cork(): void {
    this.#corked = true;
  }

  uncork(): void {
    this.#corked = false;
    this.#flush();
  }

  /**
   * Queue `chunk` (held, not copied, until `written` is called: once written, or failed,
   * or dropped by destroy()). Returns false once more than the high-water mark is queued;
   * onDrain follows when all of it has gone.
   */
  write(chunk: Buffer, written?: () => void): boolean {
    if (this.#ending || this.#destroyed) {
      written?.();
      return false;
    }
    this.#queue.push(chunk);
    if (written !== undefined) (this.#queueCallbacks ??= []).push(written);
    this.#pendingBytes += chunk.length;
    if (!this.#corked) this.#flush();
    if (this.#pendingBytes < this.#highWaterMark) return true;
    this.#needDrain = true;
    return false;
  }

  /** Our FIN, after everything queued. */
  end(): void {
    if (this.#ending || this.#destroyed) return;
    this.#ending = true;
    this.#flush();
    if (this.#inFlight === 0) this.#shutdown();
  }

  /**
   * end(), then destroy() once the FIN is out; destroy() anyway after `graceMs` (an app that
   * does not take what is queued for it).
   */
  destroySoon(graceMs: number): void {
    // The app has ended its side and nothing is left to write: close() sends our FIN just
    // as shutdown() would (nothing is unread, so no reset), without the shutdown's syscall,
    // request and grace timer. This is how most connections end.
    if (this.#eof && this.#pendingBytes === 0 && !this.#failed) return this.destroy();
    this.end();
    if (this.#finished || this.#destroyed) return this.destroy();
    this.#destroyAfterFinish = true;
    this.#graceTimer ??= setTimeout(this.#destroyNow, graceMs).unref();
  }

  readonly #destroyNow = (): void => {
    this.#graceTimer = undefined;
    this.destroy();
  };

  /** Close the socket now. Chunks never handed to libuv are released at once; the rest as libuv cancels them. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    if (this.#graceTimer !== undefined) clearTimeout(this.#graceTimer);
    this.#graceTimer = undefined;
    this.#stopReading();
    this.#dropQueue();
    const handle = this.#handle;
    handle.onread = noop;
    handle.close();
  }

  /**
   * An upgrade's old process: close this process's copy of the fd. The same close as
   * destroy(), and as silent on the wire: the new process holds the connection (its own fd
   * for it), so the kernel sends no FIN and no reset.
   */
  release(): void {
    this.destroy();
  }

  // reads ------------------------------------------------------------------------------

  #startReading(): void {
    if (this.#reading || this.#eof || this.#destroyed) return;
    const err = this.#handle.readStart();
    if (err !== 0) return this.#fail(socketError(err, 'read'));
    this.#reading = true;
  }

  #stopReading(): void {
    if (!this.#reading) return;
    this.#reading = false;
    this.#handle.readStop();
  }

  readonly #onRead = (): Buffer | undefined => {
    const nread = binding.state[binding.readBytesOrError]!;
    if (nread > 0) {
      const keepReading = this.#events.onRead(nread, this.#buffer);
      // The owner may have given the next buffer during onRead: libuv takes it from the
      // value returned here (net.Socket's `onread` buffer generator does the same).
      const next = this.#nextBuffer;
      if (next !== undefined) {
        this.#buffer = next;
        this.#nextBuffer = undefined;
      }
      if (!keepReading) this.pause();
      return next;
    }
    if (nread === 0) return undefined;
    this.#stopReading();
    if (nread === UV_EOF) {
      this.#eof = true;
      this.#events.onEnd();
    } else {
      this.#fail(socketError(nread, 'read'));
    }
    return undefined;
  };

  // writes -----------------------------------------------------------------------------

  // One write at a time, as net.Socket does: what is written while one is with libuv waits
  // here and leaves with the next. Handing each turn's writev to libuv at once queued them
  // there one behind the other, each its own syscall and completion callback (a 1 GiB
  // upload through one pipe: 2.7x socat's CPU).
  #flush(): void {
    const queue = this.#queue;
    if (queue.length === 0 || this.#inFlight !== 0 || this.#destroyed) return;
    const req = new binding.WriteWrap<PodSocket>();
    req.handle = this.#handle;
    req.oncomplete = onWriteComplete;
    req.owner = this;
    req.callbacks = this.#queueCallbacks;
    let bytes = 0;
    let err: number;
    if (queue.length === 1) {
      const chunk = queue[0]!;
      bytes = chunk.length;
      req.chunks = chunk;
      queue.length = 0;
      err = this.#handle.writeBuffer(req, chunk);
    } else {
      for (let i = 0; i < queue.length; i++) bytes += queue[i]!.length;
      req.chunks = queue;
      this.#queue = [];
      err = this.#handle.writev(req, queue, true);
    }
    req.bytes = bytes;
    this.#queueCallbacks = null;
    if (err !== 0) {
      this.#fail(socketError(err, 'write'));
      this.#written(req);
    } else if (binding.state[binding.lastWriteWasAsync] !== 0) {
      this.#inFlight++;
    } else {
      this.#written(req);
    }
  }

  /** libuv is done with a write (done, failed or cancelled). */
  completed(req: WriteReq, status: number): void {
    this.#inFlight--;
    if (status < 0 && status !== UV_ECANCELED && !this.#destroyed) this.#fail(socketError(status, 'write'));
    this.#written(req);
    if (!this.#corked || this.#ending) this.#flush();
  }

  #written(req: WriteReq): void {
    this.#pendingBytes -= req.bytes;
    const callbacks = req.callbacks;
    req.callbacks = null;
    if (callbacks !== null) for (let i = 0; i < callbacks.length; i++) callbacks[i]!();
    if (this.#destroyed || this.#inFlight !== 0 || this.#queue.length !== 0) return;
    if (this.#ending) {
      this.#shutdown();
    } else if (this.#needDrain) {
      this.#needDrain = false;
      this.#events.onDrain();
    }
  }

  #dropQueue(): void {
    const callbacks = this.#queueCallbacks;
    this.#queueCallbacks = null;
    this.#queue.length = 0;
    if (callbacks !== null) for (let i = 0; i < callbacks.length; i++) callbacks[i]!();
  }

  // ending -----------------------------------------------------------------------------

  #shutdown(): void {
    if (this.#shutdownSent || this.#destroyed) return;
    this.#shutdownSent = true;
    const req = new binding.ShutdownWrap<PodSocket>();
    req.handle = this.#handle;
    req.oncomplete = onShutdownComplete;
    req.owner = this;
    const err = this.#handle.shutdown(req);
    if (err === 1 || err === UV_ENOTCONN) this.shutdownDone(0);
    else if (err !== 0) this.#fail(socketError(err, 'shutdown'));
  }

  /** Our FIN is out (or could not be sent: the socket is gone, which the reads will tell). */
  shutdownDone(status: number): void {
    this.#finished = true;
    if (status < 0 && status !== UV_ENOTCONN && status !== UV_ECANCELED && !this.#destroyed) {
      this.#fail(socketError(status, 'shutdown'));
      return;
    }
    if (this.#destroyAfterFinish) this.destroy();
  }

  #fail(err: Error): void {
    if (this.#failed || this.#destroyed) return;
    this.#failed = true;
    this.#stopReading();
    this.#events.onError(err);
  }
}

function noop(): undefined {
  return undefined;
}

// One function for every write and shutdown: `this` is the request, which names its socket.
function onWriteComplete(this: WriteReq, status: number): void {
  this.owner.completed(this, status);
}

function onShutdownComplete(this: ShutdownReq, status: number): void {
  this.owner.shutdownDone(status);
}
