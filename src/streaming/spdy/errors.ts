// Protocol violations, each naming the rule it broke. A SessionError ends the session with
// GOAWAY; a StreamError resets one stream with the RST code the peer will see.

import { GoAwayStatus, RstCode } from './constants';

export class SessionError extends Error {
  constructor(
    message: string,
    readonly status: GoAwayStatus = GoAwayStatus.ProtocolError,
  ) {
    super(message);
    this.name = 'SpdySessionError';
  }
}

export class StreamError extends Error {
  constructor(
    readonly streamId: number,
    readonly code: RstCode,
    message: string,
  ) {
    super(message);
    this.name = 'SpdyStreamError';
  }
}

/** What a stream's readers see when the peer reset it (RST_STREAM). */
export class StreamResetError extends Error {
  readonly code = 'ERR_SPDY_STREAM_RESET';
  constructor(readonly rstCode: number) {
    super(`stream reset by peer (RST_STREAM status ${rstCode})`);
    this.name = 'SpdyStreamResetError';
  }
}
