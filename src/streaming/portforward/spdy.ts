// Port-forward over SPDY (portforward.k8s.io): each forwarded connection is a pair of
// client streams, "error" and "data", tied by their requestid header. Both get their
// SYN_REPLY as soon as they arrive (kubectl waits for it before opening the next); a
// complete pair goes to the pod side; an incomplete one is dropped after
// --stream-creation-timeout (30 s, as upstream).
//
// Error policy (README "Errors"): the user must hear about a sandbox that is gone, so its
// text goes on the error stream and the session ends (kubectl exits non-zero). Per-
// connection trouble (nothing listening, by default; the app resets; the client drops)
// resets only that data stream, so the kubectl session lives on.

import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { GoAwayStatus, RstCode } from '../spdy/constants';
import { SpdySession } from '../spdy/session';
import type { SpdyStream } from '../spdy/stream';
import { sendPlainOnSocket } from '../http-status';
import type { PortForwardProtocol } from '../protocol';
import type { PortForwardGrant } from '../tokens';
import { forwardConnection, forwardErrorText, type ForwardDeps } from './forward';
import { isSpdyUpgrade, spdyHandshake } from './spdy-handshake';

/** After a fatal error text, how long kubectl gets to read it before we end the session. */
const FATAL_ERROR_LINGER_MS = 1_000;

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
  readonly #grant: PortForwardGrant;
  readonly #session: SpdySession;
  readonly #pairs = new Map<string, Pair>();
  readonly #connectionId = nextConnectionId++;
  readonly #protocol: string;

  constructor(transport: Duplex, grant: PortForwardGrant, deps: ForwardDeps, protocol: string) {
    this.#deps = deps;
    this.#grant = grant;
    this.#protocol = protocol;
    this.#session = new SpdySession(transport, {
      idleTimeoutMs: deps.idleTimeoutMs,
      log: deps.log.child({ sandboxId: grant.sandboxId, protocol }),
      onStream: (stream) => this.#onStream(stream),
      onPing: () => deps.metrics.spdyPings.inc(),
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
    const { sandboxId, ports } = this.#grant;
    if (ports.length > 0 && !ports.includes(port)) {
      this.#deps.metrics.dialErrors.inc({ reason: 'port-not-allowed' });
      this.#reportError(errorStream, dataStream, port, `port ${port} is not among the ports of this port-forward request (${ports.join(', ')})`);
      return;
    }
    const result = await forwardConnection(this.#deps, {
      sandboxId,
      port,
      client: dataStream,
      protocol: this.#protocol,
      isAborted: () => this.#session.isEnded,
    });
    if (result.kind === 'dial-failed') {
      const { error } = result;
      if (error.failure === 'sandbox-gone' || error.failure === 'netns-closed') {
        this.#reportError(errorStream, dataStream, port, error.message);
        setTimeout(() => this.#session.close(GoAwayStatus.Ok), FATAL_ERROR_LINGER_MS).unref();
      } else if (this.#deps.refusedDial === 'error') {
        this.#reportError(errorStream, dataStream, port, error.message);
      } else {
        // Policy "reset": only this connection fails; kubectl keeps the session and the
        // next connection works once the app listens (kubectl#1169).
        this.#session.reset(dataStream, RstCode.Cancel, error.message);
        errorStream.end();
      }
      return;
    }
    // The pipe already ended or reset the data stream; close our half of the error stream.
    if (!errorStream.destroyed) errorStream.end();
  }

  /** Upstream's text on the error stream, then FIN it and reset the data stream. */
  #reportError(errorStream: SpdyStream, dataStream: SpdyStream, port: number, message: string): void {
    if (!errorStream.destroyed) errorStream.end(forwardErrorText(port, this.#grant.sandboxId, message));
    this.#session.reset(dataStream, RstCode.Cancel, message);
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

  serve(req: IncomingMessage, socket: Duplex, head: Buffer, grant: PortForwardGrant): void {
    const handshake = spdyHandshake(req);
    if (!handshake.ok) {
      this.deps.metrics.handshakeFailures.inc({ protocol: 'spdy', reason: handshake.reason });
      sendPlainOnSocket(socket, { status: handshake.status, body: handshake.body, headers: handshake.headers });
      return;
    }
    socket.write(handshake.response);
    (socket as Socket).setNoDelay?.(true);
    const pf = new SpdyPortForwardSession(socket, grant, this.deps, 'spdy');
    pf.session.pushInitial(head);
  }
}
