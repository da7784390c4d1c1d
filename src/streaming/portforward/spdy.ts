// Port-forward over SPDY (portforward.k8s.io): each forwarded connection is a pair of
// client streams, "error" and "data", tied by their requestid header. Both get their
// SYN_REPLY as soon as they arrive (kubectl waits for it before opening the next); a
// complete pair goes to the pod side; an incomplete one is dropped after
// --stream-creation-timeout (30 s, as upstream).
//
// The error policy is not decided here: forwardConnection returns a verdict (verdict.ts)
// and this file only carries it out on the pair's two streams.

import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { Socket } from 'node:net';
import { ChurnMap } from '../../churn-map';
import { frozenNow, type AdoptedSession, type MovableSession, type MovedSession } from '../../handover/movable';
import type { PodIdentity } from '../../policy/port-policy';
import { holdReads, releaseReads, releaseSocket, socketFd } from '../../handover/sockets';
import { Pipe, type PipeState } from '../../pipe';
import { GoAwayStatus, RstCode } from '../spdy/constants';
import { SpdySession, type SpdySessionState } from '../spdy/session';
import type { SpdyStream } from '../spdy/stream';
import { readIntoOwnedSlabs, spdyBulkSlabBytes, type ChunkTracker } from '../owned-reads';
import { sendPlainOnSocket } from '../plain-answer';
import type { PortForwardProtocol } from '../protocol';
import type { SessionGrant } from '../tokens';
import { forwardConnection, pipeForward, type ForwardDeps, type ForwardRequest } from './forward';
import type { ForwardVerdict } from './verdict';
import { END_SESSION_LINGER_MS } from './verdict';
import { isSpdyUpgrade, spdyHandshake } from './spdy-handshake';

interface Pair {
  requestId: string;
  error?: SpdyStream;
  data?: SpdyStream;
  /** When the --stream-creation-timeout runs out (Date.now()). */
  deadline: number;
}

/** A complete pair being forwarded: dialling until it has a pipe. */
interface Forward {
  error: SpdyStream;
  data: SpdyStream;
  port: number;
  started: number;
  pipe?: Pipe;
  pod?: PodIdentity;
}

/** What an upgrade's new process builds a session from: its state and the fds passed. */
export interface AdoptedSpdy {
  state: SpdyPortForwardState;
  fds: number[];
}

/** A port-forward session as an upgrade hands it over (see SpdyPortForwardSession.freeze). */
export interface SpdyPortForwardState {
  session: SpdySessionState;
  /** Incomplete pairs, by stream id, with the time left to complete. */
  pairs: { requestId: string; error?: number; data?: number; remainingMs: number }[];
  forwards: { error: number; data: number; port: number; started: number; pod: PodIdentity; pipe: PipeState }[];
}

let nextConnectionId = 1;

/** Serves one SPDY session (plain, or carried in WebSocket messages) for one grant. */
export class SpdyPortForwardSession {
  readonly #deps: ForwardDeps;
  readonly #grant: SessionGrant;
  readonly #session: SpdySession;
  readonly #pairs = new ChurnMap<string, Pair>();
  /** By data stream id. */
  readonly #forwards = new ChurnMap<number, Forward>();
  readonly #connectionId = nextConnectionId++;
  readonly #protocol: string;

  /** Adopted pipes, started with the session (upgrade). */
  readonly #adoptedPipes: Pipe[] = [];

  constructor(transport: Duplex, grant: SessionGrant, deps: ForwardDeps, protocol: string, chunks?: ChunkTracker, adopted?: AdoptedSpdy) {
    this.#deps = deps;
    this.#grant = grant;
    this.#protocol = protocol;
    this.#session = new SpdySession(transport, {
      idleTimeoutMs: deps.idleTimeoutMs,
      log: deps.log.child({ sandboxId: grant.sandboxId, protocol }),
      onStream: (stream) => this.#onStream(stream),
      onPing: () => deps.metrics.spdyPings.inc(),
      stallTimeoutMs: deps.streamStallTimeoutMs,
      onStallReset: () => deps.metrics.streamStallResets.inc(),
      budget: deps.budget,
      ...(chunks ? { chunks } : {}),
    }, adopted?.state.session);
    deps.metrics.sessionsActive.inc({ protocol });
    // An adopted session was counted by the old process (its counters carry over).
    if (adopted === undefined) deps.metrics.sessionsTotal.inc({ protocol });
    else this.#adopt(adopted);
    void this.#session.ended.then((reason) => {
      deps.metrics.sessionsActive.dec({ protocol });
      this.#disarmPairTimer();
      this.#pairs.clear();
      deps.log.debug('port-forward session ended', { sandboxId: grant.sandboxId, protocol, reason });
    });
  }

  get session(): SpdySession {
    return this.#session;
  }

  #onStream(stream: SpdyStream): void {
    const type = stream.headers.get('streamtype');
    const portText = stream.headers.get('port') ?? '';
    const port = /^[0-9]{1,5}$/.test(portText) ? Number(portText) : NaN;
    if ((type !== 'error' && type !== 'data') || !(port >= 1 && port <= 65535)) {
      this.#deps.log.warn('refusing a port-forward stream with bad headers', {
        sandboxId: this.#grant.sandboxId,
        streamtype: type ?? null,
        port: portText,
      });
      this.#session.reset(stream, RstCode.Cancel, 'bad streamtype or port header');
      return;
    }
    this.#session.reply(stream);
    // Old clients send no requestid: error streams then key by their own id, data by id - 2.
    const requestId = stream.headers.get('requestid') ?? String(type === 'error' ? stream.id : stream.id - 2);
    let pair = this.#pairs.get(requestId);
    if (pair === undefined) {
      pair = { requestId, deadline: Date.now() + this.#deps.streamCreationTimeoutMs };
      this.#pairs.set(requestId, pair);
      this.#armPairTimer();
    }
    if (pair[type] !== undefined) {
      this.#session.reset(stream, RstCode.ProtocolError, `second ${type} stream for request ${requestId}`);
      return;
    }
    pair[type] = stream;
    if (type === 'error') stream.discard(); // the client only half-closes it
    if (pair.error !== undefined && pair.data !== undefined) {
      this.#pairs.delete(requestId);
      void this.#forward(pair.error, pair.data, port);
    }
  }

  // One timer for all pairs, due at the earliest deadline; a pair that completes leaves it
  // be (it finds nothing due and re-arms for the next). A timer per pair, set and cleared
  // for nearly every connection, was 2% of the main thread in a kubectl churn.
  #pairTimer: NodeJS.Timeout | undefined;

  #armPairTimer(): void {
    if (this.#pairTimer !== undefined || this.#pairs.size === 0) return;
    let due = Infinity;
    for (const pair of this.#pairs.values()) due = Math.min(due, pair.deadline);
    this.#pairTimer = setTimeout(this.#onPairTimer, Math.max(0, due - Date.now()));
  }

  #disarmPairTimer(): void {
    if (this.#pairTimer !== undefined) clearTimeout(this.#pairTimer);
    this.#pairTimer = undefined;
  }

  readonly #onPairTimer = (): void => {
    this.#pairTimer = undefined;
    const now = Date.now();
    for (const pair of this.#pairs.values()) if (pair.deadline <= now) this.#onPairTimeout(pair.requestId);
    this.#armPairTimer();
  };

  async #forward(errorStream: SpdyStream, dataStream: SpdyStream, port: number): Promise<void> {
    const forward: Forward = { error: errorStream, data: dataStream, port, started: Date.now() };
    this.#forwards.set(forward.data.id, forward);
    const verdict = await forwardConnection(
      this.#deps,
      this.#request(port, dataStream, (pipe, pod) => {
        forward.pipe = pipe;
        forward.pod = pod;
      }),
    );
    this.#forwarded(forward, verdict);
  }

  #request(port: number, dataStream: SpdyStream, onPiped?: ForwardRequest['onPiped']): ForwardRequest {
    return { grant: this.#grant, port, client: dataStream, protocol: this.#protocol, isAborted: () => this.#session.isEnded, onPiped };
  }

  #forwarded(forward: Forward, verdict: ForwardVerdict): void {
    this.#forwards.delete(forward.data.id);
    const { error: errorStream, data: dataStream } = forward;
    // The text (if any) goes out before the data stream's reset, so kubectl has it when the
    // data stream fails; our half of the error stream ends either way.
    if (verdict.errorText !== undefined && !errorStream.destroyed) errorStream.end(verdict.errorText);
    if (verdict.resetData) this.#session.reset(dataStream, RstCode.Cancel, verdict.errorText ?? 'forward failed');
    if (!errorStream.destroyed && !errorStream.writableEnded) errorStream.end();
    if (verdict.endSession) setTimeout(() => this.#session.close(GoAwayStatus.Ok), END_SESSION_LINGER_MS).unref();
  }

  // ---- upgrade handover (the front ends stop and resume reading the connection) ------

  // Freezing is in two steps. The front end has stopped reading the client; the pods are
  // still read (so that an app echoing what it is sent never blocks on its own output)
  // until what the client sent has all been written to them. Then the pods' reads stop and
  // what goes to the client is flushed. A download is frozen at once; an upload or an echo
  // once its bytes in hand are delivered.
  #podsFrozen = false;

  freeze(): void {
    this.#session.freeze();
    this.#disarmPairTimer();
  }

  /** One step towards quiet (see above): true once nothing is in flight and no dial under way. */
  quiesce(): boolean {
    if (!this.#podsFrozen) {
      for (const forward of this.#forwards.values()) if (forward.pipe === undefined || !forward.pipe.podBoundDrained) return false;
      if (!this.#session.inboundDrained) return false;
      for (const forward of this.#forwards.values()) forward.pipe!.freeze();
      this.#podsFrozen = true;
    }
    for (const forward of this.#forwards.values()) if (forward.pipe === undefined || !forward.pipe.isQuiet) return false;
    return this.#session.isQuiet;
  }

  thaw(): void {
    this.#session.thaw();
    this.#armPairTimer();
    for (const forward of this.#forwards.values()) forward.pipe?.thaw();
    this.#podsFrozen = false;
  }

  exportState(fds: number[]): SpdyPortForwardState {
    const now = Date.now();
    return {
      session: this.#session.exportState(),
      pairs: this.#pairs.values().map((p) => ({
        requestId: p.requestId,
        ...(p.error ? { error: p.error.id } : {}),
        ...(p.data ? { data: p.data.id } : {}),
        remainingMs: Math.max(0, p.deadline - now),
      })),
      forwards: this.#forwards.values().map((f) => ({ error: f.error.id, data: f.data.id, port: f.port, started: f.started, pod: f.pod!, pipe: f.pipe!.exportState(fds) })),
    };
  }

  /** The new process owns the session: let go of the pod sockets; the front end lets go of the client's. */
  release(): void {
    for (const forward of this.#forwards.values()) forward.pipe?.release();
    this.#deps.metrics.sessionsActive.dec({ protocol: this.#protocol });
  }

  // The session's streams are back (SpdySession's constructor); tie them up again: pairs
  // still waiting for their other stream, forwards with their pipes (paused until start()),
  // and every other stream read and dropped, as it was (a data stream after its pipe
  // ended, an error stream the client has not closed yet).
  #adopt({ state, fds }: AdoptedSpdy): void {
    const session = this.#session;
    const claimed = new Set<number>();
    const claim = (id: number): SpdyStream => {
      claimed.add(id);
      return session.adoptedStream(id);
    };
    const now = Date.now();
    for (const p of state.pairs) {
      const pair: Pair = { requestId: p.requestId, deadline: now + p.remainingMs };
      if (p.error !== undefined) pair.error = claim(p.error);
      if (p.data !== undefined) pair.data = claim(p.data);
      this.#pairs.set(p.requestId, pair);
    }
    for (const f of state.forwards) {
      const data = claim(f.data);
      const pipe = new Pipe(data, fds[f.pipe.podFd]!, { graceMs: this.#deps.halfCloseGraceMs, budget: this.#deps.budget }, f.pipe);
      const forward: Forward = { error: claim(f.error), data, port: f.port, started: f.started, pipe, pod: f.pod };
      this.#forwards.set(forward.data.id, forward);
      this.#adoptedPipes.push(pipe);
      void pipeForward(this.#deps, this.#request(f.port, data), f.pod, pipe, f.started).then((verdict) => this.#forwarded(forward, verdict));
    }
    for (const stream of session.streams) {
      if (!claimed.has(stream.id) || stream.headers.get('streamtype') === 'error') stream.discard();
    }
  }

  /** An adopted session: go (the old process has let go of it). */
  start(): void {
    this.#session.startAdopted();
    this.#armPairTimer();
    for (const pipe of this.#adoptedPipes) pipe.start();
    this.#adoptedPipes.length = 0;
  }

  #onPairTimeout(requestId: string): void {
    const pair = this.#pairs.get(requestId);
    if (pair === undefined) return;
    this.#pairs.delete(requestId);
    this.#deps.log.warn('port-forward stream pair incomplete after the creation timeout', {
      sandboxId: this.#grant.sandboxId,
      requestId,
    });
    if (pair.error !== undefined && !pair.error.destroyed) {
      pair.error.write(`(conn=0x${this.#connectionId.toString(16)}, request=${requestId}) timed out waiting for streams`);
    }
    // Upstream leaves both streams open until the connection ends; we reset them.
    for (const stream of [pair.error, pair.data]) {
      if (stream !== undefined) this.#session.reset(stream, RstCode.Cancel, 'stream pair timed out');
    }
  }
}

/** The plain SPDY/3.1 upgrade on /portforward/<token>. */
export class SpdyPortForwardProtocol implements PortForwardProtocol {
  readonly description = 'SPDY/3.1 with X-Stream-Protocol-Version: portforward.k8s.io';

  constructor(private readonly deps: ForwardDeps) {}

  accepts(req: IncomingMessage): boolean {
    return isSpdyUpgrade(req);
  }

  serve(req: IncomingMessage, socket: Duplex, head: Buffer, grant: SessionGrant): void {
    const handshake = spdyHandshake(req);
    if (!handshake.ok) {
      this.deps.metrics.handshakeFailures.inc({ protocol: 'spdy', reason: handshake.reason });
      sendPlainOnSocket(socket, { status: handshake.status, body: handshake.body, headers: handshake.headers });
      return;
    }
    socket.write(handshake.response);
    (socket as Socket).setNoDelay?.(true);
    const chunks = socket instanceof Socket ? readIntoOwnedSlabs(socket, this.deps.budget, undefined, () => slabBytes(pf)) : undefined;
    const pf: SpdyPortForwardSession = new SpdyPortForwardSession(socket, grant, this.deps, 'spdy', chunks);
    // A TLS connection cannot change process: it stays, and drains here on an upgrade.
    if (chunks !== undefined) new MovablePlainSpdy(socket as Socket, pf, grant, this.deps);
    pf.session.pushInitial(head);
  }
}

function slabBytes(pf: SpdyPortForwardSession | undefined): number {
  return spdyBulkSlabBytes(pf?.session.streamCount ?? 0);
}

/** A plain SPDY session as an upgrade moves it: the client socket and the port-forward session. */
class MovablePlainSpdy implements MovableSession {
  readonly protocol = 'spdy';
  #frozenAt = 0n;

  constructor(
    readonly socket: Socket,
    private readonly pf: SpdyPortForwardSession,
    private readonly grant: SessionGrant,
    private readonly deps: ForwardDeps,
  ) {
    deps.sessions.add(this);
    void pf.session.ended.then(() => deps.sessions.delete(this));
  }

  freeze(): void {
    this.#frozenAt = frozenNow();
    holdReads(this.socket);
    this.pf.freeze();
  }

  quiesce(): boolean {
    // Bytes read but left in the socket's own buffer (not ours to re-frame) would be lost.
    return this.socket.readableLength === 0 && this.pf.quiesce();
  }

  thaw(): void {
    this.pf.thaw();
    releaseReads(this.socket);
    if (!this.pf.session.readingHeld) this.socket.resume();
  }

  exportState(fds: number[]): MovedSession {
    fds.push(socketFd(this.socket));
    const socketIndex = fds.length - 1;
    return { protocol: 'spdy', grant: movedGrant(this.grant), socketFd: socketIndex, frozenAt: String(this.#frozenAt), spdy: this.pf.exportState(fds) };
  }

  release(): void {
    this.deps.sessions.delete(this);
    this.pf.release();
    releaseSocket(this.socket);
  }
}

/** A grant as JSON. */
export function movedGrant(grant: SessionGrant): MovedSession['grant'] {
  return { sandboxId: grant.sandboxId, ports: [...grant.ports], tag: grant.tag, peer: grant.peer };
}

/** An upgrade's new process: a plain SPDY session from its state, paused until start(). */
export function adoptPlainSpdy(moved: MovedSession, socket: Socket, fds: number[], deps: ForwardDeps): AdoptedSession {
  socket.setNoDelay(true);
  let pf: SpdyPortForwardSession | undefined;
  const chunks = readIntoOwnedSlabs(socket, deps.budget, undefined, () => slabBytes(pf));
  pf = new SpdyPortForwardSession(socket, moved.grant, deps, 'spdy', chunks, { state: moved.spdy!, fds });
  const adopted = pf;
  new MovablePlainSpdy(socket, adopted, moved.grant, deps);
  return {
    protocol: 'spdy',
    frozenAt: BigInt(moved.frozenAt),
    start() {
      adopted.start();
      socket.resume();
    },
  };
}
