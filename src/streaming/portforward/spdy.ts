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
import { GoAwayStatus, RstCode } from '../spdy/constants';
import { SpdySession } from '../spdy/session';
import type { SpdyStream } from '../spdy/stream';
import { readIntoOwnedSlabs, spdyBulkSlabBytes, type ChunkTracker } from '../owned-reads';
import { sendPlainOnSocket } from '../plain-answer';
import type { PortForwardProtocol } from '../protocol';
import type { SessionGrant } from '../tokens';
import { forwardConnection, type ForwardDeps } from './forward';
import { END_SESSION_LINGER_MS } from './verdict';
import { isSpdyUpgrade, spdyHandshake } from './spdy-handshake';

interface Pair {
  requestId: string;
  error?: SpdyStream;
  data?: SpdyStream;
  timer: NodeJS.Timeout;
}

let nextConnectionId = 1;

/** Serves one SPDY session (plain, or carried in WebSocket messages) for one grant. */
export class SpdyPortForwardSession {
  readonly #deps: ForwardDeps;
  readonly #grant: SessionGrant;
  readonly #session: SpdySession;
  readonly #pairs = new Map<string, Pair>();
  readonly #connectionId = nextConnectionId++;
  readonly #protocol: string;

  constructor(transport: Duplex, grant: SessionGrant, deps: ForwardDeps, protocol: string, chunks?: ChunkTracker) {
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
    });
    deps.metrics.sessionsActive.inc({ protocol });
    deps.metrics.sessionsTotal.inc({ protocol });
    void this.#session.ended.then((reason) => {
      deps.metrics.sessionsActive.dec({ protocol });
      for (const pair of this.#pairs.values()) clearTimeout(pair.timer);
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
      pair = { requestId, timer: setTimeout(() => this.#onPairTimeout(requestId), this.#deps.streamCreationTimeoutMs) };
      this.#pairs.set(requestId, pair);
    }
    if (pair[type] !== undefined) {
      this.#session.reset(stream, RstCode.ProtocolError, `second ${type} stream for request ${requestId}`);
      return;
    }
    pair[type] = stream;
    stream.on('error', () => undefined); // resets are expected; the pipe or the pair handles them
    if (type === 'error') stream.resume(); // the client only half-closes it
    if (pair.error !== undefined && pair.data !== undefined) {
      clearTimeout(pair.timer);
      this.#pairs.delete(requestId);
      void this.#forward(pair.error, pair.data, port);
    }
  }

  async #forward(errorStream: SpdyStream, dataStream: SpdyStream, port: number): Promise<void> {
    const verdict = await forwardConnection(this.#deps, {
      grant: this.#grant,
      port,
      client: dataStream,
      protocol: this.#protocol,
      isAborted: () => this.#session.isEnded,
    });
    // The text (if any) goes out before the data stream's reset, so kubectl has it when the
    // data stream fails; our half of the error stream ends either way.
    if (verdict.errorText !== undefined && !errorStream.destroyed) errorStream.end(verdict.errorText);
    if (verdict.resetData) this.#session.reset(dataStream, RstCode.Cancel, verdict.errorText ?? 'forward failed');
    if (!errorStream.destroyed && !errorStream.writableEnded) errorStream.end();
    if (verdict.endSession) setTimeout(() => this.#session.close(GoAwayStatus.Ok), END_SESSION_LINGER_MS).unref();
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
    let pf: SpdyPortForwardSession | undefined;
    const slabBytes = (): number => spdyBulkSlabBytes(pf?.session.streamCount ?? 0);
    const chunks = socket instanceof Socket ? readIntoOwnedSlabs(socket, this.deps.budget, undefined, slabBytes) : undefined;
    pf = new SpdyPortForwardSession(socket, grant, this.deps, 'spdy', chunks);
    pf.session.pushInitial(head);
  }
}
