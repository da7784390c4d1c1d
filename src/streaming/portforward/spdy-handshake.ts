// The SPDY/3.1 upgrade handshake of Kubernetes' httpstream (PROTOCOL.md section 4).

import type { IncomingMessage } from 'node:http';
import { headerTokens, upgradesTo } from '../upgrade-headers';

export const PORT_FORWARD_PROTOCOL = 'portforward.k8s.io';
export const SPDY_UPGRADE = 'SPDY/3.1';

export function isSpdyUpgrade(req: IncomingMessage): boolean {
  return upgradesTo(req, SPDY_UPGRADE);
}

export type SpdyHandshake =
  | { ok: true; response: string }
  | { ok: false; status: number; reason: string; body: string; headers?: Record<string, string> };

export function spdyHandshake(req: IncomingMessage): SpdyHandshake {
  const connection = headerTokens(req, 'connection').map((t) => t.toLowerCase());
  if (!connection.includes('upgrade') || !isSpdyUpgrade(req)) {
    return { ok: false, status: 400, reason: 'missing-upgrade', body: 'unable to upgrade: missing upgrade headers in request (need Connection: Upgrade and Upgrade: SPDY/3.1)' };
  }
  const offered = headerTokens(req, 'x-stream-protocol-version');
  if (offered.length === 0) {
    return { ok: false, status: 400, reason: 'missing-version', body: 'unable to upgrade: no X-Stream-Protocol-Version header in request' };
  }
  if (!offered.includes(PORT_FORWARD_PROTOCOL)) {
    return {
      ok: false,
      status: 403,
      reason: 'unsupported-version',
      body: `unable to upgrade: unable to negotiate protocol: client supports ${JSON.stringify(offered)}, server accepts ["${PORT_FORWARD_PROTOCOL}"]`,
      headers: { 'X-Accepted-Stream-Protocol-Versions': PORT_FORWARD_PROTOCOL },
    };
  }
  return {
    ok: true,
    response:
      'HTTP/1.1 101 Switching Protocols\r\n' +
      'Connection: Upgrade\r\n' +
      `Upgrade: ${SPDY_UPGRADE}\r\n` +
      `X-Stream-Protocol-Version: ${PORT_FORWARD_PROTOCOL}\r\n\r\n`,
  };
}
