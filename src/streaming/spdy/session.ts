// A SPDY/3.1 server session over any byte-stream Duplex: a TCP socket after an HTTP
// upgrade, or the binary messages of a WebSocket. It knows frames and streams, not
// port-forward: each new client stream goes to `onStream` with its headers.
//
// What Go peers (moby/spdystream, i.e. kubectl and kubelet's relay) need: a SYN_REPLY
// before any DATA on their stream; PINGs echoed; no flow control (SETTINGS and
// WINDOW_UPDATE are accepted and ignored, we never wait for window credit); GOAWAY when we
// end the session. Backpressure is TCP's: a stream whose reader lags holds up to
// STREAM_RECEIVE_BUFFER_BYTES, then the connection is no longer read until it drains.

import type { Duplex } from 'node:stream';
import type { Logger } from '../../log';
import {
  FLAG_FIN,
  FrameType,
  GoAwayStatus,
  MAX_CONCURRENT_STREAMS,
  MAX_DATA_FRAME_BYTES,
  MAX_STREAM_ID,
  RstCode,
} from './constants';
import { SessionError, StreamError, StreamResetError } from './errors';
import { dataFrameHeader, goAwayFrame, pingFrame, rstStreamFrame, synReplyFrame } from './frames';
import { HeaderBlockDecoder, HeaderBlockEncoder, type HeaderMap } from './headers';
import { FrameParser, type FrameSink } from './parser';
import { SpdyStream, type StreamOwner } from './stream';

export interface SpdySessionOptions {
  /** A new stream from the peer; the callee replies (session.reply) or resets it. */
  onStream(stream: SpdyStream, session: SpdySession): void;
  /** No frame for this long ends the session (upstream default 4 h). */
  idleTimeoutMs: number;
  log: Logger;
  /** Called for every PING we echo (a metric; kubectl pings every 5 s). */
  onPing?: () => void;
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
  readonly #decoder = new HeaderBlockDecoder();
  readonly #encoder = new HeaderBlockEncoder();
  readonly #streams = new Map<number, SpdyStream>();
  /** Streams whose reader lags; while any is here the transport is not read. */
  readonly #stalled = new Set<SpdyStream>();
  #lastPeerStreamId = 0;
  /** The last never-opened stream we sent RST INVALID_STREAM for. */
  #lastInvalidStreamId = 0;
  #sawTraffic = true;
  #idleTicks = 0;
  readonly #idleTimer: NodeJS.Timeout;
  #endReason: SessionEndReason | undefined;
  #resolveEnded!: (reason: SessionEndReason) => void;
  /** Settles once the session is over and every stream is gone. */
  readonly ended: Promise<SessionEndReason>;

  constructor(transport: Duplex, options: SpdySessionOptions) {
    this.#transport = transport;
    this.#options = options;
    this.#parser = new FrameParser(this);
    this.ended = new Promise((resolve) => (this.#resolveEnded = resolve));
    const tick = Math.max(1, Math.floor(options.idleTimeoutMs / IDLE_CHECKS_PER_TIMEOUT));
    this.#idleTimer = setInterval(this.#checkIdle, tick);
    this.#idleTimer.unref();
    transport.on('data', this.#onTransportData);
    transport.on('error', (err: Error) => {
      options.log.debug('SPDY transport error', { err });
      this.#end('transport-closed');
    });
    transport.on('close', () => this.#end('transport-closed'));
    transport.on('end', () => this.#end('transport-closed'));
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
    if (stream.replied || stream.destroyed || this.#endReason !== undefined) return;
    stream.replied = true;
    this.#transport.write(synReplyFrame(stream.id, this.#encoder.encode([])));
  }

  /**
   * Reset one stream with a code; the session goes on. The stream is destroyed without an
   * error: its owner asked for this, and an 'error' nobody listens to would crash us.
   */
  reset(stream: SpdyStream, code: RstCode, why: string): void {
    this.#options.log.debug('resetting SPDY stream', { streamId: stream.id, code, why });
    stream.resetCode ??= code;
    stream.destroy();
  }

  /** End the session: GOAWAY, then the transport is closed. */
  close(status: GoAwayStatus = GoAwayStatus.Ok, reason: SessionEndReason = 'closed'): void {
    if (this.#endReason !== undefined) return;
    this.#transport.write(goAwayFrame(this.#lastPeerStreamId, status));
    this.#transport.end();
    const linger = setTimeout(() => this.#transport.destroy(), GOAWAY_LINGER_MS);
    linger.unref();
    this.#end(reason);
  }

  // ---- frames from the peer (FrameSink) ---------------------------------------------

  readonly #onTransportData = (chunk: Buffer): void => {
    if (this.#endReason !== undefined) return; // after GOAWAY or idle: nothing more is read
    this.#sawTraffic = true;
    try {
      this.#parser.push(chunk);
    } catch (err) {
      this.#protocolError(err);
    }
  };

  onData(streamId: number, payload: Buffer, fin: boolean): void {
    const stream = this.#streams.get(streamId);
    if (stream === undefined) {
      // Data racing our RST is normal; data for a stream never opened is not: one RST per
      // such stream, however many pieces its frames arrive in.
      if (streamId > this.#lastPeerStreamId && streamId !== this.#lastInvalidStreamId) {
        this.#lastInvalidStreamId = streamId;
        this.#transport.write(rstStreamFrame(streamId, RstCode.InvalidStream));
      }
      return;
    }
    if (stream.remoteClosed) {
      this.reset(stream, RstCode.StreamAlreadyClosed, 'DATA after FIN');
      return;
    }
    if (payload.length > 0 && !stream.push(payload) && stream.readableLength >= stream.readableHighWaterMark) {
      this.#stall(stream);
    }
    if (fin) {
      stream.remoteClosed = true;
      stream.push(null);
      this.#forgetIfClosed(stream);
    }
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
        this.#transport.end();
        return this.#end('peer-goaway');
      case FrameType.Settings:
      case FrameType.WindowUpdate:
        return; // no flow control: Go peers neither send nor honour it
    }
  }

  #onSynStream(flags: number, body: Buffer): void {
    if (body.length < 10) throw new SessionError(`SYN_STREAM body of ${body.length} bytes is shorter than 10`);
    const streamId = body.readUInt32BE(0) & MAX_STREAM_ID;
    if (streamId === 0 || streamId % 2 === 0) {
      throw new SessionError(`SYN_STREAM with stream id ${streamId}: client streams must be odd`);
    }
    if (streamId <= this.#lastPeerStreamId) {
      throw new SessionError(`SYN_STREAM with stream id ${streamId} not above the last one (${this.#lastPeerStreamId})`);
    }
    this.#lastPeerStreamId = streamId;
    this.#decodeHeaders(body.subarray(10), (headers) => {
      if (this.#streams.size >= MAX_CONCURRENT_STREAMS) {
        this.#transport.write(rstStreamFrame(streamId, RstCode.RefusedStream));
        this.#options.log.warn('refusing a SPDY stream: too many open streams', { limit: MAX_CONCURRENT_STREAMS });
        return;
      }
      const stream = new SpdyStream(streamId, headers, this);
      this.#streams.set(streamId, stream);
      if ((flags & FLAG_FIN) !== 0) {
        stream.remoteClosed = true;
        stream.push(null);
      }
      this.#options.onStream(stream, this);
    });
  }

  // We open no streams, so a SYN_REPLY or HEADERS is out of place; its block must still be
  // inflated to keep the connection's zlib context in step.
  #onUnexpectedHeaders(type: FrameType, body: Buffer): void {
    if (body.length < 4) throw new SessionError(`frame type ${type} body shorter than 4 bytes`);
    const streamId = body.readUInt32BE(0) & MAX_STREAM_ID;
    this.#decodeHeaders(body.subarray(4), () => {
      const stream = this.#streams.get(streamId);
      if (type === FrameType.SynReply && stream !== undefined) {
        this.reset(stream, RstCode.ProtocolError, 'SYN_REPLY for a stream the client opened');
      }
    });
  }

  #decodeHeaders(block: Buffer, then: (headers: HeaderMap) => void): void {
    this.#parser.pause();
    this.#decoder.decode(block, (err, headers) => {
      if (this.#endReason !== undefined) return;
      if (err) return this.#protocolError(err);
      then(headers!);
      try {
        this.#parser.resume();
      } catch (e) {
        this.#protocolError(e);
      }
    });
  }

  #onRstStream(body: Buffer): void {
    if (body.length < 8) throw new SessionError('RST_STREAM body shorter than 8 bytes');
    const stream = this.#streams.get(body.readUInt32BE(0) & MAX_STREAM_ID);
    if (stream === undefined) return;
    stream.resetByPeer = true;
    stream.remoteClosed = true;
    stream.localClosed = true;
    stream.destroy(new StreamResetError(body.readUInt32BE(4)));
  }

  #onPing(body: Buffer): void {
    if (body.length < 4) throw new SessionError('PING body shorter than 4 bytes');
    const id = body.readUInt32BE(0);
    // Odd ids are the client's: echo them unchanged. Even ones would answer our own pings.
    if (id % 2 === 1) {
      this.#transport.write(pingFrame(id));
      this.#options.onPing?.();
    }
  }

  // ---- streams (StreamOwner) --------------------------------------------------------

  writeData(stream: SpdyStream, chunk: Buffer, callback: (err?: Error | null) => void): void {
    if (this.#endReason !== undefined || stream.localClosed) {
      callback(new Error('SPDY stream is closed'));
      return;
    }
    if (!stream.replied) this.reply(stream);
    const transport = this.#transport;
    // One writev for header and payload; the payload is the caller's, never copied. A
    // chunk longer than a frame can say (24 bits) goes out as several frames.
    transport.cork();
    let offset = 0;
    while (chunk.length - offset > MAX_DATA_FRAME_BYTES) {
      transport.write(dataFrameHeader(stream.id, MAX_DATA_FRAME_BYTES, false));
      transport.write(chunk.subarray(offset, offset + MAX_DATA_FRAME_BYTES));
      offset += MAX_DATA_FRAME_BYTES;
    }
    const last = offset === 0 ? chunk : chunk.subarray(offset);
    transport.write(dataFrameHeader(stream.id, last.length, false));
    transport.write(last, callback);
    transport.uncork();
  }

  writeFin(stream: SpdyStream, callback: (err?: Error | null) => void): void {
    if (this.#endReason !== undefined || stream.localClosed) {
      callback();
      return;
    }
    if (!stream.replied) this.reply(stream);
    stream.localClosed = true;
    this.#transport.write(dataFrameHeader(stream.id, 0, true), callback);
    this.#forgetIfClosed(stream);
  }

  streamWantsData(stream: SpdyStream): void {
    if (this.#stalled.delete(stream) && this.#stalled.size === 0) this.#transport.resume();
  }

  streamDestroyed(stream: SpdyStream, err: Error | null): void {
    this.#streams.delete(stream.id);
    if (this.#stalled.delete(stream) && this.#stalled.size === 0) this.#transport.resume();
    if (stream.resetByPeer || this.#endReason !== undefined) return;
    if (stream.localClosed && stream.remoteClosed) return; // closed cleanly
    const code = stream.resetCode ?? (err instanceof StreamError ? err.code : RstCode.Cancel);
    stream.localClosed = true;
    stream.remoteClosed = true;
    this.#transport.write(rstStreamFrame(stream.id, code));
  }

  #forgetIfClosed(stream: SpdyStream): void {
    if (stream.localClosed && stream.remoteClosed) this.#streams.delete(stream.id);
  }

  #stall(stream: SpdyStream): void {
    if (this.#stalled.size === 0) this.#transport.pause();
    this.#stalled.add(stream);
  }

  // ---- endings ----------------------------------------------------------------------

  #protocolError(err: unknown): void {
    const status = err instanceof SessionError ? err.status : GoAwayStatus.InternalError;
    this.#options.log.warn('ending SPDY session: protocol error', { err });
    this.close(status, 'protocol-error');
  }

  readonly #checkIdle = (): void => {
    // A session we stopped reading (a stalled stream) is busy, not idle.
    if (this.#sawTraffic || this.#stalled.size > 0) {
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
    this.#stalled.clear();
    const gone = new Error(`SPDY session ended (${reason})`);
    for (const stream of [...this.#streams.values()]) stream.destroy(gone);
    this.#streams.clear();
    if (reason !== 'closed' && reason !== 'protocol-error' && reason !== 'idle') this.#transport.destroy();
    this.#resolveEnded(reason);
  }
}
