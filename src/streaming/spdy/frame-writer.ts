// Our side of a SPDY session on its transport. Frames written during one event-loop turn
// (the SYN_REPLYs for a chunk of SYN_STREAMs; the DATA and FIN of every pod read of one
// poll phase, for every stream) leave in one writev when the turn ends: the transport is
// corked at the first frame and uncorked in setImmediate, which runs right after the poll
// phase, so nothing waits for a timer or a later turn. A write per frame was an eighth of
// the server's CPU per new connection (the syscall and Writable's bookkeeping).

import type { Duplex } from 'node:stream';
import { MAX_DATA_FRAME_BYTES } from './constants';
import { dataFrameHeader } from './frames';

type WriteCallback = (err?: Error | null) => void;

export class FrameWriter {
  readonly #transport: Duplex;
  #corked = false;

  constructor(transport: Duplex) {
    this.#transport = transport;
  }

  /** A control frame, or a DATA header with no payload. */
  send(frame: Buffer, callback?: WriteCallback): void {
    this.#corkForTurn();
    this.#transport.write(frame, callback);
  }

  /**
   * DATA for one stream. The payload is the caller's, never copied; `callback` runs once
   * the transport has taken it. A chunk longer than a frame can say (24 bits) goes out as
   * several frames.
   */
  data(streamId: number, chunk: Buffer, callback: WriteCallback): void {
    this.#corkForTurn();
    const transport = this.#transport;
    let offset = 0;
    while (chunk.length - offset > MAX_DATA_FRAME_BYTES) {
      transport.write(dataFrameHeader(streamId, MAX_DATA_FRAME_BYTES, false));
      transport.write(chunk.subarray(offset, offset + MAX_DATA_FRAME_BYTES));
      offset += MAX_DATA_FRAME_BYTES;
    }
    const last = offset === 0 ? chunk : chunk.subarray(offset);
    transport.write(dataFrameHeader(streamId, last.length, false));
    transport.write(last, callback);
  }

  /** Frames wait for the end of this turn (an upgrade waits for them to leave). */
  get pending(): boolean {
    return this.#corked;
  }

  #corkForTurn(): void {
    if (this.#corked) return;
    this.#corked = true;
    this.#transport.cork();
    setImmediate(this.#uncork);
  }

  readonly #uncork = (): void => {
    this.#corked = false;
    this.#transport.uncork();
  };
}
