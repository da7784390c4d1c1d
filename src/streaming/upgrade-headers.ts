// Reading the comma-separated, possibly repeated headers of an upgrade request (Upgrade,
// Connection, X-Stream-Protocol-Version, Sec-WebSocket-Protocol): every protocol front end
// decides on these.

import type { IncomingMessage } from 'node:http';

/** Every value of a header, split at commas and trimmed, in the client's order. */
export function headerTokens(req: IncomingMessage, name: string): string[] {
  const raw = req.headersDistinct[name] ?? [];
  return raw.flatMap((v) => v.split(',')).map((v) => v.trim()).filter((v) => v !== '');
}

/** True when the Upgrade header names `protocol` (case-insensitively, as HTTP says). */
export function upgradesTo(req: IncomingMessage, protocol: string): boolean {
  const wanted = protocol.toLowerCase();
  return headerTokens(req, 'upgrade').some((t) => t.toLowerCase() === wanted);
}
