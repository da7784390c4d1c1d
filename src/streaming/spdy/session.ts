// A SPDY/3.1 server session over any byte-stream Duplex: a TCP socket after an HTTP
// upgrade, or the binary messages of a WebSocket. It knows frames and streams, not
// port-forward: each new client stream goes to `onStream` with its headers.
//
// What Go peers (moby/spdystream, i.e. kubectl and kubelet's relay) need: a SYN_REPLY
// before any DATA on their stream; PINGs echoed; no flow control (SETTINGS and
// WINDOW_UPDATE are accepted and ignored, we never wait for window credit); GOAWAY when we
// end the session. Backpressure is TCP's: a stream whose reader lags holds up to
// STREAM_RECEIVE_BUFFER_BYTES, then the parser waits (head-of-line, as upstream) and the
// connection is no longer read until that stream is read.

import type { Duplex } from 'node:stream';
import type { WriteCallback } from '../../pipe-client';
import { BudgetedBound, type BufferBudget } from '../../buffer-budget';
import { ChurnMap } from '../../churn-map';
import type { Logger } from '../../log';
import {
  FLAG_FIN,
  FrameType,
  GoAwayStatus,
  MAX_CONCURRENT_STREAMS,
  MAX_STREAM_ID,
  RstCode,
} from './constants';
import { ProtocolError } from './errors';
import { goAwayFrame, pingFrame, rstStreamFrame, synReplyFrame } from './frames';
import { frameOutputFor } from './frame-output';
import { FrameWriter } from './frame-writer';
import { HeaderBlockDecoder, HeaderBlockEncoder, type HeaderMap } from './headers';
import { FrameParser, type FrameSink } from './parser';
import type { ChunkTracker } from '../owned-reads';
import { StallWatch } from './stall-watch';
import { SpdyStream, STREAM_BASE_RECEIVE_BYTES, STREAM_RECEIVE_BUFFER_BYTES, type StreamOwner, type StreamState } from './stream';

export interface SpdySessionOptions {
  /** A new stream from the peer; the callee replies (session.reply) or resets it. */
  onStream(stream: SpdyStream, session: SpdySession): void;
  /** No frame for this long ends the session (upstream default 4 h). */
  idleTimeoutMs: number;
  log: Logger;
  /** Called for every PING we echo (a metric; kubectl pings every 5 s). */
  onPing?: () => void;
  /** A stream holding a full receive buffer with no progress this long is reset (stall-watch.ts). */
  stallTimeoutMs?: number;
  /** Called for every stream reset for stalling (a metric). */
  onStallReset?: () => void;
  /** Lends streams their full receive bound; unset: every stream has it from the start. */
  budget?: BufferBudget;
  /** The transport's read buffers, told when views of them are held and let go (owned-reads.ts). */
  chunks?: ChunkTracker;
}

/**
 * A session as an upgrade hands it over, taken between frames (see freeze()): everything a
 * new process needs to go on with the same peer. JSON; bytes in base64.
 */
export interface SpdySessionState {
  lastPeerStreamId: number;
  lastInvalidStreamId: number;
  /** The inbound zlib window (headers.ts); absent before the first header block. */
  inflateWindow?: string;
  /** Our zlib header has gone out. */
  encoderStarted: boolean;
  /** Received and not yet parsed, re-framed from a frame boundary (parser.pendingBytes). */
  pending: string;
  streams: { id: number; headers: [string, string][]; state: StreamState; replied: boolean }[];
}

export type SessionEndReason = 'peer-goaway' | 'transport-closed' | 'idle' | 'protocol-error' | 'closed';

/** How often the idle check runs, as a fraction of the idle timeout. */
const IDLE_CHECKS_PER_TIMEOUT = 8;
/** After our GOAWAY, how long the peer gets to close before we destroy the transport. */
const GOAWAY_LINGER_MS = 1_000;

export class SpdySession implements FrameSink, StreamOwner {
  readonly #transport: Duplex;
  readonly #options: SpdySessionOptions;
  readonly #parser: FrameParser;
  /** Our frames, written together once per event-loop turn. */
  readonly #out: FrameWriter;
  readonly #decoder: HeaderBlockDecoder;
  readonly #encoder: HeaderBlockEncoder;
  readonly #streams = new ChurnMap<number, SpdyStream>();
  /**
   * What the parser waits for, if anything: a stream over its receive bound to be read.
   * While it waits its write callback is held, so the transport is paused once the
   * parser's small queue fills.
   */
  #waitingFor: SpdyStream | undefined;
  /** While a stream holds the parser: how long it may without progress. */
  readonly #stallWatch: StallWatch<SpdyStream>;
  /** We paused the transport because the parser's queue is full. */
  #transportPaused = false;
  #lastPeerStreamId = 0;
  /** The last never-opened stream we sent RST INVALID_STREAM for. */
  #lastInvalidStreamId = 0;
  #sawTraffic = true;
  #idleTicks = 0;
  #idleTimer: NodeJS.Timeout | undefined;
  /** An upgrade is taking this session's state: no timer runs, reading is not resumed. */
  #frozen = false;
  /** An adopted session's bytes received by the old process and not yet parsed: parsed at start(). */
  #adoptedPending: Buffer | undefined;
  #endReason: SessionEndReason | undefined;
  #resolveEnded!: (reason: SessionEndReason) => void;
  /** Settles once the session is over and every stream is gone. */
  readonly ended: Promise<SessionEndReason>;

  /** `adopted`: an upgrade's new process goes on with a session the old one handed over. */
  constructor(transport: Duplex, options: SpdySessionOptions, adopted?: SpdySessionState) {
    this.#transport = transport;
    this.#options = options;
    this.#decoder = new HeaderBlockDecoder(adopted?.inflateWindow === undefined ? undefined : Buffer.from(adopted.inflateWindow, 'base64'));
    this.#encoder = new HeaderBlockEncoder(adopted?.encoderStarted ?? false);
    if (adopted !== undefined) this.#adopt(adopted);
    this.#parser = new FrameParser(this);
    this.#out = new FrameWriter(frameOutputFor(transport));
    this.#stallWatch = new StallWatch(options.stallTimeoutMs, options.log, options.onStallReset);
    this.#parser.on('error', (err: Error) => this.#violation(err));
    this.#parser.on('drain', this.#resumeTransport);
    this.ended = new Promise((resolve) => (this.#resolveEnded = resolve));
    this.#startIdleTimer();
    // Written by hand rather than transport.pipe(parser): after the session ends the
    // transport is still read (and the bytes dropped) so that the peer's close is seen, and
    // a pause is asked for only while the parser waits (write() also says false for one
    // chunk larger than its queue, with nothing queued).
    transport.on('data', this.#onTransportData);
    transport.on('error', (err: Error) => {
      options.log.debug('SPDY transport error', { err });
      this.#end('transport-closed');
    });
    transport.on('close', () => this.#end('transport-closed'));
    transport.on('end', () => this.#end('transport-closed'));
  }

  #startIdleTimer(): void {
    const tick = Math.max(1, Math.floor(this.#options.idleTimeoutMs / IDLE_CHECKS_PER_TIMEOUT));
    this.#idleTimer = setInterval(this.#checkIdle, tick);
    this.#idleTimer.unref();
  }

  // ---- upgrade handover -------------------------------------------------------------
  //
  // The old process freezes the session (the front end stops reading its transport), waits
  // until it is inboundDrained (the pipes then stop reading the pods) and isQuiet, exports its state; the new process constructs it from that state and
  // start()s it. A freeze that is not followed by a handover is undone by thaw().

  #adopt(state: SpdySessionState): void {
    this.#lastPeerStreamId = state.lastPeerStreamId;
    this.#lastInvalidStreamId = state.lastInvalidStreamId;
    this.#adoptedPending = Buffer.from(state.pending, 'base64');
    for (const s of state.streams) {
      const bound = new BudgetedBound(this.#options.budget, STREAM_BASE_RECEIVE_BYTES, STREAM_RECEIVE_BUFFER_BYTES);
      this.#streams.set(s.id, SpdyStream.adopted(s.id, new Map(s.headers), this, bound, s.state, s.replied));
    }
  }

  /** An adopted stream, by id (the port-forward layer reattaches its pairs and pipes). */
  adoptedStream(id: number): SpdyStream {
    const stream = this.#streams.get(id);
    if (stream === undefined) throw new Error(`the handed-over SPDY session has no stream ${id}`);
    return stream;
  }

  /** Every open stream (the port-forward layer finds those that are neither paired nor piped). */
  get streams(): SpdyStream[] {
    return this.#streams.values();
  }

  /** An adopted session: parse what the old process had received, before the transport's own bytes. */
  startAdopted(): void {
    const pending = this.#adoptedPending;
    this.#adoptedPending = undefined;
    if (pending !== undefined && pending.length > 0) this.#onTransportData(pending);
  }

  /** Stop every timer; the parser goes on with what it has, reading is not resumed. */
  freeze(): void {
    this.#frozen = true;
    clearInterval(this.#idleTimer);
    this.#stallWatch.stop();
  }

  /** The session's own reading is held (the parser waits): the front end must not resume it. */
  get readingHeld(): boolean {
    return this.#transportPaused;
  }

  /** What the peer sent has been handed on: the parser neither waits nor holds a write, no stream holds unread data. */
  get inboundDrained(): boolean {
    if (this.#endReason !== undefined || this.#parser.isPaused || this.#parser.writableLength > 0) return false;
    for (const stream of this.#streams.values()) if (stream.readableLength > 0) return false;
    return true;
  }

  /** Between frames with nothing in flight either way: inbound drained, no frame of ours waits to be written. */
  get isQuiet(): boolean {
    if (!this.inboundDrained || this.#out.pending || this.#out.backlog > 0) return false;
    for (const stream of this.#streams.values()) if (stream.writableLength > 0) return false;
    return true;
  }

  exportState(): SpdySessionState {
    const window = this.#decoder.window();
    return {
      lastPeerStreamId: this.#lastPeerStreamId,
      lastInvalidStreamId: this.#lastInvalidStreamId,
      ...(window === undefined ? {} : { inflateWindow: window.toString('base64') }),
      encoderStarted: this.#encoder.started,
      pending: this.#parser.pendingBytes().toString('base64'),
      streams: this.#streams.values().map((s) => ({ id: s.id, headers: [...s.headers], state: s.state, replied: s.replied })),
    };
  }

  /** The upgrade did not take this session: timers again (the front end resumes reading). */
  thaw(): void {
    if (!this.#frozen) return;
    this.#frozen = false;
    if (this.#endReason !== undefined) return;
    this.#startIdleTimer();
    if (this.#waitingFor !== undefined) this.#stallWatch.watch(this.#waitingFor);
  }

  /** Feed bytes that arrived with the upgrade request, before the transport's own. */
  pushInitial(head: Buffer): void {
    if (head.length > 0) this.#onTransportData(head);
  }

  get streamCount(): number {
    return this.#streams.size;
  }

  get isEnded(): boolean {
    return this.#endReason !== undefined;
  }

  /** Send our (empty) SYN_REPLY; kubectl waits for it before opening the next stream. */
  reply(stream: SpdyStream): void {
    if (stream.destroyed || this.#endReason !== undefined || !stream.markReplied()) return;
    this.#out.send(synReplyFrame(stream.id, this.#encoder.encode([])));
  }

  /**
   * Reset one stream with a code; the session goes on. The stream is destroyed without an
   * error: its owner asked for this (its reader, if any, hears of a close).
   */
  reset(stream: SpdyStream, code: RstCode, why: string): void {
    this.#options.log.debug('resetting SPDY stream', { streamId: stream.id, code, why });
    if (this.#endReason === undefined && !stream.destroyed && stream.resetLocally()) {
      this.#out.send(rstStreamFrame(stream.id, code));
    }
    stream.destroy();
  }

  /** End the session: GOAWAY, then the transport is closed. */
  close(status: GoAwayStatus = GoAwayStatus.Ok, reason: SessionEndReason = 'closed'): void {
    if (this.#endReason !== undefined) return;
    this.#out.send(goAwayFrame(this.#lastPeerStreamId, status));
    this.#out.end(); // after this turn's frames
    const linger = setTimeout(() => this.#transport.destroy(), GOAWAY_LINGER_MS);
    linger.unref();
    this.#end(reason);
  }

  // ---- frames from the peer (FrameSink) ---------------------------------------------

  readonly #onTransportData = (chunk: Buffer): void => {
    // After GOAWAY, idle or a violation (reported a tick later): nothing more is parsed.
    if (this.#endReason !== undefined || this.#parser.destroyed) return;
    this.#sawTraffic = true;
    if (!this.#parser.write(chunk) && this.#parser.isPaused && !this.#transportPaused) {
      this.#transportPaused = true;
      this.#transport.pause();
    }
  };

  readonly #resumeTransport = (): void => {
    if (!this.#transportPaused) return;
    this.#transportPaused = false;
    // Frozen: the front end resumes reading, if the upgrade does not take the session.
    if (!this.#frozen) this.#transport.resume();
  };

  onData(streamId: number, payload: Buffer, fin: boolean): void {
    const stream = this.#streams.get(streamId);
    if (stream === undefined) {
      // Data racing our RST is normal; data for a stream never opened is not: one RST per
      // such stream, however many pieces its frames arrive in.
      if (streamId > this.#lastPeerStreamId && streamId !== this.#lastInvalidStreamId) {
        this.#lastInvalidStreamId = streamId;
        this.#violation(ProtocolError.stream(streamId, RstCode.InvalidStream, 'DATA for a stream never opened'));
      }
      return;
    }
    if (stream.remoteClosed) {
      this.#violation(ProtocolError.stream(streamId, RstCode.StreamAlreadyClosed, 'DATA after FIN'));
      return;
    }
    // Over its bound the stream holds the parser until it is read; not on its last piece:
    // nothing more can come for it, and a stream that ended asks for no more reads.
    if (payload.length > 0) this.#options.chunks?.retain(payload);
    if (payload.length > 0 && !stream.push(payload) && !fin) {
      const bound = stream.receiveBound;
      if (stream.readableLength >= bound.limit && !(bound.grow() && stream.readableLength < bound.limit)) this.#wait(stream);
    }
    if (fin && stream.remoteFin()) this.#forgetIfClosed(stream);
  }

  onControl(type: FrameType, flags: number, body: Buffer): void {
    switch (type) {
      case FrameType.SynStream:
        return this.#onSynStream(flags, body);
      case FrameType.SynReply:
      case FrameType.Headers:
        return this.#onUnexpectedHeaders(type, body);
      case FrameType.RstStream:
        return this.#onRstStream(body);
      case FrameType.Ping:
        return this.#onPing(body);
      case FrameType.GoAway:
        this.#options.log.debug('peer sent GOAWAY');
        this.#out.end();
        return this.#end('peer-goaway');
      case FrameType.Settings:
      case FrameType.WindowUpdate:
        return; // no flow control: Go peers neither send nor honour it
    }
  }

  #onSynStream(flags: number, body: Buffer): void {
    if (body.length < 10) {
      return this.#violation(ProtocolError.session(`SYN_STREAM body of ${body.length} bytes is shorter than 10`));
    }
    const streamId = body.readUInt32BE(0) & MAX_STREAM_ID;
    const last = this.#lastPeerStreamId;
    if (streamId === 0 || streamId % 2 === 0) {
      return this.#violation(ProtocolError.session(`SYN_STREAM with stream id ${streamId}: client streams must be odd`));
    }
    if (streamId <= last) {
      return this.#violation(ProtocolError.session(`SYN_STREAM with stream id ${streamId} not above the last one (${last})`));
    }
    this.#lastPeerStreamId = streamId;
    this.#decodeHeaders(body.subarray(10), (headers) => {
      if (this.#streams.size >= MAX_CONCURRENT_STREAMS) {
        this.#options.log.warn('refusing a SPDY stream: too many open streams', { limit: MAX_CONCURRENT_STREAMS });
        return this.#violation(ProtocolError.stream(streamId, RstCode.RefusedStream, 'too many open streams'));
      }
      const bound = new BudgetedBound(this.#options.budget, STREAM_BASE_RECEIVE_BYTES, STREAM_RECEIVE_BUFFER_BYTES);
      const stream = new SpdyStream(streamId, headers, this, bound);
      this.#streams.set(streamId, stream);
      if ((flags & FLAG_FIN) !== 0) stream.remoteFin();
      this.#options.onStream(stream, this);
    });
  }

  // We open no streams, so a SYN_REPLY or HEADERS is out of place; its block must still be
  // inflated to keep the connection's zlib context in step.
  #onUnexpectedHeaders(type: FrameType, body: Buffer): void {
    if (body.length < 4) {
      return this.#violation(ProtocolError.session(`frame type ${type} body shorter than 4 bytes`));
    }
    const streamId = body.readUInt32BE(0) & MAX_STREAM_ID;
    this.#decodeHeaders(body.subarray(4), () => {
      if (type === FrameType.SynReply && this.#streams.has(streamId)) {
        this.#violation(ProtocolError.stream(streamId, RstCode.ProtocolError, 'SYN_REPLY for a stream the client opened'));
      }
    });
  }

  // Inflated synchronously (headers.ts), so the frames after this one (DATA for the stream
  // it opens) cannot be handed out before it.
  #decodeHeaders(block: Buffer, then: (headers: HeaderMap) => void): void {
    let headers: HeaderMap;
    try {
      headers = this.#decoder.decode(block);
    } catch (err) {
      return this.#violation(err as Error);
    }
    then(headers);
  }

  #onRstStream(body: Buffer): void {
    if (body.length < 8) return this.#violation(ProtocolError.session('RST_STREAM body shorter than 8 bytes'));
    this.#streams.get(body.readUInt32BE(0) & MAX_STREAM_ID)?.resetByPeer(body.readUInt32BE(4));
  }

  #onPing(body: Buffer): void {
    if (body.length < 4) return this.#violation(ProtocolError.session('PING body shorter than 4 bytes'));
    const id = body.readUInt32BE(0);
    // Odd ids are the client's: echo them unchanged. Even ones would answer our own pings.
    if (id % 2 === 1) {
      this.#out.send(pingFrame(id));
      this.#options.onPing?.();
    }
  }

  chunkDone(chunk: Buffer): void {
    this.#options.chunks?.release(chunk);
  }

  // ---- streams (StreamOwner) --------------------------------------------------------

  chunkReleased(chunk: Buffer): void {
    this.#options.chunks?.release(chunk);
  }

  writeData(stream: SpdyStream, chunk: Buffer, callback: WriteCallback): void {
    if (this.#endReason !== undefined || stream.localClosed) {
      callback(new Error('SPDY stream is closed'));
      return;
    }
    if (!stream.replied) this.reply(stream);
    this.#out.data(stream.id, chunk, callback);
  }

  writeFin(stream: SpdyStream): void {
    if (this.#endReason !== undefined || stream.localClosed) return;
    if (!stream.replied) this.reply(stream);
    stream.localFin();
    this.#out.fin(stream.id);
    this.#forgetIfClosed(stream);
  }

  streamWantsData(stream: SpdyStream): void {
    stream.receiveBound.release(); // under its base again: the loan goes back
    if (this.#waitingFor === stream) this.#stopWaiting(stream);
  }

  streamDestroyed(stream: SpdyStream, err: Error | null): void {
    this.#streams.delete(stream.id);
    stream.receiveBound.release();
    if (this.#endReason === undefined && stream.resetLocally()) {
      // A stream destroyed with a stream-level ProtocolError carries its own RST code.
      const code = err instanceof ProtocolError && err.scope.kind === 'stream' ? err.scope.code : RstCode.Cancel;
      this.#out.send(rstStreamFrame(stream.id, code));
    }
    // after the RST: the parser may go on at once and answer frames already received
    if (this.#waitingFor === stream) this.#stopWaiting(stream);
  }

  // Closed both ways: nothing more can come or go, and no destroy() need follow.
  #forgetIfClosed(stream: SpdyStream): void {
    if (stream.state !== 'closed') return;
    this.#streams.delete(stream.id);
    stream.receiveBound.release();
  }

  #wait(reason: SpdyStream): void {
    this.#waitingFor = reason;
    this.#parser.pause();
    this.#stallWatch.watch(reason);
  }

  #stopWaiting(reason: SpdyStream): void {
    if (this.#waitingFor !== reason) return;
    this.#waitingFor = undefined;
    this.#stallWatch.stop();
    this.#parser.resume();
  }

  // ---- endings ----------------------------------------------------------------------

  /**
   * The one exit for protocol violations, the parser's and the session's own: a stream
   * error resets that stream (or answers for one we do not have), anything else ends the
   * session with GOAWAY and the error's status.
   */
  #violation(err: unknown): void {
    if (this.#endReason !== undefined) return;
    if (err instanceof ProtocolError && err.scope.kind === 'stream') {
      const { streamId, code } = err.scope;
      const stream = this.#streams.get(streamId);
      if (stream !== undefined) this.reset(stream, code, err.message);
      else this.#out.send(rstStreamFrame(streamId, code));
      return;
    }
    // anything else (a zlib or stream error) is our fault, not the peer's
    const status =
      err instanceof ProtocolError && err.scope.kind === 'session' ? err.scope.status : GoAwayStatus.InternalError;
    this.#options.log.warn('ending SPDY session: protocol error', { err });
    this.close(status, 'protocol-error');
  }

  readonly #checkIdle = (): void => {
    // A session that waits to read (a stalled stream) is busy, not idle.
    if (this.#sawTraffic || this.#waitingFor !== undefined) {
      this.#sawTraffic = false;
      this.#idleTicks = 0;
      return;
    }
    if (++this.#idleTicks >= IDLE_CHECKS_PER_TIMEOUT) {
      this.#options.log.info('ending idle SPDY session', { idleTimeoutMs: this.#options.idleTimeoutMs });
      this.close(GoAwayStatus.Ok, 'idle');
    }
  };

  #end(reason: SessionEndReason): void {
    if (this.#endReason !== undefined) return;
    this.#endReason = reason;
    clearInterval(this.#idleTimer);
    this.#decoder.close();
    this.#parser.destroy(); // stops handing out frames, even of the chunk being parsed
    this.#waitingFor = undefined;
    this.#stallWatch.stop();
    this.#resumeTransport(); // read on (and drop) so that the peer's close is seen
    const gone = new Error(`SPDY session ended (${reason})`);
    for (const stream of this.#streams.values()) stream.destroy(gone);
    this.#streams.clear();
    if (reason !== 'closed' && reason !== 'protocol-error' && reason !== 'idle') this.#transport.destroy();
    this.#resolveEnded(reason);
  }
}
