// A SPDY/3.1 port-forward client for load, written from the draft as spdy-frames.ts is:
// many forwarded connections (error + data stream pairs, opened the way kubectl opens them)
// on a few sessions, each sending a payload to an echo app, half-closing, and reading the
// echo up to the server's FIN. DATA is checked byte by byte against what was sent as it
// arrives and is not kept, so 1000 x 1 MiB costs the test process 1 MiB of payload.
//
// Every connection's payload is the session's random block read from an offset of its own
// (wrapping around), so no two connections carry the same bytes at the same offset.
//
// For test/integration/load-spdy.test.ts and bench/concurrent-load.ts.

import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import type { CriTestClient } from './cri-client';
import { FIN, PeerDeflater, T, dataFrameHeader, goAwayFrame, pingFrame, portForwardHeaders, synStream } from './spdy-frames';

/** A Go peer writes one DATA frame per write, in practice <= 32 KiB. */
const FRAME_BYTES = 32 * 1024;
/** Bytes queued on the session's socket before the writer waits for 'drain'. */
const WRITE_HIGH_WATER_BYTES = 1 << 20;
/** The random block every payload is read from. */
const PAYLOAD_BLOCK_BYTES = 1 << 20;
/** A session that receives nothing for this long while connections are open gives them up. */
const DEFAULT_STALL_MS = 30_000;

/** How a connection's data stream ended on the server's side. */
export type ConnectionEnd = 'fin' | 'reset' | 'session-ended' | 'stalled';

export interface ConnectionResult {
  requestId: number;
  end: ConnectionEnd;
  /** The RST_STREAM status, when end is 'reset'. */
  rstCode?: number;
  sent: number;
  echoed: number;
  /** Every echoed byte equals the byte sent at its offset, and no more came back than was sent. */
  matches: boolean;
  /** Text the server wrote on the error stream (kubectl would print it and exit). */
  errorText: string;
}

interface Connection {
  requestId: number;
  port: number;
  bytes: number;
  /** Offset into the payload block where this connection's payload starts. */
  shift: number;
  errorId: number;
  dataId: number;
  sending: boolean;
  sent: number;
  echoed: number;
  matches: boolean;
  errorText: string;
  end?: ConnectionEnd;
  rstCode?: number;
  errorStreamEnded: boolean;
  resolve(result: ConnectionResult): void;
}

export interface SpdyLoadSessionOptions {
  /** DATA payload per frame (default 32 KiB, as Go writes). */
  frameBytes?: number;
  /** Give open connections up after this long without a byte from the server (default 30 s). */
  stallMs?: number;
}

/** Send the upgrade by hand; resolve with the socket and whatever followed the 101 head. */
function upgrade(url: string): Promise<{ socket: Socket; rest: Buffer }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(u.port), u.hostname);
    socket.setNoDelay(true);
    let buffered = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk]);
      const end = buffered.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.removeListener('data', onData);
      socket.removeListener('error', reject);
      socket.pause();
      const head = buffered.toString('latin1', 0, end);
      if (!head.startsWith('HTTP/1.1 101')) {
        socket.destroy();
        reject(new Error(`SPDY upgrade refused: ${head.split('\r\n')[0]} ${buffered.toString('latin1', end + 4)}`));
        return;
      }
      resolve({ socket, rest: buffered.subarray(end + 4) });
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.write(
      `POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n` +
        'X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n',
    );
  });
}

/** One SPDY port-forward session carrying many echo connections at once. */
export class SpdyLoadSession {
  readonly #socket: Socket;
  readonly #deflater = new PeerDeflater();
  readonly #block = randomBytes(PAYLOAD_BLOCK_BYTES);
  readonly #frameBytes: number;
  readonly #stallMs: number;
  readonly #streams = new Map<number, { conn: Connection; kind: 'error' | 'data' }>();
  readonly #open = new Set<Connection>();
  /** Connections with payload (or their FIN) still to write, served round robin. */
  readonly #ready: Connection[] = [];
  #nextReady = 0;
  #waitingForDrain = false;
  #nextStreamId = 1;
  #nextRequestId = 0;
  #synChain: Promise<unknown> = Promise.resolve();
  #lastProgress = Date.now();
  readonly #stallTimer: NodeJS.Timeout;
  #closed = false;
  /** The socket has closed. */
  readonly closed: Promise<void>;
  /** RST_STREAM frames received, on any stream. */
  rstFrames = 0;
  goAwayReceived = false;

  // frame reader state
  readonly #header = Buffer.alloc(8);
  #headerFill = 0;
  #dataLeft = 0;
  #dataStreamId = 0;
  #dataFin = false;
  #control: { type: number; body: Buffer; fill: number } | undefined;

  private constructor(socket: Socket, options: SpdyLoadSessionOptions) {
    this.#socket = socket;
    this.#frameBytes = options.frameBytes ?? FRAME_BYTES;
    this.#stallMs = options.stallMs ?? DEFAULT_STALL_MS;
    socket.on('data', (chunk: Buffer) => this.#onBytes(chunk));
    socket.on('error', () => undefined); // the close below ends whatever is open
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.#closed = true;
        clearInterval(this.#stallTimer);
        this.#deflater.close();
        for (const conn of [...this.#open]) this.#giveUp(conn, 'session-ended');
        resolve();
      }),
    );
    this.#stallTimer = setInterval(() => {
      if (this.#open.size === 0 || Date.now() - this.#lastProgress < this.#stallMs) return;
      for (const conn of [...this.#open]) this.#giveUp(conn, 'stalled');
    }, 1_000);
  }

  /** Upgrade to SPDY/3.1 on a PortForward URL. */
  static async open(url: string, options: SpdyLoadSessionOptions = {}): Promise<SpdyLoadSession> {
    const { socket, rest } = await upgrade(url);
    const session = new SpdyLoadSession(socket, options);
    if (rest.length > 0) session.#onBytes(rest);
    socket.resume();
    return session;
  }

  /**
   * One forwarded connection to `port`: error stream, its SYN_REPLY, FIN on it, data stream,
   * its SYN_REPLY, `bytes` of payload, FIN; resolves once the server has ended both streams
   * (or reset them, or the session ended or stalled).
   */
  echo(port: number, bytes: number): Promise<ConnectionResult> {
    return new Promise((resolve) => {
      const requestId = this.#nextRequestId++;
      const conn: Connection = {
        requestId,
        port,
        bytes,
        shift: (requestId * 104_729) % PAYLOAD_BLOCK_BYTES,
        errorId: 0,
        dataId: 0,
        sending: false,
        sent: 0,
        echoed: 0,
        matches: true,
        errorText: '',
        errorStreamEnded: false,
        resolve,
      };
      this.#open.add(conn);
      if (this.#closed) return this.#giveUp(conn, 'session-ended');
      conn.errorId = this.#openStream(conn, 'error');
    });
  }

  /** GOAWAY and close, as kubectl does at the end; resolves once the socket has closed. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#socket.end(goAwayFrame(0));
      const timer = setTimeout(() => this.#socket.destroy(), 5_000);
      await this.closed;
      clearTimeout(timer);
    }
  }

  // ---- writing -------------------------------------------------------------------------

  /** SYN_STREAM with the next stream id; blocks leave in the order their ids were taken. */
  #openStream(conn: Connection, kind: 'error' | 'data'): number {
    const id = this.#nextStreamId;
    this.#nextStreamId += 2;
    this.#streams.set(id, { conn, kind });
    const frame = synStream(this.#deflater, id, portForwardHeaders(kind, conn.port, conn.requestId));
    this.#synChain = this.#synChain
      .then(() => frame)
      .then((f) => {
        if (!this.#closed) this.#socket.write(f);
      })
      .catch(() => undefined); // the deflater closes with the session
    return id;
  }

  readonly #pump = (): void => {
    const socket = this.#socket;
    const block = this.#block;
    socket.cork();
    while (this.#ready.length > 0 && socket.writableLength < WRITE_HIGH_WATER_BYTES && !this.#closed) {
      if (this.#nextReady >= this.#ready.length) this.#nextReady = 0;
      const conn = this.#ready[this.#nextReady]!;
      if (conn.sent < conn.bytes) {
        const at = (conn.shift + conn.sent) % block.length;
        const n = Math.min(this.#frameBytes, block.length - at, conn.bytes - conn.sent);
        socket.write(dataFrameHeader(conn.dataId, n, 0));
        socket.write(block.subarray(at, at + n));
        conn.sent += n;
      }
      if (conn.sent === conn.bytes) {
        socket.write(dataFrameHeader(conn.dataId, 0, FIN)); // half-close, as kubectl after io.Copy
        this.#ready.splice(this.#nextReady, 1);
      } else {
        this.#nextReady++;
      }
    }
    socket.uncork();
    if (this.#ready.length > 0 && !this.#waitingForDrain && !this.#closed) {
      this.#waitingForDrain = true;
      socket.once('drain', () => {
        this.#waitingForDrain = false;
        this.#lastProgress = Date.now();
        this.#pump();
      });
    }
  };

  #stopSending(conn: Connection): void {
    const i = this.#ready.indexOf(conn);
    if (i < 0) return;
    this.#ready.splice(i, 1);
    if (this.#nextReady > i) this.#nextReady--;
  }

  // ---- reading -------------------------------------------------------------------------

  #onBytes(chunk: Buffer): void {
    this.#lastProgress = Date.now();
    let offset = 0;
    while (offset < chunk.length) {
      if (this.#dataLeft > 0) {
        const n = Math.min(this.#dataLeft, chunk.length - offset);
        this.#onDataPayload(this.#dataStreamId, chunk.subarray(offset, offset + n));
        offset += n;
        this.#dataLeft -= n;
        if (this.#dataLeft === 0 && this.#dataFin) this.#onFin(this.#dataStreamId);
        continue;
      }
      const control = this.#control;
      if (control !== undefined) {
        const n = Math.min(control.body.length - control.fill, chunk.length - offset);
        chunk.copy(control.body, control.fill, offset, offset + n);
        control.fill += n;
        offset += n;
        if (control.fill === control.body.length) {
          this.#control = undefined;
          this.#onControl(control.type, control.body);
        }
        continue;
      }
      const n = Math.min(8 - this.#headerFill, chunk.length - offset);
      chunk.copy(this.#header, this.#headerFill, offset, offset + n);
      this.#headerFill += n;
      offset += n;
      if (this.#headerFill < 8) break;
      this.#headerFill = 0;
      const word = this.#header.readUInt32BE(0);
      const flags = this.#header[4]!;
      const length = this.#header.readUIntBE(5, 3);
      if ((word & 0x80000000) !== 0) {
        const type = word & 0xffff;
        if (length === 0) this.#onControl(type, Buffer.alloc(0));
        else this.#control = { type, body: Buffer.alloc(length), fill: 0 };
      } else {
        this.#dataStreamId = word;
        this.#dataFin = (flags & FIN) !== 0;
        this.#dataLeft = length;
        if (length === 0 && this.#dataFin) this.#onFin(word);
      }
    }
  }

  #onDataPayload(streamId: number, payload: Buffer): void {
    const entry = this.#streams.get(streamId);
    if (entry === undefined) return;
    const conn = entry.conn;
    if (entry.kind === 'error') {
      conn.errorText += payload.toString();
      return;
    }
    const block = this.#block;
    let offset = 0;
    while (offset < payload.length && conn.matches) {
      if (conn.echoed + offset >= conn.bytes) {
        conn.matches = false; // more came back than was sent
        break;
      }
      const at = (conn.shift + conn.echoed + offset) % block.length;
      const n = Math.min(payload.length - offset, block.length - at);
      if (!payload.subarray(offset, offset + n).equals(block.subarray(at, at + n))) conn.matches = false;
      offset += n;
    }
    conn.echoed += payload.length;
  }

  #onFin(streamId: number): void {
    const entry = this.#streams.get(streamId);
    if (entry === undefined) return;
    if (entry.kind === 'error') entry.conn.errorStreamEnded = true;
    else entry.conn.end ??= 'fin';
    this.#settle(entry.conn);
  }

  #onControl(type: number, body: Buffer): void {
    switch (type) {
      case T.SynReply:
        return this.#onSynReply(body.readUInt32BE(0) & 0x7fffffff);
      case T.RstStream: {
        this.rstFrames++;
        const entry = this.#streams.get(body.readUInt32BE(0) & 0x7fffffff);
        if (entry === undefined) return;
        const conn = entry.conn;
        if (entry.kind === 'data' || conn.dataId === 0) {
          // The data stream, or the error stream before there was a data stream: the connection is over.
          conn.end ??= 'reset';
          conn.rstCode ??= body.readUInt32BE(4);
          this.#stopSending(conn);
        }
        if (entry.kind === 'error' || conn.dataId === 0) conn.errorStreamEnded = true;
        return this.#settle(conn);
      }
      case T.Ping:
        // Not ours (odd ids are): echo it unchanged.
        if (body.readUInt32BE(0) % 2 === 0) this.#socket.write(pingFrame(body.readUInt32BE(0)));
        return;
      case T.GoAway:
        this.goAwayReceived = true;
        return;
      default:
        return; // SETTINGS, WINDOW_UPDATE, HEADERS: Go peers ignore them, so do we
    }
  }

  #onSynReply(streamId: number): void {
    const entry = this.#streams.get(streamId);
    if (entry === undefined || entry.conn.end !== undefined) return;
    const conn = entry.conn;
    if (entry.kind === 'error') {
      // kubectl half-closes the error stream once it is replied, then opens the data stream.
      this.#socket.write(dataFrameHeader(conn.errorId, 0, FIN));
      conn.dataId = this.#openStream(conn, 'data');
      return;
    }
    if (conn.sending) return;
    conn.sending = true;
    this.#ready.push(conn);
    if (!this.#waitingForDrain) this.#pump();
  }

  #giveUp(conn: Connection, end: ConnectionEnd): void {
    conn.end ??= end;
    conn.errorStreamEnded = true;
    this.#stopSending(conn);
    this.#settle(conn);
  }

  #settle(conn: Connection): void {
    if (conn.end === undefined || !conn.errorStreamEnded || !this.#open.delete(conn)) return;
    this.#streams.delete(conn.errorId);
    this.#streams.delete(conn.dataId);
    const { requestId, end, rstCode, sent, echoed, matches, errorText } = conn;
    conn.resolve({ requestId, end, ...(rstCode !== undefined ? { rstCode } : {}), sent, echoed, matches, errorText });
  }
}

// ---- runs of many connections ----------------------------------------------------------

export interface EchoLoadOptions extends SpdyLoadSessionOptions {
  /** Connections in flight per session at once (default: all of the session's share). */
  inFlight?: number;
  /** Called each time a connection has ended, with the count so far (e.g. to sample RSS). */
  onEnded?: (count: number) => void;
}

export interface LoadSummary {
  connections: number;
  /** Ended by the server's FIN, every byte back and equal, no error text. */
  clean: number;
  /** Connections whose data stream was reset (or refused before it opened). */
  reset: number;
  /** RST_STREAM frames received on all sessions. */
  rstFrames: number;
  sessionEnded: number;
  stalled: number;
  /** Connections with an echoed byte that differs from what was sent. */
  corrupt: number;
  bytesSent: number;
  bytesEchoed: number;
  /** Sum over connections of the bytes sent that did not come back. */
  bytesLost: number;
  /** Connections whose error stream carried text. */
  errorTexts: number;
  /** The first such text, if any. */
  firstErrorText?: string;
  /** Distinct RST_STREAM status codes on data streams. */
  rstCodes: number[];
  goAway: boolean;
  seconds: number;
}

export function summarize(results: ConnectionResult[], sessions: SpdyLoadSession[], seconds: number): LoadSummary {
  const count = (end: ConnectionEnd): number => results.filter((r) => r.end === end).length;
  return {
    connections: results.length,
    clean: results.filter((r) => r.end === 'fin' && r.matches && r.echoed === r.sent && r.errorText === '').length,
    reset: count('reset'),
    rstFrames: sessions.reduce((n, s) => n + s.rstFrames, 0),
    sessionEnded: count('session-ended'),
    stalled: count('stalled'),
    corrupt: results.filter((r) => !r.matches).length,
    bytesSent: results.reduce((n, r) => n + r.sent, 0),
    bytesEchoed: results.reduce((n, r) => n + r.echoed, 0),
    bytesLost: results.reduce((n, r) => n + Math.max(0, r.sent - r.echoed), 0),
    errorTexts: results.filter((r) => r.errorText !== '').length,
    ...(results.some((r) => r.errorText !== '') ? { firstErrorText: results.find((r) => r.errorText !== '')!.errorText } : {}),
    rstCodes: [...new Set(results.flatMap((r) => (r.rstCode === undefined ? [] : [r.rstCode])))],
    goAway: sessions.some((s) => s.goAwayReceived),
    seconds,
  };
}

/** One PortForward URL per session (a URL is redeemed once). */
export async function portForwardUrls(cri: CriTestClient, sandboxId: string, port: number, count: number): Promise<string[]> {
  const urls: string[] = [];
  for (let i = 0; i < count; i++) urls.push((await cri.call('PortForward', { pod_sandbox_id: sandboxId, port: [port] })).url);
  return urls;
}

/**
 * `connections` echo connections of `bytes` each to `port`, spread evenly over one session
 * per URL, all at once (or `inFlight` per session at a time); closes the sessions after.
 */
export async function runEchoLoad(
  urls: string[],
  port: number,
  connections: number,
  bytes: number,
  options: EchoLoadOptions = {},
): Promise<LoadSummary> {
  const sessions = await Promise.all(urls.map((url) => SpdyLoadSession.open(url, options)));
  const results: ConnectionResult[] = [];
  const started = process.hrtime.bigint();
  try {
    await Promise.all(
      sessions.map(async (session, s) => {
        const share = Math.floor(connections / sessions.length) + (s < connections % sessions.length ? 1 : 0);
        let next = 0;
        await Promise.all(
          Array.from({ length: Math.min(share, options.inFlight ?? share) }, async () => {
            while (next++ < share) {
              results.push(await session.echo(port, bytes));
              options.onEnded?.(results.length);
            }
          }),
        );
      }),
    );
  } finally {
    await Promise.all(sessions.map((s) => s.close()));
  }
  return summarize(results, sessions, Number(process.hrtime.bigint() - started) / 1e9);
}
