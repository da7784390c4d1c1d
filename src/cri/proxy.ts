// Proxy mode: the CRI socket passes every call through to an upstream runtime (containerd,
// CRI-O) at the HTTP/2 level, and answers PortForward itself. Working on HTTP/2 streams
// rather than registered gRPC methods means nothing is decoded on the way: request and
// response bytes, metadata, deadline (grpc-timeout), status code and message go through
// unchanged, server-streaming calls included, and a CRI method added upstream next year
// works without an update of ours.

import { promises as fs } from 'node:fs';
import * as http2 from 'node:http2';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import { status as grpcStatus } from '@grpc/grpc-js';
import { RuntimeServiceDefinition, type PortForwardRequestMsg } from '../cri-api';
import { CriError } from '../errors';
import type { Logger } from '../log';
import { toServiceError } from './grpc-status';
import { MESSAGE_MAX_BYTES } from './input-limits';
import { bindPathFor, clearStaleSocket } from './socket-file';

const PORT_FORWARD_PATH = '/runtime.v1.RuntimeService/PortForward';
/** Calls after which what we remember of sandboxes may be wrong. */
const SANDBOX_CHANGING_PATHS = new Set(['/runtime.v1.RuntimeService/StopPodSandbox', '/runtime.v1.RuntimeService/RemovePodSandbox']);
/** The 5-byte prefix of a gRPC message: compressed flag, big-endian length. */
const GRPC_PREFIX_BYTES = 5;
const { NGHTTP2_CANCEL, NGHTTP2_NO_ERROR } = http2.constants;
/** After an upgrade, how long the calls in flight on the old process get to finish. */
const RELEASE_GRACE_MS = 5_000;

export interface CriProxyOptions {
  /** unix:///path/to.sock, or host:port (plain HTTP/2). */
  upstream: string;
  portForward(request: PortForwardRequestMsg): Promise<object>;
  /** A StopPodSandbox or RemovePodSandbox went to the runtime (called as it goes and as it ends). */
  onSandboxesChanged?(): void;
  log: Logger;
}

export class CriProxyServer {
  readonly #server: http2.Http2Server;
  readonly #socketPath: string;
  readonly #options: CriProxyOptions;
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  #upstreamSession: http2.ClientHttp2Session | undefined;

  private constructor(socketPath: string, options: CriProxyOptions) {
    this.#socketPath = socketPath;
    this.#options = options;
    this.#server = http2.createServer();
    this.#server.on('session', (session) => {
      this.#sessions.add(session);
      session.once('close', () => this.#sessions.delete(session));
    });
    this.#server.on('stream', (stream, headers) => this.#onStream(stream, headers));
  }

  /** As CriServer.listen: bound under bindPathFor(socketPath), renamed over it (at takeover, by the old process). */
  static async listen(socketPath: string, options: CriProxyOptions, takeover = false): Promise<CriProxyServer> {
    await fs.mkdir(dirname(socketPath), { recursive: true, mode: 0o755 });
    if (!takeover) await clearStaleSocket(socketPath);
    const bindPath = bindPathFor(socketPath);
    await fs.rm(bindPath, { force: true });
    const proxy = new CriProxyServer(socketPath, options);
    await new Promise<void>((resolve, reject) => {
      proxy.#server.once('error', reject);
      proxy.#server.listen(bindPath, () => resolve());
    });
    await fs.chmod(bindPath, 0o660);
    if (!takeover) await fs.rename(bindPath, socketPath);
    return proxy;
  }

  get address(): string {
    return `unix://${this.#socketPath}`;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => (this.#server.listening ? this.#server.close(() => resolve()) : resolve()));
    for (const session of this.#sessions) session.destroy();
    this.#upstreamSession?.destroy();
    await closed;
    await fs.rm(this.#socketPath, { force: true });
  }

  /**
   * Stop serving and leave the socket file (after an upgrade it is the new process's): new
   * connections are no longer accepted, clients get GOAWAY and reconnect by path, calls in
   * flight finish.
   */
  async release(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const session of this.#sessions) session.close();
    // A long-lived call (kubelet's container-event stream) would hold its session open: it
    // gets RELEASE_GRACE_MS, then is cut, and its client reconnects by path.
    const cut = setTimeout(() => this.#sessions.forEach((session) => session.destroy()), RELEASE_GRACE_MS);
    await closed;
    clearTimeout(cut);
  }

  #onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    stream.on('error', (err) => this.#options.log.debug('CRI proxy: client stream error', { err }));
    if (headers[':path'] === PORT_FORWARD_PATH) {
      void this.#portForward(stream);
      return;
    }
    if (SANDBOX_CHANGING_PATHS.has(headers[':path'] ?? '') && this.#options.onSandboxesChanged !== undefined) {
      // Forgotten before (no new connection dials a sandbox being stopped on what we knew)
      // and after (a lookup that raced the call must not outlive it).
      const changed = this.#options.onSandboxesChanged;
      changed();
      stream.once('close', changed);
    }
    this.#passThrough(stream, headers);
  }

  // ---- pass-through ------------------------------------------------------------------

  // How a relayed call ends mirrors how the upstream ended it:
  // - trailers (grpc-status): passed on after the last message;
  // - RST_STREAM, any code (containerd 2.x resets a call whose deadline passed; a GOAWAY
  //   refuses streams above its last id): the client's stream is reset with the same code,
  //   at once; likewise a client's reset goes upstream with its code;
  // - the upstream connection lost mid-call: UNAVAILABLE (trailers-only before a response,
  //   else trailers after what was relayed), as a direct client would see;
  // - ended without trailers: INTERNAL, saying so (made up, the only status we invent).
  // Responses flow through pipe(), so a slow client holds the upstream back through HTTP/2
  // flow control instead of making us buffer.
  #passThrough(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    const outgoing: http2.OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(headers)) {
      if (name.startsWith(':') && name !== ':method' && name !== ':path') continue;
      outgoing[name] = value;
    }
    let session: http2.ClientHttp2Session;
    let upstream: http2.ClientHttp2Stream;
    try {
      session = this.#upstream();
      upstream = session.request(outgoing, { endStream: false });
    } catch (err) {
      this.#unavailable(stream, err);
      return;
    }
    let trailers: http2.OutgoingHttpHeaders | undefined;
    let failure: Error | undefined;
    upstream.on('response', (responseHeaders, flags) => {
      if (stream.destroyed) return;
      const endStream = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
      stream.respond(responseHeaders, endStream ? { endStream: true } : { waitForTrailers: true });
    });
    upstream.on('trailers', (t) => (trailers = t));
    stream.on('wantTrailers', () => stream.sendTrailers(trailers ?? statusTrailers(grpcStatus.INTERNAL, 'upstream ended the call without a grpc-status')));
    // Reported by 'close' below, which sees the whole outcome.
    upstream.on('error', (err) => (failure = err));
    upstream.on('close', () => {
      if (stream.destroyed || stream.writableEnded) return; // the client went away, or a trailers-only answer ended it
      if (trailers !== undefined) {
        stream.end();
        return;
      }
      const rstCode = upstream.rstCode ?? NGHTTP2_NO_ERROR;
      if (!session.destroyed && rstCode !== NGHTTP2_NO_ERROR) {
        stream.close(rstCode);
        return;
      }
      if (session.destroyed) {
        const message = `upstream CRI runtime ${this.#options.upstream} went away mid-call${failure ? `: ${failure.message}` : ''}`;
        if (!stream.headersSent) return this.#unavailable(stream, failure ?? new Error('connection lost'));
        trailers = statusTrailers(grpcStatus.UNAVAILABLE, message);
        this.#options.log.warn('CRI proxy: upstream connection lost mid-call', { upstream: this.#options.upstream, path: headers[':path'] });
      } else if (!stream.headersSent) {
        respondStatus(stream, grpcStatus.INTERNAL, 'upstream ended the call without a response');
        return;
      }
      stream.end();
    });
    upstream.pipe(stream, { end: false });
    stream.pipe(upstream);
    // The client reset the call (cancelled, or its deadline passed): so does the upstream stream, same code.
    stream.on('close', () => {
      if (!upstream.closed && !upstream.destroyed) upstream.close(stream.rstCode || NGHTTP2_CANCEL);
    });
  }

  /** One HTTP/2 connection to the upstream runtime, made again after it went away. */
  #upstream(): http2.ClientHttp2Session {
    const current = this.#upstreamSession;
    if (current !== undefined && !current.closed && !current.destroyed) return current;
    const target = this.#options.upstream;
    const session = target.startsWith('unix://')
      ? http2.connect('http://localhost', { createConnection: () => connect(target.slice('unix://'.length)) })
      : http2.connect(`http://${target.replace(/^(tcp|dns):\/\/\/?/, '')}`);
    session.on('error', (err) => this.#options.log.debug('CRI proxy: upstream connection error', { upstream: target, err }));
    session.on('close', () => {
      if (this.#upstreamSession === session) this.#upstreamSession = undefined;
    });
    session.on('goaway', () => {
      if (this.#upstreamSession === session) this.#upstreamSession = undefined;
    });
    this.#upstreamSession = session;
    return session;
  }

  #unavailable(stream: http2.ServerHttp2Stream, err: unknown): void {
    const message = `upstream CRI runtime ${this.#options.upstream} is unavailable: ${(err as Error)?.message ?? String(err)}`;
    this.#options.log.warn('CRI proxy: upstream unavailable', { upstream: this.#options.upstream, err });
    respondStatus(stream, grpcStatus.UNAVAILABLE, message);
  }

  // ---- PortForward, answered here ----------------------------------------------------

  async #portForward(stream: http2.ServerHttp2Stream): Promise<void> {
    try {
      // Bounded as the embedded server's grpc-js bounds it, so that both modes answer a
      // request alike: up to the bound, issuePortForward checks each field.
      const body = await readRequestMessage(stream, MESSAGE_MAX_BYTES);
      if (body.length < GRPC_PREFIX_BYTES || body[0] !== 0 || body.readUInt32BE(1) !== body.length - GRPC_PREFIX_BYTES) {
        throw new CriError('invalid-argument', 'PortForward: malformed or compressed gRPC message');
      }
      const request = RuntimeServiceDefinition.PortForward!.requestDeserialize(body.subarray(GRPC_PREFIX_BYTES)) as PortForwardRequestMsg;
      const response = await this.#options.portForward(request);
      const payload = RuntimeServiceDefinition.PortForward!.responseSerialize(response) as Buffer;
      const frame = Buffer.allocUnsafe(5 + payload.length);
      frame[0] = 0;
      frame.writeUInt32BE(payload.length, 1);
      payload.copy(frame, 5);
      if (stream.destroyed) return;
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(frame);
    } catch (err) {
      const { code, details } = toServiceError(err);
      respondStatus(stream, code ?? grpcStatus.INTERNAL, details ?? String(err));
    }
  }
}

/** gRPC status trailers. */
function statusTrailers(code: number, message: string): http2.OutgoingHttpHeaders {
  return { 'grpc-status': String(code), 'grpc-message': percentEncode(message) };
}

/** A trailers-only gRPC answer. */
function respondStatus(stream: http2.ServerHttp2Stream, code: number, message: string): void {
  if (stream.destroyed || stream.headersSent) return;
  stream.respond(
    { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': String(code), 'grpc-message': percentEncode(message) },
    { endStream: true },
  );
}

/** gRPC's grpc-message encoding: percent-encode '%' and anything outside printable ASCII. */
function percentEncode(message: string): string {
  return message.replace(/[^\x20-\x24\x26-\x7e]/gu, (c) => encodeURIComponent(c));
}

/**
 * The one message of a unary request, its prefix included. The length it declares is
 * checked as soon as the prefix is in, before the rest is read; a refused request is
 * drained, not paused, so that the client can finish sending and read our answer.
 */
function readRequestMessage(stream: http2.ServerHttp2Stream, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    const refuse = (err: CriError): void => {
      refused = true;
      chunks.length = 0;
      reject(err);
    };
    stream.on('data', (chunk: Buffer) => {
      if (refused) return;
      const before = size;
      chunks.push(chunk);
      size += chunk.length;
      if (before < GRPC_PREFIX_BYTES && size >= GRPC_PREFIX_BYTES) {
        const head = chunks[0]!.length >= GRPC_PREFIX_BYTES ? chunks[0]! : Buffer.concat(chunks, size);
        const declared = head.readUInt32BE(1);
        if (declared > limit) {
          refuse(new CriError('resource-exhausted', `PortForward: received message larger than max (${declared} vs. ${limit})`));
          return;
        }
      }
      if (size > GRPC_PREFIX_BYTES + limit) refuse(new CriError('invalid-argument', 'PortForward: more than one gRPC message'));
    });
    stream.once('end', () => resolve(Buffer.concat(chunks, size)));
    stream.once('error', reject);
  });
}
