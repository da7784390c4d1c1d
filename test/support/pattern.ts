// A seeded byte stream for downloads that must arrive byte for byte, and the two ends of
// it: sendPattern (the pod app's mode `pattern:<bytes>:<seed>:<bytesPerSecond>`) and
// PatternVerifier (the client checks each chunk as it arrives; nothing is kept).
//
// The stream is 1 MiB blocks of seeded pseudo-random bytes (AES-CTR of zeros under a key
// made from the seed) whose every 4 KiB page starts with its page number in the stream
// (u32 LE). So a lost, repeated or reordered piece of any size shows at its offset, and
// two streams of different seeds (two downloads crossed over) differ from their first byte.

import { createCipheriv, createHash } from 'node:crypto';
import type { Socket } from 'node:net';

export const PATTERN_BLOCK_BYTES = 1 << 20;
const PAGE_BYTES = 4096;
const PAGES_PER_BLOCK = PATTERN_BLOCK_BYTES / PAGE_BYTES;
/** What the sender writes at a time (and may write ahead of its pace). */
const PIECE_BYTES = 256 * 1024;

const bases = new Map<number, Buffer>();

function baseBlock(seed: number): Buffer {
  let base = bases.get(seed);
  if (base === undefined) {
    const key = createHash('sha256').update(`cri-portforward test pattern ${seed}`).digest().subarray(0, 16);
    base = createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(PATTERN_BLOCK_BYTES));
    bases.set(seed, base);
  }
  return base;
}

/** Block `index` of the stream of `seed`: a new buffer. */
export function patternBlock(seed: number, index: number): Buffer {
  const block = Buffer.allocUnsafe(PATTERN_BLOCK_BYTES);
  baseBlock(seed).copy(block);
  const firstPage = index * PAGES_PER_BLOCK;
  for (let p = 0; p < PAGES_PER_BLOCK; p++) block.writeUInt32LE(firstPage + p, p * PAGE_BYTES);
  return block;
}

/**
 * Write the first `total` bytes of the stream of `seed` with backpressure, at most
 * `bytesPerSecond` on average (0: as fast as the socket takes them), then end the socket.
 * The first byte the peer sends lifts the pace: the test lets a download run slowly while
 * it upgrades the server, then lets it finish at full speed.
 */
export function sendPattern(socket: Socket, total: number, seed: number, bytesPerSecond: number): void {
  const started = performance.now();
  let paced = bytesPerSecond > 0;
  let sent = 0;
  let block: Buffer = Buffer.alloc(0);
  let blockIndex = -1;
  let timer: NodeJS.Timeout | undefined;
  let waitingForDrain = false;
  const more = (): void => {
    if (timer !== undefined || waitingForDrain) return;
    while (sent < total && !socket.destroyed) {
      if (paced) {
        // Ahead of the pace by more than one piece: wait until the pace catches up.
        const dueMs = ((sent - PIECE_BYTES) / bytesPerSecond) * 1000 - (performance.now() - started);
        if (dueMs > 0) {
          timer = setTimeout(() => {
            timer = undefined;
            more();
          }, Math.max(1, Math.ceil(dueMs)));
          return;
        }
      }
      const index = Math.floor(sent / PATTERN_BLOCK_BYTES);
      if (index !== blockIndex) {
        block = patternBlock(seed, index);
        blockIndex = index;
      }
      const within = sent % PATTERN_BLOCK_BYTES;
      const n = Math.min(PIECE_BYTES, PATTERN_BLOCK_BYTES - within, total - sent);
      sent += n;
      if (!socket.write(block.subarray(within, within + n))) {
        waitingForDrain = true;
        return;
      }
    }
    if (sent >= total && !socket.writableEnded) socket.end();
  };
  socket.on('drain', () => {
    waitingForDrain = false;
    more();
  });
  socket.on('data', () => {
    if (!paced) return;
    paced = false;
    if (timer !== undefined) {
      clearTimeout(timer);
      timer = undefined;
      more();
    }
  });
  more();
}

/** Checks a stream of `seed` chunk by chunk as it arrives; keeps only counts and the first difference. */
export class PatternVerifier {
  /** Bytes received so far. */
  received = 0;
  /** Offset of the first byte that differs from the stream (or lies beyond its end), if any. */
  mismatchAt: number | undefined;
  #block: Buffer | undefined;
  #blockIndex = -1;

  constructor(
    readonly seed: number,
    readonly total: number,
  ) {}

  push(chunk: Buffer): void {
    let offset = 0;
    while (offset < chunk.length) {
      const position = this.received;
      const within = position % PATTERN_BLOCK_BYTES;
      const n = Math.min(chunk.length - offset, PATTERN_BLOCK_BYTES - within);
      if (this.mismatchAt === undefined) {
        if (position + n > this.total) {
          this.mismatchAt = Math.max(position, this.total);
        } else {
          const got = chunk.subarray(offset, offset + n);
          const expected = this.#expected(Math.floor(position / PATTERN_BLOCK_BYTES)).subarray(within, within + n);
          if (!got.equals(expected)) {
            let i = 0;
            while (got[i] === expected[i]) i++;
            this.mismatchAt = position + i;
          }
        }
      }
      this.received += n;
      offset += n;
    }
  }

  /** Every byte of the stream arrived, each equal to the stream's byte at its offset. */
  get intact(): boolean {
    return this.received === this.total && this.mismatchAt === undefined;
  }

  describe(): string {
    const mismatch = this.mismatchAt === undefined ? 'no byte differs' : `first difference at byte ${this.mismatchAt}`;
    return `${this.received} of ${this.total} bytes of pattern ${this.seed}, ${mismatch}`;
  }

  #expected(index: number): Buffer {
    if (index !== this.#blockIndex) {
      this.#block = patternBlock(this.seed, index);
      this.#blockIndex = index;
    }
    return this.#block!;
  }
}
