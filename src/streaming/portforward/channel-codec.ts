// The v4 channel framing of port-forward over WebSocket (PROTOCOL.md section 5), apart
// from any session: every message starts with its channel, one byte (v4.channel.k8s.io, or
// no subprotocol) or one ASCII digit followed by standard base64 (v4.base64.channel.k8s.io).
// For port index i, channel 2i carries data and 2i+1 errors; the first message on each is
// the port, 2 bytes little-endian.

import type { WebSocket } from 'ws';

export const V4_BINARY = 'v4.channel.k8s.io';
export const V4_BASE64 = 'v4.base64.channel.k8s.io';
/** The subprotocols the channel protocol answers ('' = none offered: binary). */
export const CHANNEL_SUBPROTOCOLS: readonly string[] = ['', V4_BINARY, V4_BASE64];

export type ChannelEncoding = 'binary' | 'base64';

/** Close codes (RFC 6455). */
export const CLOSE_NORMAL = 1000;
export const CLOSE_INVALID_DATA = 1007;
export const CLOSE_POLICY = 1008;

/** Standard base64 with padding, as Go's base64.StdEncoding writes and reads it. */
const STANDARD_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

const CHANNEL_PREFIX: Buffer[] = Array.from({ length: 256 }, (_, i) => Buffer.from([i]));

export function encodingOf(subprotocol: string): ChannelEncoding {
  return subprotocol === V4_BASE64 ? 'base64' : 'binary';
}

/** Send `payload` as one message on `channel`. */
export function sendOnChannel(
  socket: WebSocket,
  channel: number,
  encoding: ChannelEncoding,
  payload: Buffer,
  callback?: (err?: Error | null) => void,
): void {
  if (socket.readyState !== socket.OPEN) {
    // The client is gone: what the pod still sends has nowhere to go. Dropping it (rather
    // than failing the write) lets the client's last bytes still reach the pod.
    callback?.();
    return;
  }
  if (encoding === 'base64') {
    socket.send(String.fromCharCode(48 + channel) + payload.toString('base64'), { binary: false }, callback);
    return;
  }
  // The channel byte and the payload as two fragments of one message: no copy of the payload.
  socket.send(CHANNEL_PREFIX[channel]!, { binary: true, fin: false });
  socket.send(payload, { binary: true, fin: true }, callback);
}

/** The first message of every channel: the port, 2 bytes little-endian. */
export function portPrefix(port: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16LE(port, 0);
  return b;
}

/**
 * Decodes the client's messages of one WebSocket that carries `portCount` ports. One per
 * session, reused for every message: decode() leaves its answer in the decoder's fields
 * instead of allocating a result per message.
 */
export class ChannelDecoder {
  /** After decode() >= 0: the message's payload (a view of the message in binary). */
  payload: Buffer = Buffer.alloc(0);
  /** After decode() < 0: the close code and reason the WebSocket must close with. */
  closeCode = 0;
  reason = '';

  constructor(
    private readonly encoding: ChannelEncoding,
    private readonly portCount: number,
  ) {}

  /** The port index whose data channel the message is for, or -1 (see closeCode). */
  decode(message: Buffer, isBinary: boolean): number {
    let channel: number;
    if (this.encoding === 'base64') {
      if (isBinary) return this.#fail(CLOSE_INVALID_DATA, 'binary message on a base64 channel connection');
      channel = message.length > 0 ? message[0]! - 48 : -1;
      const text = message.toString('latin1', 1);
      if (!STANDARD_BASE64.test(text)) return this.#fail(CLOSE_INVALID_DATA, 'invalid base64 payload');
      this.payload = Buffer.from(text, 'base64');
    } else {
      if (!isBinary) return this.#fail(CLOSE_INVALID_DATA, 'text message on a binary channel connection');
      channel = message.length > 0 ? message[0]! : -1;
      this.payload = message.subarray(1);
    }
    if (!(channel >= 0 && channel < 2 * this.portCount)) return this.#fail(CLOSE_POLICY, `unknown channel ${channel}`);
    if (channel % 2 === 1) return this.#fail(CLOSE_POLICY, `channel ${channel} is an error channel: clients must not write to it`);
    return channel / 2;
  }

  #fail(code: number, reason: string): -1 {
    this.closeCode = code;
    this.reason = reason;
    return -1;
  }
}
