// The stall timeout of a SPDY session. SPDY has no per-stream flow control, so a stream
// whose reader takes nothing, once its receive buffer is full, holds the whole session
// (head-of-line) for as long as its app lives. While a stream holds the session, this
// watches it: progress (its reader took bytes, even without getting under the bound) earns
// it another period; none, and it is reset (destroyed with an error: the session sends
// RST_STREAM CANCEL, and the pipe destroys the pod side too, as its app is not reading).

import type { Logger } from '../../log';

/** What the watch needs of a stream. */
export interface WatchedStream {
  readonly id: number;
  readonly readableLength: number;
  destroy(err: Error): void;
}

export class StallWatch<S extends WatchedStream> {
  #timer: NodeJS.Timeout | undefined;
  #stream: S | undefined;
  #held = 0;

  constructor(
    /** Unset: never. */
    private readonly timeoutMs: number | undefined,
    private readonly log: Logger,
    /** Called for every stream reset (a metric). */
    private readonly onReset: (() => void) | undefined,
  ) {}

  /** `stream` holds the session from now on. */
  watch(stream: S): void {
    if (this.timeoutMs === undefined) return;
    this.stop();
    this.#stream = stream;
    this.#held = stream.readableLength;
    this.#timer = setTimeout(this.#check, this.timeoutMs);
  }

  /** Nothing holds the session any more. */
  stop(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#stream = undefined;
  }

  readonly #check = (): void => {
    this.#timer = undefined;
    const stream = this.#stream;
    if (stream === undefined) return;
    const held = stream.readableLength;
    if (held < this.#held) {
      this.#held = held;
      this.#timer = setTimeout(this.#check, this.timeoutMs);
      return;
    }
    this.#stream = undefined;
    this.log.warn('resetting a SPDY stream that made no progress with a full receive buffer', {
      streamId: stream.id,
      heldBytes: held,
      stallTimeoutMs: this.timeoutMs,
    });
    this.onReset?.();
    stream.destroy(new Error(`stream stalled for ${this.timeoutMs} ms with ${held} bytes unread`));
  };
}
