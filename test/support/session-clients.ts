// Port-forward clients that hold sessions while a test does something to the server (an
// upgrade in place), behind one interface: kubectl with plain SPDY, kubectl with its
// default transport (SPDY tunnelled in WebSocket), and @kubernetes/client-node's
// PortForward (v4.channel.k8s.io), all through one FakeApiServer that relays WebSocket
// upgrades (refuseWebSocket: false). Each client holds one download of a seeded stream
// (pattern.ts; verified chunk by chunk as it arrives, read continuously) and idle
// connections to an echo app that have echoed once, and can open new connections.
//
// kubectl holds one session per process: its forwarded connections are streams of it (a
// new local connection = new streams, new header blocks). client-node's PortForward takes
// one port per WebSocket: each of its connections is a session of its own.

import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { PassThrough, Writable } from 'node:stream';
import type WebSocket from 'ws';
import type { FakeApiServer, RelayedUpgrade } from './fake-apiserver';
import { startPortForward, type KubectlPortForward } from './kubectl';
import { PatternVerifier } from './pattern';
import { dial, roundTrip } from './tcp-client';
import { until } from './until';

export type ClientKind = 'kubectl-spdy' | 'kubectl-tunnel' | 'client-node';

/** The `protocol` label our metrics give each client's sessions. */
export const CLIENT_PROTOCOL: Record<ClientKind, 'spdy' | 'spdy-websocket' | 'websocket'> = {
  'kubectl-spdy': 'spdy',
  'kubectl-tunnel': 'spdy-websocket',
  'client-node': 'websocket',
};

/** Waits on a client's side (kubectl and client-node share 2 busy cores with the server). */
const CLIENT_WAIT = { timeoutMs: 15_000 };

export interface ClientTarget {
  /** Relays WebSocket upgrades too (refuseWebSocket: false). */
  api: FakeApiServer;
  /** kubectl's kubeconfig for `api`. */
  kubeconfig: string;
  /** The sandbox id, which the fake apiserver serves as a pod of `api.namespace`. */
  pod: string;
  echoPort: number;
}

/** A stream of the pattern app to download: its port, seed and length. */
export interface DownloadSource {
  port: number;
  seed: number;
  bytes: number;
}

export interface IdleConnection {
  readonly label: string;
  /** The client's TCP connection that carries it ("local port -> remote port"), as opened. */
  readonly tcp: string;
  /** The same, now; undefined once it has closed. */
  currentTcp(): string | undefined;
  /** Everything echoed on it so far. */
  echoed(): string;
  send(text: string): void;
  close(): void;
}

export interface Download {
  readonly label: string;
  readonly verifier: PatternVerifier;
  /** How it ended, as the client saw it ('end': FIN; 'close 1000': the WebSocket's normal close; else what failed). */
  readonly ended: Promise<string>;
  running(): boolean;
  /** Tell the app to lift its pace (the first byte sent to a pattern app does). */
  sprint(): void;
  close(): void;
}

export interface SessionClient {
  readonly kind: ClientKind;
  readonly download: Download;
  readonly idle: IdleConnection[];
  /** A new connection through this client that echoes `payload` (kubectl: new streams of its session; client-node: a new PortForward). */
  echoOnNewConnection(payload: Buffer): Promise<Buffer>;
  /** What it holds on the server now: sessions (a client socket each) and forwarded connections (a pod socket each). */
  held(): { sessions: number; forwarded: number };
  /** Why it is no longer on the sessions it opened (kubectl exited or upgraded again, a WebSocket closed); undefined while it is. */
  offItsSessions(): string | undefined;
  stop(): Promise<void>;
}

/** Send `text` on an idle connection and wait until it has come back. */
export async function echoAgain(c: IdleConnection, text: string): Promise<void> {
  const before = c.echoed();
  c.send(text);
  await until(`${c.label} to echo ${JSON.stringify(text)}`, () => c.echoed() === before + text, {
    ...CLIENT_WAIT,
    state: () => JSON.stringify({ echoed: c.echoed(), tcp: c.currentTcp() ?? 'closed' }),
  });
}

export function openClient(kind: ClientKind, target: ClientTarget, source: DownloadSource, idleConnections: number): Promise<SessionClient> {
  return kind === 'client-node' ? openClientNode(target, source, idleConnections) : openKubectl(kind, target, source, idleConnections);
}

// --- kubectl ----------------------------------------------------------------------------

/** The upgrade requests kubectl of this transport made (each one its own kubectl here). */
function kubectlUpgrades(api: FakeApiServer, kind: ClientKind): RelayedUpgrade[] {
  return api.upgrades.filter((u) =>
    kind === 'kubectl-spdy' ? u.method === 'POST' : String(u.headers['sec-websocket-protocol'] ?? '').includes('SPDY/3.1+portforward.k8s.io'),
  );
}

function socketTcp(s: Socket): string | undefined {
  return s.destroyed ? undefined : `${s.localPort} -> ${s.remotePort}`;
}

async function openKubectl(kind: ClientKind, target: ClientTarget, source: DownloadSource, idleConnections: number): Promise<SessionClient> {
  const forward: KubectlPortForward = await startPortForward({
    kubeconfig: target.kubeconfig,
    pod: target.pod,
    ports: [`0:${target.echoPort}`, `0:${source.port}`],
    transport: kind === 'kubectl-spdy' ? 'spdy' : 'default',
  });
  const [echoLocal, sourceLocal] = forward.localPorts as [number, number];
  const idle: IdleConnection[] = [];
  let download: Download | undefined;
  try {
    for (let i = 0; i < idleConnections; i++) {
      const socket = await dial(echoLocal);
      let echoed = '';
      socket.on('data', (d: Buffer) => (echoed += d.toString()));
      socket.on('error', () => undefined); // shows as a closed connection
      const connection: IdleConnection = {
        label: `${kind} idle connection ${i}`,
        tcp: socketTcp(socket)!,
        currentTcp: () => socketTcp(socket),
        echoed: () => echoed,
        send: (text) => socket.write(text),
        close: () => socket.destroy(),
      };
      await echoAgain(connection, `hello from ${connection.label}`);
      idle.push(connection);
    }
    download = await kubectlDownload(kind, sourceLocal, source);
  } catch (err) {
    for (const c of idle) c.close();
    await forward.stop();
    throw err;
  }
  const dl = download;
  return {
    kind,
    download: dl,
    idle,
    echoOnNewConnection: (payload) => roundTrip(echoLocal, payload),
    held: () => ({ sessions: 1, forwarded: idle.filter((c) => c.currentTcp() !== undefined).length + (dl.running() ? 1 : 0) }),
    offItsSessions() {
      if (forward.proc.exitCode !== null || forward.proc.signalCode !== null) {
        return `kubectl exited (${forward.proc.exitCode ?? forward.proc.signalCode}); stderr: ${forward.stderr()}`;
      }
      const upgrades = kubectlUpgrades(target.api, kind).length;
      return upgrades === 1 ? undefined : `kubectl made ${upgrades} upgrade requests (a new session), not 1`;
    },
    async stop() {
      for (const c of idle) c.close();
      dl.close();
      await forward.stop();
    },
  };
}

async function kubectlDownload(kind: ClientKind, localPort: number, source: DownloadSource): Promise<Download> {
  const verifier = new PatternVerifier(source.seed, source.bytes);
  const socket = await dial(localPort);
  let running = true;
  socket.on('data', (chunk: Buffer) => verifier.push(chunk));
  const ended = new Promise<string>((resolve) => {
    socket.once('end', () => resolve('end'));
    socket.once('error', (err) => resolve(`error: ${err.message}`));
    socket.once('close', () => resolve('closed without a FIN'));
  }).finally(() => {
    running = false;
    socket.end(); // our half: kubectl then closes the stream pair
  });
  return {
    label: `${kind} download`,
    verifier,
    ended,
    running: () => running,
    sprint: () => socket.write('!'),
    close: () => socket.destroy(),
  };
}

// --- @kubernetes/client-node ------------------------------------------------------------

type K8s = typeof import('@kubernetes/client-node', { with: { 'resolution-mode': 'import' } });

/** client-node's PortForward for one port (retryCount 0, so the WebSocket itself), `onData` getting the data channel. */
async function clientNodeForward(
  target: ClientTarget,
  port: number,
  onData: (chunk: Buffer) => void,
): Promise<{ ws: WebSocket; input: PassThrough; errText: () => string; closed: Promise<string> }> {
  const k8s: K8s = await import('@kubernetes/client-node');
  const kc = new k8s.KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'fake', server: target.api.url, skipTLSVerify: true }],
    users: [{ name: 'fake' }],
    contexts: [{ name: 'fake', cluster: 'fake', user: 'fake', namespace: target.api.namespace }],
    currentContext: 'fake',
  });
  const output = new Writable({
    write(chunk: Buffer, _enc, callback) {
      onData(chunk);
      callback();
    },
  });
  let errText = '';
  const err = new Writable({
    write(chunk: Buffer, _enc, callback) {
      errText += chunk.toString();
      callback();
    },
  });
  const input = new PassThrough();
  const result = await new k8s.PortForward(kc).portForward(target.api.namespace, target.pod, [port], output, err, input);
  assert.notEqual(typeof result, 'function', 'retryCount 0 resolves to the WebSocket');
  const ws = result as unknown as WebSocket;
  ws.on('error', () => undefined); // shows as its close
  const closed = new Promise<string>((resolve) => ws.once('close', (code: number) => resolve(`close ${code}`)));
  return { ws, input, errText: () => errText, closed };
}

function wsTcp(ws: WebSocket): string | undefined {
  const socket = (ws as unknown as { _socket?: Socket })._socket;
  return ws.readyState !== ws.OPEN || !socket ? undefined : socketTcp(socket);
}

async function openClientNode(target: ClientTarget, source: DownloadSource, idleConnections: number): Promise<SessionClient> {
  const idle: (IdleConnection & { ws: WebSocket })[] = [];
  let download: Download | undefined;
  try {
    for (let i = 0; i < idleConnections; i++) {
      let echoed = '';
      const f = await clientNodeForward(target, target.echoPort, (d) => (echoed += d.toString()));
      const connection = {
        label: `client-node idle session ${i}`,
        ws: f.ws,
        tcp: wsTcp(f.ws)!,
        currentTcp: () => wsTcp(f.ws),
        echoed: () => echoed,
        send: (text: string) => f.input.write(text),
        close: () => f.input.end(), // client-node closes the WebSocket when its input ends
      };
      await echoAgain(connection, `hello from ${connection.label}`);
      idle.push(connection);
    }
    const verifier = new PatternVerifier(source.seed, source.bytes);
    const f = await clientNodeForward(target, source.port, (chunk) => verifier.push(chunk));
    let running = true;
    const ended = f.closed.then((how) => {
      running = false;
      return f.errText() === '' ? how : `${how}, error channel: ${f.errText()}`;
    });
    download = {
      label: 'client-node download',
      verifier,
      ended,
      running: () => running,
      sprint: () => f.input.write('!'),
      close: () => f.ws.terminate(),
    };
  } catch (err) {
    for (const c of idle) c.ws.terminate();
    throw err;
  }
  const dl = download;
  return {
    kind: 'client-node',
    download: dl,
    idle,
    async echoOnNewConnection(payload) {
      const chunks: Buffer[] = [];
      const f = await clientNodeForward(target, target.echoPort, (d) => chunks.push(Buffer.from(d)));
      f.input.write(payload);
      await until('client-node echo on a new PortForward', () => Buffer.concat(chunks).length >= payload.length, CLIENT_WAIT);
      f.input.end();
      await f.closed;
      return Buffer.concat(chunks);
    },
    held: () => {
      const open = idle.filter((c) => c.currentTcp() !== undefined).length + (dl.running() ? 1 : 0);
      return { sessions: open, forwarded: open };
    },
    offItsSessions() {
      const closed = idle.filter((c) => c.currentTcp() === undefined).map((c) => c.label);
      return closed.length === 0 ? undefined : `closed: ${closed.join(', ')}`;
    },
    async stop() {
      for (const c of idle) c.ws.terminate();
      dl.close();
    },
  };
}
