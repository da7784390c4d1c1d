// An HTTP/2 upstream for the proxy's relay tests: Node's http2 server (nghttp2, not our
// code) on a unix socket, told by each request's path how to end the call, so the tests
// can make it do what a runtime does rarely and not on demand: reset a call with a given
// code before or after answering, lose its connection mid-call, send GOAWAY, stream more
// than a slow client reads. Paths: /<mode>/<arg>.
//   /ok/0            answer one message, trailers grpc-status 0
//   /reset-before/N  RST_STREAM code N before any response
//   /reset-after/N   respond, one message, then RST_STREAM code N (no trailers)
//   /kill/0          respond, one message, then drop every connection
//   /stream/N        respond and write N bytes of gRPC messages (64 KiB each) as fast as
//                    flow control lets it, then trailers
//   /wait/0          respond and wait until the client resets the call (recorded)

import { rmSync } from 'node:fs';
import * as http2 from 'node:http2';
import type { Socket } from 'node:net';

const MESSAGE_BYTES = 64 * 1024;

export interface H2Upstream {
  address: string;
  /** Bytes /stream calls have handed to HTTP/2 so far (what flow control let through). */
  streamed: number;
  /** RST_STREAM codes the upstream saw from the client side, in arrival order. */
  resetsSeen: number[];
  /** Streams open on the upstream now. */
  openStreams(): number;
  /** GOAWAY on every session (in-flight calls finish; new ones need a new connection). */
  goaway(): void;
  /** Connections accepted so far. */
  connections(): number;
  close(): Promise<void>;
}

export async function startH2Upstream(socketPath: string): Promise<H2Upstream> {
  const server = http2.createServer();
  const sockets = new Set<Socket>();
  const sessions = new Set<http2.ServerHttp2Session>();
  let accepted = 0;
  let open = 0;
  const upstream: H2Upstream = {
    address: `unix://${socketPath}`,
    streamed: 0,
    resetsSeen: [],
    openStreams: () => open,
    goaway: () => sessions.forEach((s) => s.goaway()),
    connections: () => accepted,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  server.on('connection', (socket: Socket) => {
    accepted++;
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.on('session', (session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
  });
  server.on('stream', (stream, headers) => {
    open++;
    stream.on('error', () => undefined); // resets are what these tests are about
    const [, mode, arg] = String(headers[':path']).split('/');
    stream.once('close', () => {
      open--;
      // Only these modes never reset a stream themselves: a code here came from the client side.
      if ((mode === 'wait' || mode === 'stream') && stream.rstCode !== undefined && stream.rstCode !== 0) upstream.resetsSeen.push(stream.rstCode);
    });
    const n = Number(arg);
    if (mode === 'reset-before') {
      setTimeout(() => stream.close(n), 20);
      return;
    }
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    if (mode === 'wait') return;
    if (mode === 'stream') {
      const message = Buffer.alloc(MESSAGE_BYTES, 0x61);
      message.writeUInt32BE(MESSAGE_BYTES - 5, 1);
      message[0] = 0;
      let left = n;
      const pump = (): void => {
        while (left > 0) {
          left -= MESSAGE_BYTES;
          const more = stream.write(message, () => (upstream.streamed += MESSAGE_BYTES));
          if (!more) return void stream.once('drain', pump);
        }
        stream.end();
      };
      pump();
      return;
    }
    stream.write(grpcMessage('A'), () =>
      setTimeout(() => {
        if (mode === 'reset-after') stream.close(n);
        else if (mode === 'kill') sockets.forEach((s) => s.destroy());
        else stream.end();
      }, 20),
    );
  });
  rmSync(socketPath, { force: true });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return upstream;
}

/** One gRPC message (uncompressed) with this payload. */
export function grpcMessage(payload: string): Buffer {
  const body = Buffer.from(payload);
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  body.copy(frame, 5);
  return frame;
}
