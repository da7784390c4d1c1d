// Port-forward over WebSocket channels (PROTOCOL.md section 5): subprotocols
// v4.channel.k8s.io (binary), v4.base64.channel.k8s.io (text: ASCII channel digit, then
// base64) and none (binary). For port index i, channel 2i carries data and 2i+1 errors;
// the first message on each is the port, 2 bytes little-endian. One pod connection per
// port; the WebSocket closes (1000) once every port's forward has ended.

import type { IncomingMessage } from 'node:http';
import { Duplex } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { WebSocket } from 'ws';
import { sendPlainOnSocket } from '../http-status';
import type { PortForwardProtocol } from '../protocol';
import type { PortForwardGrant } from '../tokens';
import { forwardConnection, forwardErrorText, type ForwardDeps } from './forward';
import { acceptWebSocket, isWebSocketUpgrade, keepAlive, offeredSubprotocols, SPDY_TUNNEL_PROTOCOL } from './ws-server';

export const V4_BINARY = 'v4.channel.k8s.io';
export const V4_BASE64 = 'v4.base64.channel.k8s.io';
const SUPPORTED = ['', V4_BINARY, V4_BASE64];

/** Close codes (RFC 6455). */
const CLOSE_NORMAL = 1000;
const CLOSE_INVALID_DATA = 1007;
const CLOSE_POLICY = 1008;

type Encoding = 'binary' | 'base64';

/** Standard base64 with padding, as Go's base64.StdEncoding writes and reads it. */
const STANDARD_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** One channel of a WebSocket as a Duplex: writes become messages prefixed by the channel. */
class ChannelStream extends Duplex {
  constructor(
    private readonly socket: WebSocket,
    private readonly channel: number,
    private readonly encoding: Encoding,
  ) {
    super({ allowHalfOpen: true, readableHighWaterMark: 1024 * 1024 });
  }

  override _read(): void {
    if (this.socket.isPaused) this.socket.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, callback: (err?: Error | null) => void): void {
    sendOnChannel(this.socket, this.channel, this.encoding, chunk, callback);
  }

  // v4 has no per-channel close: the end of one direction shows only when the socket closes.
  override _final(callback: (err?: Error | null) => void): void {
    callback();
  }
}

const CHANNEL_PREFIX: Buffer[] = Array.from({ length: 256 }, (_, i) => Buffer.from([i]));

function sendOnChannel(
  socket: WebSocket,
  channel: number,
  encoding: Encoding,
  payload: Buffer,
  callback?: (err?: Error | null) => void,
): void {
  if (socket.readyState !== socket.OPEN) {
    // The client is gone: what the pod still sends has nowhere to go. Dropping it (rather
    // than failing the write) lets the client's last bytes still reach the pod.
    callback?.();
    return;
  }
  if (encoding === 'base64') {
    socket.send(String.fromCharCode(48 + channel) + payload.toString('base64'), { binary: false }, callback);
    return;
  }
  // The channel byte and the payload as two fragments of one message: no copy of the payload.
  socket.send(CHANNEL_PREFIX[channel]!, { binary: true, fin: false });
  socket.send(payload, { binary: true, fin: true }, callback);
}

function portPrefix(port: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16LE(port, 0);
  return b;
}

export class WebSocketPortForwardProtocol implements PortForwardProtocol {
  readonly description = `WebSocket with subprotocol ${V4_BINARY}, ${V4_BASE64} or none`;

  constructor(private readonly deps: ForwardDeps) {}

  accepts(req: IncomingMessage): boolean {
    return isWebSocketUpgrade(req) && !offeredSubprotocols(req).includes(SPDY_TUNNEL_PROTOCOL);
  }

  serve(req: IncomingMessage, socket: Duplex, head: Buffer, grant: PortForwardGrant): void {
    const offered = offeredSubprotocols(req);
    const protocol = offered.length === 0 ? '' : offered.find((p) => SUPPORTED.includes(p));
    if (protocol === undefined) {
      this.#refuse(socket, 'unsupported-subprotocol', `requested WebSocket subprotocols ${JSON.stringify(offered)} are not supported; supported: ${V4_BINARY}, ${V4_BASE64} or none`);
      return;
    }
    if (grant.ports.length === 0) {
      this.#refuse(socket, 'no-ports', 'port-forward over WebSocket needs the ports in the PortForward request (kubelet takes them from the "port" query parameter)');
      return;
    }
    void acceptWebSocket(req, socket, head, protocol).then((ws) =>
      new ChannelSession(ws, grant, protocol === V4_BASE64 ? 'base64' : 'binary', this.deps).start(),
    );
  }

  #refuse(socket: Duplex, reason: string, body: string): void {
    this.deps.metrics.handshakeFailures.inc({ protocol: 'websocket', reason });
    sendPlainOnSocket(socket, { status: 400, body });
  }
}

/** One WebSocket: a data and an error channel per port of the grant. */
class ChannelSession {
  readonly #data: ChannelStream[] = [];
  readonly #errors: ChannelStream[] = [];
  #closed = false;
  /** Metrics and streams released (once, whoever closed first). */
  #released = false;
  readonly #stopKeepAlive: () => void;

  constructor(
    private readonly ws: WebSocket,
    private readonly grant: PortForwardGrant,
    private readonly encoding: Encoding,
    private readonly deps: ForwardDeps,
  ) {
    this.#stopKeepAlive = keepAlive(ws, deps.pingIntervalMs, deps.idleTimeoutMs, () =>
      this.#close(CLOSE_NORMAL, 'idle timeout'),
    );
  }

  start(): void {
    const { ws, grant, deps } = this;
    deps.metrics.sessionsActive.inc({ protocol: 'websocket' });
    deps.metrics.sessionsTotal.inc({ protocol: 'websocket' });
    ws.on('message', (data: Buffer, isBinary: boolean) => this.#onMessage(data, isBinary));
    ws.on('error', (err) => deps.log.debug('WebSocket error', { err }));
    ws.on('close', () => this.#onClose());
    const forwards = grant.ports.map((port, i) => {
      const data = new ChannelStream(ws, 2 * i, this.encoding);
      const error = new ChannelStream(ws, 2 * i + 1, this.encoding);
      error.on('error', () => undefined);
      this.#data.push(data);
      this.#errors.push(error);
      data.write(portPrefix(port));
      error.write(portPrefix(port));
      return this.#forward(port, data, error);
    });
    void Promise.all(forwards).then(() => this.#close(CLOSE_NORMAL, ''));
  }

  async #forward(port: number, data: ChannelStream, error: ChannelStream): Promise<void> {
    const result = await forwardConnection(this.deps, {
      sandboxId: this.grant.sandboxId,
      port,
      client: data,
      protocol: 'websocket',
      isAborted: () => this.#closed,
    });
    if (result.kind === 'dial-failed') {
      const failure = result.error.failure;
      const quiet = (failure === 'refused' || failure === 'timeout') && this.deps.refusedDial === 'reset';
      // "reset": that connection just ends, no text (as over SPDY).
      if (!quiet && !error.destroyed) error.write(Buffer.from(forwardErrorText(port, this.grant.sandboxId, result.error.message)));
    }
    // Everything queued on both channels goes out before the WebSocket closes.
    if (!data.destroyed) data.end();
    if (!error.destroyed) error.end();
    const flushed = (s: Duplex): Promise<void> => finished(s, { readable: false }).catch(() => undefined);
    await Promise.all([flushed(data), flushed(error)]);
  }

  #onMessage(message: Buffer, isBinary: boolean): void {
    let channel: number;
    let payload: Buffer;
    if (this.encoding === 'base64') {
      if (isBinary) return this.#close(CLOSE_INVALID_DATA, 'binary message on a base64 channel connection');
      channel = message.length > 0 ? message[0]! - 48 : -1;
      const text = message.toString('latin1', 1);
      if (!STANDARD_BASE64.test(text)) return this.#close(CLOSE_INVALID_DATA, 'invalid base64 payload');
      payload = Buffer.from(text, 'base64');
    } else {
      if (!isBinary) return this.#close(CLOSE_INVALID_DATA, 'text message on a binary channel connection');
      channel = message.length > 0 ? message[0]! : -1;
      payload = message.subarray(1);
    }
    if (!(channel >= 0 && channel < 2 * this.grant.ports.length)) {
      return this.#close(CLOSE_POLICY, `unknown channel ${channel}`);
    }
    if (channel % 2 === 1) return this.#close(CLOSE_POLICY, `channel ${channel} is an error channel: clients must not write to it`);
    const stream = this.#data[channel / 2]!;
    if (payload.length === 0 || stream.destroyed) return;
    if (!stream.push(payload) && stream.readableLength >= stream.readableHighWaterMark) this.ws.pause();
  }

  #close(code: number, reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    if (code !== CLOSE_NORMAL) this.deps.log.warn('closing port-forward WebSocket', { sandboxId: this.grant.sandboxId, code, reason });
    if (this.ws.readyState === this.ws.OPEN) this.ws.close(code, reason);
    this.#onClose();
  }

  #onClose(): void {
    this.#stopKeepAlive();
    if (this.#released) return;
    this.#released = true;
    this.#closed = true;
    this.deps.metrics.sessionsActive.dec({ protocol: 'websocket' });
    // A client close is the end of what the client sends (v4 has no other way to say it,
    // and upstream reads it as EOF): the pod gets everything already received, then FIN.
    for (const stream of this.#data) if (!stream.destroyed) stream.push(null);
    for (const stream of this.#errors) stream.destroy();
    setTimeout(() => this.ws.terminate(), 1_000).unref();
  }
}
