// What a pipe (pipe.ts) needs of the client side of a forwarded connection, and an adapter
// that makes any Node Duplex one (a WebSocket channel, a TCP socket in tests and benches).
//
// A SPDY stream implements it itself, without Node's stream machinery: one Duplex per
// stream (two per connection) was a ReadableState, a WritableState, an EventEmitter and
// their listeners per connection, and Node's stream functions, which see sockets, parsers
// and streams of many shapes, were recompiled after every change of workload (a bulk
// transfer, then a connection churn: "wrong map" deopts in Readable.push, Writable.write
// and the state constructors; the compiler took 28% of the server's CPU in a churn after
// transfers).

import type { Duplex } from 'node:stream';

export type WriteCallback = (err?: Error | null) => void;

/** What the client side tells its pipe. One reader: attach() takes it once. */
export interface PipeClientEvents {
  /** Bytes from the client, in order. A chunk may be a view the client reuses (releasesChunks). */
  onData(chunk: Buffer): void;
  /** The client half-closed: no more data. */
  onEnd(): void;
  /** Closed without an error before both directions ended (e.g. the peer's CANCEL after our FIN). */
  onClose(): void;
  /** Failed (a reset, a broken transport, the session's end). */
  onError(err: Error): void;
}

export interface PipeClient {
  /** Start delivering to `events`: what arrived before is delivered on a later tick. */
  attach(events: PipeClientEvents): void;
  /** From now on, read and drop whatever comes (an idle connection's end, an error stream). */
  discard(): void;
  pause(): void;
  resume(): void;
  /** Bytes received and not yet delivered. */
  readonly readableLength: number;
  /** `callback` runs once the chunk is the client side's, written or failed: the caller may then reuse it. */
  write(chunk: Buffer, callback?: WriteCallback): void;
  /** Bytes written whose callback has not run yet. */
  readonly writableLength: number;
  /** Our half-close (a SPDY FIN). */
  end(): void;
  readonly writableEnded: boolean;
  /** Close at once; with an error, the protocol resets (a SPDY RST_STREAM). */
  destroy(err?: Error): void;
  readonly destroyed: boolean;
  readonly errored: Error | null;
  /** Chunks delivered are views of buffers the client reuses once told through releaseChunk. */
  readonly releasesChunks: boolean;
  releaseChunk(chunk: Buffer): void;
}

/** A Duplex whose chunks are views it reuses once told (a WebSocket channel). */
type ReleasingDuplex = Duplex & { releaseChunk?(chunk: Buffer): void };

/** A Node Duplex as a pipe's client side. */
export class DuplexClient implements PipeClient {
  readonly releasesChunks: boolean;
  #onData: ((chunk: Buffer) => void) | undefined;

  constructor(readonly duplex: Duplex) {
    this.releasesChunks = typeof (duplex as ReleasingDuplex).releaseChunk === 'function';
  }

  attach(events: PipeClientEvents): void {
    const duplex = this.duplex;
    this.#onData = events.onData;
    duplex.on('error', events.onError);
    duplex.on('data', events.onData);
    duplex.on('end', events.onEnd);
    duplex.on('close', events.onClose);
    // 'end' came before anyone listened: it will not come again.
    if (duplex.readableEnded) process.nextTick(events.onEnd);
  }

  discard(): void {
    if (this.#onData !== undefined) this.duplex.off('data', this.#onData);
    this.duplex.resume();
  }

  pause(): void {
    this.duplex.pause();
  }

  resume(): void {
    this.duplex.resume();
  }

  get readableLength(): number {
    return this.duplex.readableLength;
  }

  write(chunk: Buffer, callback?: WriteCallback): void {
    this.duplex.write(chunk, callback);
  }

  get writableLength(): number {
    return this.duplex.writableLength;
  }

  end(): void {
    this.duplex.end();
  }

  get writableEnded(): boolean {
    return this.duplex.writableEnded;
  }

  destroy(err?: Error): void {
    this.duplex.destroy(err);
  }

  get destroyed(): boolean {
    return this.duplex.destroyed;
  }

  get errored(): Error | null {
    return this.duplex.errored;
  }

  releaseChunk(chunk: Buffer): void {
    (this.duplex as ReleasingDuplex).releaseChunk?.(chunk);
  }
}
