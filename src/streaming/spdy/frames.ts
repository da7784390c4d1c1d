// Encoders for the frames a port-forward server sends. Control frames are built whole;
// a DATA frame is an 8-byte header written in front of the payload (never copied).

import {
  CONTROL_FRAME_MARKER,
  FLAG_FIN,
  FRAME_HEADER_BYTES,
  FrameType,
  type GoAwayStatus,
  type RstCode,
} from './constants';

function controlFrame(type: FrameType, flags: number, bodyLength: number): Buffer {
  return writeControlHeader(Buffer.allocUnsafe(FRAME_HEADER_BYTES + bodyLength), type, flags, bodyLength);
}

/** The 8-byte header alone of a control frame whose body is `bodyLength` bytes. */
export function controlFrameHeader(type: number, flags: number, bodyLength: number): Buffer {
  return writeControlHeader(Buffer.allocUnsafe(FRAME_HEADER_BYTES), type, flags, bodyLength);
}

function writeControlHeader(frame: Buffer, type: number, flags: number, bodyLength: number): Buffer {
  frame.writeUInt16BE(CONTROL_FRAME_MARKER, 0);
  frame.writeUInt16BE(type, 2);
  frame.writeUInt32BE(((flags & 0xff) << 24) | bodyLength, 4);
  return frame;
}

export function dataFrameHeader(streamId: number, length: number, fin: boolean): Buffer {
  const header = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  header.writeUInt32BE(streamId & 0x7fffffff, 0);
  header.writeUInt32BE(((fin ? FLAG_FIN : 0) << 24) | length, 4);
  return header;
}

export function synReplyFrame(streamId: number, headerBlock: Buffer, fin = false): Buffer {
  const frame = controlFrame(FrameType.SynReply, fin ? FLAG_FIN : 0, 4 + headerBlock.length);
  frame.writeUInt32BE(streamId & 0x7fffffff, 8);
  headerBlock.copy(frame, 12);
  return frame;
}

export function rstStreamFrame(streamId: number, code: RstCode): Buffer {
  const frame = controlFrame(FrameType.RstStream, 0, 8);
  frame.writeUInt32BE(streamId & 0x7fffffff, 8);
  frame.writeUInt32BE(code, 12);
  return frame;
}

export function pingFrame(id: number): Buffer {
  const frame = controlFrame(FrameType.Ping, 0, 4);
  frame.writeUInt32BE(id >>> 0, 8);
  return frame;
}

export function goAwayFrame(lastGoodStreamId: number, status: GoAwayStatus): Buffer {
  const frame = controlFrame(FrameType.GoAway, 0, 8);
  frame.writeUInt32BE(lastGoodStreamId & 0x7fffffff, 8);
  frame.writeUInt32BE(status, 12);
  return frame;
}
