// Protocol violations, each naming the rule it broke, as one error type that says what the
// peer will see (SPDY/3 draft 2.4): a session error ends the connection with GOAWAY and a
// status, a stream error ends one stream with RST_STREAM and a code. Both leave the session
// through one exit (SpdySession's violation handler); the parser's leave it as its 'error'.

import { GoAwayStatus, type RstCode } from './constants';

export type ViolationScope =
  | { readonly kind: 'session'; readonly status: GoAwayStatus }
  | { readonly kind: 'stream'; readonly streamId: number; readonly code: RstCode };

export class ProtocolError extends Error {
  private constructor(
    message: string,
    readonly scope: ViolationScope,
  ) {
    super(message);
    this.name = 'SpdyProtocolError';
  }

  /** The whole connection is at fault: GOAWAY with `status`, then the session ends. */
  static session(message: string, status: GoAwayStatus = GoAwayStatus.ProtocolError): ProtocolError {
    return new ProtocolError(message, { kind: 'session', status });
  }

  /** One stream is at fault: RST_STREAM `code` on it; the session goes on. */
  static stream(streamId: number, code: RstCode, message: string): ProtocolError {
    return new ProtocolError(message, { kind: 'stream', streamId, code });
  }
}

/** Statuses up to this get one shared StreamResetError each (SPDY/3 defines 1-11). */
const SHARED_RESET_STATUSES = 16;
const sharedResets: (StreamResetError | undefined)[] = [];

/**
 * What a stream's readers see when the peer reset it (RST_STREAM). It has no stack: a
 * reset is the peer's doing, not a path through our code. And it is made once per status
 * and shared by every stream reset with it (nothing writes to it): kubectl resets each
 * data stream it is done with, and a fresh one per reset cost 1.8% of the server's CPU in
 * a kubectl churn (perf), V8's Error construction and Node's destroy(), which formats the
 * error's stack once (it reads err.stack).
 */
export class StreamResetError extends Error {
  readonly code: string;
  readonly rstCode: number;
  private constructor(rstCode: number) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(`stream reset by peer (RST_STREAM status ${rstCode})`);
    Error.stackTraceLimit = limit;
    this.name = 'SpdyStreamResetError';
    this.code = 'ERR_SPDY_STREAM_RESET';
    this.rstCode = rstCode;
  }

  /** The error for a reset with `rstCode` (any u32 the peer sent). */
  static of(rstCode: number): StreamResetError {
    if (rstCode >= SHARED_RESET_STATUSES) return new StreamResetError(rstCode);
    return (sharedResets[rstCode] ??= new StreamResetError(rstCode));
  }
}
