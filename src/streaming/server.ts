// The HTTP(S) streaming server: /portforward/<token> (GET and POST), /healthz, /metrics.

import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { Socket, type AddressInfo, type SocketConstructorOpts } from 'node:net';
import type { Duplex } from 'node:stream';
import type { ListenAddress } from '../config';
import type { Logger } from '../log';
import type { Metrics } from '../metrics';
import { sendPlain, sendPlainOnSocket, type PlainAnswer } from './plain-answer';
import type { PortForwardProtocol } from './protocol';
import { tokenOfPath } from './portforward-url';
import type { TokenCache } from './tokens';

/** A client that has not sent its request headers by then is dropped (slowloris). */
const HEADERS_TIMEOUT_MS = 30_000;

export interface StreamingServerOptions {
  address: ListenAddress;
  /**
   * An upgrade's new process: the old one's URL base, kept for the URLs it issues; it
   * accepts on the inherited listener only once acceptOn() is called.
   */
  takeover?: { baseUrl: string };
  tls: { cert: string; key: string } | undefined;
  tokens: TokenCache;
  metrics: Metrics;
  protocols: readonly PortForwardProtocol[];
  log: Logger;
}

export class StreamingServer {
  readonly #server: http.Server;
  readonly #options: StreamingServerOptions;
  /** Sockets handed to a protocol or answered raw: the server ends them on close. */
  readonly #upgraded = new Set<Duplex>();
  #baseUrl = '';

  private constructor(options: StreamingServerOptions) {
    this.#options = options;
    const serverOptions: http.ServerOptions = { headersTimeout: HEADERS_TIMEOUT_MS };
    this.#server = options.tls
      ? https.createServer({
          ...serverOptions,
          cert: readFileSync(options.tls.cert),
          key: readFileSync(options.tls.key),
        })
      : http.createServer(serverOptions);
    this.#server.on('request', (req, res) => this.#onRequest(req, res));
    this.#server.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head));
    this.#server.on('clientError', (err, socket) => {
      options.log.debug('bad HTTP request on the streaming server', { err });
      if (socket.writable) sendPlainOnSocket(socket, { status: 400, body: 'bad HTTP request' });
      else socket.destroy();
    });
  }

  static async listen(options: StreamingServerOptions): Promise<StreamingServer> {
    const server = new StreamingServer(options);
    if (options.takeover !== undefined) {
      server.#baseUrl = options.takeover.baseUrl;
      return server;
    }
    await server.#listen([options.address.port, options.address.host]);
    const { port } = server.#server.address() as AddressInfo;
    const scheme = options.tls ? 'https' : 'http';
    server.#baseUrl = `${scheme}://${urlHost(options.address.host)}:${port}`;
    return server;
  }

  #listen(args: [number, string] | [{ fd: number }]): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(...(args as [number, string]), () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
  }

  /** Accept on an already listening socket (an upgrade's inherited or kept listener). */
  acceptOn(fd: number): Promise<void> {
    return this.#listen([{ fd }]);
  }

  /** Stop accepting; the sessions already served go on. */
  stopAccepting(): Promise<void> {
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  /** The listening socket's fd, for an upgrade to hand over (Linux TCP handles expose it). */
  get listenerFd(): number {
    const fd = (this.#server as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) throw new Error('the streaming server is not listening on an fd');
    return fd;
  }

  /** Upgraded connections (port-forward sessions) still open. */
  get openSessions(): number {
    return this.#upgraded.size;
  }

  /** Where PortForward URLs point: <baseUrl>/portforward/<token>. */
  get baseUrl(): string {
    return this.#baseUrl;
  }

  /**
   * An upgrade's new process: a client connection handed over by the old one, tracked as
   * an upgraded socket; paused (nothing is read before the session is started).
   */
  adoptConnection(fd: number): Socket {
    const socket = new Socket({ fd, readable: true, writable: true, allowHalfOpen: true, pauseOnCreate: true } as SocketConstructorOpts);
    this.#track(socket);
    return socket;
  }

  /** The old process: a connection handed over is no longer ours to end or count. */
  forget(socket: Duplex): void {
    this.#upgraded.delete(socket);
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => (this.#server.listening ? this.#server.close(() => resolve()) : resolve()));
    this.#server.closeAllConnections();
    for (const socket of this.#upgraded) socket.destroy();
    await closed;
  }

  #onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (req.method === 'GET' && pathOf(req) === '/metrics') {
      void this.#sendMetrics(res);
      return;
    }
    const answer = this.#route(req);
    if (answer !== undefined) sendPlain(res, answer);
  }

  #track(socket: Duplex): void {
    this.#upgraded.add(socket);
    socket.once('close', () => this.#upgraded.delete(socket));
    socket.on('error', (err) => this.#options.log.debug('upgraded socket error', { err }));
  }

  #onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    this.#track(socket);
    const answer = this.#route(req, { socket, head });
    if (answer !== undefined) sendPlainOnSocket(socket, answer);
  }

  /** Returns the plain answer to send, or undefined when a protocol took the socket. */
  #route(req: http.IncomingMessage, upgrade?: { socket: Duplex; head: Buffer }): PlainAnswer | undefined {
    const path = pathOf(req);
    const method = req.method ?? 'GET';
    if (path === '/healthz') {
      if (method !== 'GET' && method !== 'HEAD') return methodNotAllowed('GET, HEAD');
      return { status: 200, body: 'ok' };
    }
    if (path === '/metrics') {
      return method === 'GET' ? { status: 400, body: '/metrics does not upgrade' } : methodNotAllowed('GET');
    }
    const token = tokenOfPath(path);
    if (token === undefined) {
      return { status: 404, body: `no such path: ${path} (this server serves /portforward/<token>, /healthz, /metrics)` };
    }
    if (method !== 'GET' && method !== 'POST') return methodNotAllowed('GET, POST');
    const grant = this.#options.tokens.redeem(token);
    if (grant === undefined) {
      return { status: 404, body: 'unknown, expired or already used port-forward token; ask for a new URL with PortForward' };
    }
    const protocol = upgrade && this.#options.protocols.find((p) => p.accepts(req));
    if (upgrade === undefined || protocol === undefined) {
      return { status: 400, body: this.#noUpgradeText() };
    }
    this.#options.log.debug('port-forward upgrade', { sandboxId: grant.sandboxId, protocol: protocol.description });
    protocol.serve(req, upgrade.socket, upgrade.head, { ...grant, peer: peerOf(req) });
    return undefined;
  }

  async #sendMetrics(res: http.ServerResponse): Promise<void> {
    try {
      const text = await this.#options.metrics.registry.metrics();
      res.writeHead(200, { 'Content-Type': this.#options.metrics.registry.contentType });
      res.end(text);
    } catch (err) {
      sendPlain(res, { status: 500, body: `cannot collect metrics: ${String(err)}` });
    }
  }

  #noUpgradeText(): string {
    const offered = this.#options.protocols.map((p) => p.description);
    return offered.length === 0
      ? 'port-forward needs a protocol upgrade, and this build serves no port-forward protocol yet'
      : `port-forward needs a protocol upgrade; this server serves: ${offered.join('; ')}`;
  }
}

function pathOf(req: http.IncomingMessage): string {
  return (req.url ?? '/').split('?', 1)[0] ?? '/';
}

function methodNotAllowed(allow: string): PlainAnswer {
  return { status: 405, body: `method not allowed; use ${allow}`, headers: { Allow: allow } };
}

/** A host for URLs: IPv6 in brackets; an unspecified address is advertised as loopback. */
function urlHost(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return host.includes(':') ? `[${host}]` : host;
}

/** The client's address for the audit trail: host:port, [v6]:port. */
function peerOf(req: http.IncomingMessage): string {
  const host = req.socket.remoteAddress ?? 'unknown';
  return `${host.includes(':') ? `[${host}]` : host}:${req.socket.remotePort ?? 0}`;
}
