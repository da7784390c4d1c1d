// A WebSocket across an upgrade: what ws's Receiver (ws 8, lib/receiver.js) has read and
// not yet turned into messages, as bytes a fresh Receiver reads to the same messages; and
// a server-side WebSocket made on an adopted socket, as WebSocketServer.completeUpgrade
// makes one, minus the handshake (done long ago, by the old process).
//
// The Receiver consumes a frame's header before its payload is all there, and keeps the
// unmasked fragments of a message not yet finished. Both are put back in front of the
// unparsed bytes: the fragments as one non-final frame of the message's opcode, a frame
// already begun with its header written again. Client frames must be masked, so the
// rebuilt ones carry a zero mask (the payload as is), and a frame begun keeps its own mask
// (its buffered payload is still masked: ws unmasks a frame whole).

import type { Socket } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { MAX_WEBSOCKET_MESSAGE_BYTES } from './ws-server';

// ws's Receiver states (lib/receiver.js)
const GET_INFO = 0;
const GET_PAYLOAD_LENGTH_16 = 1;
const GET_PAYLOAD_LENGTH_64 = 2;
const GET_MASK = 3;
const GET_DATA = 4;

interface ReceiverState {
  _state: number;
  _buffers: Buffer[];
  _fragments: Buffer[];
  _fragmented: number;
  _fin: boolean;
  _opcode: number;
  _payloadLength: number;
  _masked: boolean;
  _mask: Buffer | undefined;
  _compressed: boolean;
  _writableState: { length: number };
}

const ZERO_MASK = Buffer.alloc(4);

/** A frame header as a client sends it: FIN/opcode, the length, a mask (the given one or zeros). */
function clientFrameHeader(fin: boolean, opcode: number, length: number, mask: Buffer = ZERO_MASK): Buffer {
  const lengthBytes = length < 126 ? 0 : length < 0x10000 ? 2 : 8;
  const header = Buffer.alloc(2 + lengthBytes + 4);
  header[0] = (fin ? 0x80 : 0) | opcode;
  if (lengthBytes === 0) header[1] = 0x80 | length;
  else if (lengthBytes === 2) {
    header[1] = 0x80 | 126;
    header.writeUInt16BE(length, 2);
  } else {
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(length), 2);
  }
  mask.copy(header, 2 + lengthBytes);
  return header;
}

/**
 * What the WebSocket's Receiver holds, as client bytes a new Receiver parses to the same
 * messages; undefined when it cannot be told now (a write queued behind the parser, an
 * unknown state), and the caller waits.
 */
export function receiverPending(ws: WebSocket): Buffer | undefined {
  const r = (ws as unknown as { _receiver?: ReceiverState })._receiver;
  if (r === undefined || !Array.isArray(r._buffers) || !Array.isArray(r._fragments) || r._compressed) return undefined;
  if (r._writableState.length !== 0) return undefined;
  const parts: Buffer[] = [];
  if (r._fragmented !== 0) {
    const fragments = Buffer.concat(r._fragments);
    parts.push(clientFrameHeader(false, r._fragmented, fragments.length), fragments);
  }
  // A data frame of a fragmented message continues it; a control frame stands alone.
  const opcode = r._fragmented !== 0 && r._opcode < 0x08 ? 0 : r._opcode;
  const first = (r._fin ? 0x80 : 0) | opcode;
  switch (r._state) {
    case GET_INFO:
      break;
    case GET_PAYLOAD_LENGTH_16:
    case GET_PAYLOAD_LENGTH_64:
      // the extended length, the mask and the payload are still in _buffers
      parts.push(Buffer.from([first, (r._masked ? 0x80 : 0) | r._payloadLength]));
      break;
    case GET_MASK: {
      const header = clientFrameHeader(r._fin, opcode, r._payloadLength);
      parts.push(header.subarray(0, header.length - 4)); // the mask is still in _buffers
      break;
    }
    case GET_DATA:
      if (r._masked && r._mask === undefined && r._payloadLength > 0) return undefined;
      parts.push(clientFrameHeader(r._fin, opcode, r._payloadLength, r._mask ?? ZERO_MASK));
      break;
    default:
      return undefined; // inflating or a deferred event: not with our options
  }
  parts.push(...r._buffers);
  return Buffer.concat(parts);
}

/** The options our handshakes use (ws-server.ts), with ws's defaults for the rest. */
let serverOptions: Record<string, unknown> | undefined;

function wsServerOptions(): Record<string, unknown> {
  if (serverOptions === undefined) {
    const server = new WebSocketServer({ noServer: true, clientTracking: false, perMessageDeflate: false, maxPayload: MAX_WEBSOCKET_MESSAGE_BYTES });
    serverOptions = (server as unknown as { options: Record<string, unknown> }).options;
  }
  return serverOptions;
}

/**
 * A server-side WebSocket on an adopted, paused socket. `pending` (receiverPending() of the
 * old process) must be given to feedPending() before the socket is resumed: not through
 * setSocket's head, which ws unshifts into the socket's readable buffer, from where it
 * would come out after the first read of a socket that reads into our own buffers.
 */
export function adoptWebSocket(socket: Socket, protocol: string): WebSocket {
  const options = wsServerOptions();
  const ws = new WebSocket(null as unknown as string, undefined, options);
  (ws as unknown as { _protocol: string })._protocol = protocol;
  (ws as unknown as { setSocket(socket: Socket, head: Buffer, options: Record<string, unknown>): void }).setSocket(socket, Buffer.alloc(0), {
    allowSynchronousEvents: options.allowSynchronousEvents,
    maxBufferedChunks: options.maxBufferedChunks,
    maxFragments: options.maxFragments,
    maxPayload: options.maxPayload,
    skipUTF8Validation: options.skipUTF8Validation,
  });
  return ws;
}

/** Give an adopted WebSocket's receiver what the old process's receiver held (before any socket read). */
export function feedPending(ws: WebSocket, pending: Buffer): void {
  if (pending.length > 0) (ws as unknown as { _receiver: { write(chunk: Buffer): boolean } })._receiver.write(pending);
}
