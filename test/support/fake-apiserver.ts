// What apiserver + kubelet do for `kubectl port-forward`, in one plain-HTTP server on
// 127.0.0.1: just enough discovery for kubectl to resolve `pod/NAME`, a Running Pod whose
// name is our CRI sandbox id, and the portforward subresource, which calls our CRI
// PortForward and relays the raw upgraded connection to the URL it returns (kubelet's
// proxy), byte for byte both ways, our HTTP answer included.

import * as grpc from '@grpc/grpc-js';
import { writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { criClient, type CriTestClient } from './cri-client';

export interface FakeApiServerOptions {
  /** Our CRI socket, e.g. unix:///tmp/x/cri.sock. */
  criAddress: string;
  /** The only namespace that has pods; also the kubeconfig's namespace. Default "default". */
  namespace?: string;
  /**
   * Answer a GET portforward upgrade asking for WebSocket with 403 (the SPDY-over-WebSocket
   * attempt of kubectl >= 1.31), so kubectl falls back to plain SPDY. Default true.
   */
  refuseWebSocket?: boolean;
  /**
   * GET /version's gitVersion. Default v1.32.0. Note: the `kubectl` on PATH may be gcloud's
   * dispatcher, which asks /version first and runs the kubectl.1.<minor> next to it.
   */
  serverVersion?: string;
  /** TLS options for https streaming URLs (e.g. { ca } or { rejectUnauthorized: false }). */
  streamTls?: tls.ConnectionOptions;
}

export interface RelayedUpgrade {
  method: string;
  /** The client's path and query on the apiserver. */
  path: string;
  headers: http.IncomingHttpHeaders;
  /** The streaming URL our CRI PortForward returned. */
  streamUrl?: string;
  /** First line our streaming server answered, e.g. "HTTP/1.1 101 Switching Protocols". */
  responseStatusLine?: string;
}

export interface ApiRequest {
  method: string;
  path: string;
  /** What we answered: an HTTP status, or "relayed" for an upgrade handed to our server. */
  answer: number | 'relayed';
}

const HTTP_REASON: Record<number, string> = { 400: 'BadRequest', 403: 'Forbidden', 404: 'NotFound', 500: 'InternalError' };

const PODS_PATH = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)(\/portforward)?\/?$/;

/** Request headers kubelet's proxy must pass on for the streaming server to pick a protocol. */
function keepHeader(name: string): boolean {
  const lower = name.toLowerCase();
  return (
    lower === 'connection' ||
    lower === 'upgrade' ||
    lower === 'x-stream-protocol-version' ||
    lower.startsWith('sec-websocket-')
  );
}

function statusBody(code: number, message: string): string {
  return JSON.stringify({
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message,
    reason: HTTP_REASON[code] ?? 'Unknown',
    code,
  });
}

function grpcToHttp(code: number | undefined): number {
  if (code === grpc.status.NOT_FOUND) return 404;
  if (code === grpc.status.FAILED_PRECONDITION) return 400;
  return 500;
}

/** An HTTP answer written by hand on a socket whose request asked for an upgrade. */
function answerOnSocket(socket: Duplex, code: number, message: string): void {
  const body = statusBody(code, message);
  socket.end(
    `HTTP/1.1 ${code} ${http.STATUS_CODES[code] ?? 'Unknown'}\r\n` +
      'Content-Type: application/json\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      'Connection: close\r\n\r\n' +
      body,
  );
}

export class FakeApiServer {
  /** Every request in arrival order (discovery, pod GETs, upgrades). */
  readonly requests: ApiRequest[] = [];
  /** Every portforward upgrade handed to our streaming server. */
  readonly upgrades: RelayedUpgrade[] = [];
  readonly namespace: string;
  readonly #server: http.Server;
  readonly #cri: CriTestClient;
  readonly #refuseWebSocket: boolean;
  readonly #streamTls: tls.ConnectionOptions | undefined;
  readonly #serverVersion: string;
  /** Client and backend sockets of relayed upgrades; close() destroys them. */
  readonly #relayed = new Set<Duplex>();
  #port = 0;
  #closed = false;

  private constructor(options: FakeApiServerOptions) {
    this.namespace = options.namespace ?? 'default';
    this.#cri = criClient(options.criAddress);
    this.#refuseWebSocket = options.refuseWebSocket ?? true;
    this.#streamTls = options.streamTls;
    this.#serverVersion = options.serverVersion ?? 'v1.32.0';
    this.#server = http.createServer();
    this.#server.on('request', (req, res) => this.#onRequest(req, res));
    this.#server.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head));
  }

  static async start(options: FakeApiServerOptions): Promise<FakeApiServer> {
    const api = new FakeApiServer(options);
    await new Promise<void>((resolve, reject) => {
      api.#server.once('error', reject);
      api.#server.listen(0, '127.0.0.1', () => {
        api.#server.off('error', reject);
        resolve();
      });
    });
    api.#port = (api.#server.address() as net.AddressInfo).port;
    return api;
  }

  get port(): number {
    return this.#port;
  }

  get url(): string {
    return `http://127.0.0.1:${this.#port}`;
  }

  /** Writes `<dir>/kubeconfig` pointing at this server (no auth, namespace set). */
  kubeconfig(dir: string): string {
    const path = join(dir, 'kubeconfig');
    const config = {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'fake', cluster: { server: this.url } }],
      users: [{ name: 'fake', user: {} }],
      contexts: [{ name: 'fake', context: { cluster: 'fake', user: 'fake', namespace: this.namespace } }],
      'current-context': 'fake',
    };
    writeFileSync(path, JSON.stringify(config, null, 2) + '\n');
    return path;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    for (const socket of this.#relayed) socket.destroy();
    this.#relayed.clear();
    this.#cri.close();
    await closed;
  }

  #onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const method = req.method ?? '';
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const json = (code: number, value: unknown): void => {
      this.requests.push({ method, path: req.url ?? '', answer: code });
      const body = typeof value === 'string' ? value : JSON.stringify(value);
      res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    };
    req.resume();
    if (method !== 'GET' && method !== 'POST') {
      json(405, statusBody(405, `method ${method} not allowed`));
      return;
    }
    if (method === 'GET' && path === '/version') {
      const [major, minor] = /^v(\d+)\.(\d+)/.exec(this.#serverVersion)?.slice(1) ?? ['', ''];
      json(200, {
        major,
        minor,
        gitVersion: this.#serverVersion,
        gitCommit: '0000000000000000000000000000000000000000',
        gitTreeState: 'clean',
        buildDate: '2025-01-01T00:00:00Z',
        goVersion: 'go1.23.0',
        compiler: 'gc',
        platform: 'linux/amd64',
      });
      return;
    }
    if (method === 'GET' && path === '/api') {
      json(200, {
        kind: 'APIVersions',
        versions: ['v1'],
        serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: `127.0.0.1:${this.#port}` }],
      });
      return;
    }
    if (method === 'GET' && path === '/apis') {
      json(200, { kind: 'APIGroupList', apiVersion: 'v1', groups: [] });
      return;
    }
    if (method === 'GET' && path === '/api/v1') {
      json(200, {
        kind: 'APIResourceList',
        groupVersion: 'v1',
        resources: [
          { name: 'pods', singularName: 'pod', namespaced: true, kind: 'Pod', verbs: ['get', 'list'], shortNames: ['po'] },
          { name: 'pods/portforward', singularName: '', namespaced: true, kind: 'PodPortForwardOptions', verbs: ['create', 'get'] },
        ],
      });
      return;
    }
    const pods = PODS_PATH.exec(path);
    if (pods && pods[1] === this.namespace) {
      const name = decodeURIComponent(pods[2]!);
      if (pods[3]) {
        json(400, statusBody(400, 'Upgrade request required'));
        return;
      }
      if (method === 'GET') {
        json(200, this.#pod(name));
        return;
      }
    }
    json(404, statusBody(404, `the server could not find the requested resource (${method} ${path})`));
  }

  #pod(name: string): object {
    return {
      kind: 'Pod',
      apiVersion: 'v1',
      metadata: {
        name,
        namespace: this.namespace,
        uid: `uid-${name}`,
        resourceVersion: '1',
        creationTimestamp: '2025-01-01T00:00:00Z',
      },
      spec: { containers: [{ name: 'app', image: 'none' }] },
      status: { phase: 'Running' },
    };
  }

  #onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const method = req.method ?? '';
    const url = new URL(req.url ?? '/', 'http://x');
    const pods = PODS_PATH.exec(url.pathname);
    socket.on('error', () => socket.destroy());
    if (!pods || !pods[3] || pods[1] !== this.namespace || (method !== 'GET' && method !== 'POST')) {
      this.requests.push({ method, path: req.url ?? '', answer: 404 });
      answerOnSocket(socket, 404, `the server could not find the requested resource (${method} ${url.pathname})`);
      return;
    }
    const upgrade = String(req.headers.upgrade ?? '').toLowerCase();
    if (this.#refuseWebSocket && method === 'GET' && upgrade.split(',').some((u) => u.trim() === 'websocket')) {
      this.requests.push({ method, path: req.url ?? '', answer: 403 });
      answerOnSocket(socket, 403, 'WebSocket upgrades are refused by this fake apiserver');
      return;
    }
    const name = decodeURIComponent(pods[2]!);
    const ports = url.searchParams
      .getAll('ports')
      .flatMap((value) => value.split(','))
      .map((value) => value.trim())
      .filter((value) => value !== '')
      .map(Number);
    this.#track(socket);
    void this.#cri.call('PortForward', { pod_sandbox_id: name, port: ports }).then(
      (response: { url: string }) => {
        this.requests.push({ method, path: req.url ?? '', answer: 'relayed' });
        this.#relay(req, socket, head, response.url);
      },
      (err: grpc.ServiceError) => {
        const code = grpcToHttp(err.code);
        this.requests.push({ method, path: req.url ?? '', answer: code });
        answerOnSocket(socket, code, err.details || err.message);
      },
    );
  }

  #track(socket: Duplex): void {
    if (this.#closed) {
      socket.destroy();
      return;
    }
    this.#relayed.add(socket);
    socket.once('close', () => this.#relayed.delete(socket));
  }

  /** kubelet's proxy: replay the request line and upgrade headers to the stream URL, then copy bytes. */
  #relay(req: http.IncomingMessage, client: Duplex, head: Buffer, streamUrl: string): void {
    const target = new URL(streamUrl);
    const record: RelayedUpgrade = { method: req.method ?? '', path: req.url ?? '', headers: req.headers, streamUrl };
    this.upgrades.push(record);
    if (client.destroyed || this.#closed) {
      client.destroy();
      return;
    }
    const port = Number(target.port || (target.protocol === 'https:' ? 443 : 80));
    const host = target.hostname.replace(/^\[(.*)\]$/, '$1');
    const backend: net.Socket =
      target.protocol === 'https:'
        ? tls.connect({ host, port, servername: net.isIP(host) ? undefined : host, ...this.#streamTls })
        : net.connect({ host, port, allowHalfOpen: true });
    // As kubelet's proxy: Go sets TCP_NODELAY on every TCP connection. Without it, a small
    // write that follows another waits for the server's delayed ACK (~40 ms), and
    // round-trip latencies through kubectl measure this relay rather than the server.
    backend.setNoDelay(true);
    this.#track(backend);

    const lines = [`${req.method} ${target.pathname}${target.search} HTTP/1.1`, `Host: ${target.host}`];
    const raw = req.rawHeaders;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      if (keepHeader(raw[i]!)) lines.push(`${raw[i]}: ${raw[i + 1]}`);
    }
    backend.write(lines.join('\r\n') + '\r\n\r\n');
    if (head.length > 0) backend.write(head);

    // Peek at the first line of the answer; pipe gets every byte, the peek only looks.
    let first = '';
    const peek = (chunk: Buffer): void => {
      first += chunk.toString('latin1');
      const end = first.indexOf('\r\n');
      if (end >= 0 || first.length > 8192) {
        record.responseStatusLine = end >= 0 ? first.slice(0, end) : first;
        backend.off('data', peek);
      }
    };
    backend.on('data', peek);

    const destroyBoth = (): void => {
      client.destroy();
      backend.destroy();
    };
    backend.on('error', destroyBoth);
    client.on('error', destroyBoth);
    // A side that closed without an error: finish what was already written to the other
    // side (its end() came through pipe on a clean half-close), then close it too.
    const closeOther = (other: Duplex): void => {
      if (other.destroyed) return;
      if (other.writableEnded && !other.writableFinished) other.once('finish', () => other.destroy());
      else other.destroy();
    };
    client.on('close', () => closeOther(backend));
    backend.on('close', () => closeOther(client));
    client.pipe(backend);
    backend.pipe(client);
  }
}
