// Node's own TCP handle (what net.Socket wraps), driven without net.Socket: the pod side of
// every forwarded connection (pod-socket.ts) and the writes of a plain SPDY session to its
// client (streaming/spdy/frame-output.ts).
//
// The handle comes from process.binding('tcp_wrap') and ('stream_wrap'), which Node keeps
// for this use (documentation-only deprecation DEP0111: a warning only under
// --pending-deprecation). The same calls net.Socket makes are made by its users, in the
// same order (lib/net.js, lib/internal/stream_base_commons.js); what is needed is checked
// once, when this module loads, so that a Node without it fails at start, not on a
// connection.

import { getSystemErrorName } from 'node:util';

export interface TcpHandle {
  fd: number;
  onread: () => Buffer | undefined;
  open(fd: number): number;
  useUserBuffer(buffer: Uint8Array): void;
  readStart(): number;
  readStop(): number;
  writeBuffer<Owner>(req: WriteReq<Owner>, buffer: Buffer): number;
  writev<Owner>(req: WriteReq<Owner>, chunks: Buffer[], allBuffers: true): number;
  shutdown<Owner>(req: ShutdownReq<Owner>): number;
  close(callback?: () => void): void;
  getpeername(out: { address?: string; port?: number; family?: string }): number;
}

export interface WriteReq<Owner = unknown> {
  handle: TcpHandle;
  oncomplete: (this: WriteReq<Owner>, status: number) => void;
  owner: Owner;
  /** The chunks of this write: libuv holds pointers into them until it completes. */
  chunks: Buffer | Buffer[];
  /** Their callbacks, called once written or failed (or null when none asked). */
  callbacks: (((err?: Error | null) => void) | undefined)[] | null;
  bytes: number;
}

export interface ShutdownReq<Owner = unknown> {
  handle: TcpHandle;
  oncomplete: (this: ShutdownReq<Owner>, status: number) => void;
  owner: Owner;
}

export interface StreamBinding {
  TCP: new (type: number) => TcpHandle;
  tcpSocketType: number;
  WriteWrap: new <Owner>() => WriteReq<Owner>;
  ShutdownWrap: new <Owner>() => ShutdownReq<Owner>;
  state: Int32Array;
  readBytesOrError: number;
  lastWriteWasAsync: number;
}

export const UV_EOF = -4095;
export const UV_ENOTCONN = -107;
export const UV_ECANCELED = -125;

function loadBinding(): StreamBinding {
  const bind = (name: string): unknown => (process as unknown as { binding(name: string): unknown }).binding(name);
  const tcp = bind('tcp_wrap') as { TCP?: StreamBinding['TCP']; constants?: { SOCKET?: number } };
  const stream = bind('stream_wrap') as {
    WriteWrap?: StreamBinding['WriteWrap'];
    ShutdownWrap?: StreamBinding['ShutdownWrap'];
    streamBaseState?: Int32Array;
    kReadBytesOrError?: number;
    kLastWriteWasAsync?: number;
  };
  const proto = tcp.TCP?.prototype as Partial<TcpHandle> | undefined;
  const methods = ['open', 'useUserBuffer', 'readStart', 'readStop', 'writeBuffer', 'writev', 'shutdown', 'close', 'getpeername'] as const;
  if (
    tcp.TCP === undefined ||
    typeof tcp.constants?.SOCKET !== 'number' ||
    stream.WriteWrap === undefined ||
    stream.ShutdownWrap === undefined ||
    !(stream.streamBaseState instanceof Int32Array) ||
    typeof stream.kReadBytesOrError !== 'number' ||
    typeof stream.kLastWriteWasAsync !== 'number' ||
    methods.some((m) => typeof proto?.[m] !== 'function')
  ) {
    throw new Error(`this Node (${process.version}) lacks the TCP handle API net.Socket is built on (tcp_wrap, stream_wrap): pod connections and client sockets cannot be driven`);
  }
  return {
    TCP: tcp.TCP,
    tcpSocketType: tcp.constants.SOCKET,
    WriteWrap: stream.WriteWrap,
    ShutdownWrap: stream.ShutdownWrap,
    state: stream.streamBaseState,
    readBytesOrError: stream.kReadBytesOrError,
    lastWriteWasAsync: stream.kLastWriteWasAsync,
  };
}

export const binding = loadBinding();

/** A failed call on the socket, as net.Socket reports it (code, errno, syscall). */
export function socketError(errno: number, syscall: string): NodeJS.ErrnoException {
  const code = getSystemErrorName(errno);
  const err: NodeJS.ErrnoException = new Error(`${syscall} ${code}`);
  err.code = code;
  err.errno = errno;
  err.syscall = syscall;
  return err;
}
