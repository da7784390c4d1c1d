// SPDY/3.1 wire constants (draft-mbelshe-httpbis-spdy-00 and the 3.1 draft) and the limits
// we hold peers to. Limits are checked as soon as a length is known, before allocating.

export const SPDY_VERSION = 3;
/** First byte pair of every control frame: control bit + version 3. */
export const CONTROL_FRAME_MARKER = 0x8003;
export const FRAME_HEADER_BYTES = 8;

export const enum FrameType {
  SynStream = 1,
  SynReply = 2,
  RstStream = 3,
  Settings = 4,
  Ping = 6,
  GoAway = 7,
  Headers = 8,
  WindowUpdate = 9,
}

export const FLAG_FIN = 0x01;
export const FLAG_UNIDIRECTIONAL = 0x02;

export const enum RstCode {
  ProtocolError = 1,
  InvalidStream = 2,
  RefusedStream = 3,
  UnsupportedVersion = 4,
  Cancel = 5,
  InternalError = 6,
  FlowControlError = 7,
  StreamInUse = 8,
  StreamAlreadyClosed = 9,
  FrameTooLarge = 11,
}

export const enum GoAwayStatus {
  Ok = 0,
  ProtocolError = 1,
  InternalError = 2,
}

/** Largest stream id (31 bits). */
export const MAX_STREAM_ID = 0x7fffffff;
/** A frame's length field is 24 bits: DATA frames up to this are accepted (Go writes <= 32 KiB). */
export const MAX_DATA_FRAME_BYTES = 0xffffff;
/** Control frames other than header-carrying ones are tiny; anything bigger is hostile. */
export const MAX_SMALL_CONTROL_FRAME_BYTES = 1024;
/** Compressed header block of one SYN_STREAM/SYN_REPLY/HEADERS frame. */
export const MAX_COMPRESSED_HEADER_BLOCK_BYTES = 64 * 1024;
/**
 * Header block after inflate. zlib's output is capped at this, because a 64 KiB block of
 * NUL bytes inflates to 64 MiB (a Go runtime grew 5 GiB on one).
 */
export const MAX_HEADER_BLOCK_BYTES = 256 * 1024;
/** Headers per block; port-forward streams carry three. */
export const MAX_HEADER_COUNT = 128;
/**
 * Streams open at once on one session; more are refused (RST REFUSED_STREAM). A forwarded
 * connection holds two (its error stream stays open until the forward ends): 1000
 * connections at once per kubectl.
 */
export const MAX_CONCURRENT_STREAMS = 2000;
