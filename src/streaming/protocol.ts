// What a port-forward protocol front end (SPDY, WebSocket, SPDY-in-WebSocket) offers the
// streaming server. The server redeems the token; the first protocol that accepts the
// request's upgrade headers owns the socket from then on.

import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { SessionGrant } from './tokens';

export interface PortForwardProtocol {
  /** Shown to clients whose upgrade no protocol accepts, e.g. "SPDY/3.1 (portforward.k8s.io)". */
  readonly description: string;
  /** True when the request's upgrade headers ask for this protocol. */
  accepts(req: IncomingMessage): boolean;
  /** Answer the handshake and serve the session; from now on the socket is the protocol's. */
  serve(req: IncomingMessage, socket: Duplex, head: Buffer, grant: SessionGrant): void;
}
