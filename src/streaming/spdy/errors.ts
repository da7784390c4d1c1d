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

/**
 * What a stream's readers see when the peer reset it (RST_STREAM). It has no stack: a
 * reset is the peer's doing, not a path through our code, and kubectl resets streams as it
 * drops them, so taking a stack cost 3% of the server's CPU per connection in a churn.
 */
export class StreamResetError extends Error {
  readonly code: string;
  readonly rstCode: number;
  constructor(rstCode: number) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(`stream reset by peer (RST_STREAM status ${rstCode})`);
    Error.stackTraceLimit = limit;
    this.name = 'SpdyStreamResetError';
    this.code = 'ERR_SPDY_STREAM_RESET';
    this.rstCode = rstCode;
  }
}
