// The writer of plain-text answers, on a normal response and on a raw socket (upgrade
// requests): every refusal of the streaming server says in its body what went wrong.

import { STATUS_CODES, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

/** An answer with a plain-text body: every error we send says what went wrong. */
export interface PlainAnswer {
  status: number;
  body: string;
  headers?: OutgoingHttpHeaders;
}

export function sendPlain(res: ServerResponse, answer: PlainAnswer): void {
  const body = answer.body.endsWith('\n') ? answer.body : answer.body + '\n';
  res.writeHead(answer.status, {
    ...answer.headers,
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

/** The same answer written on a socket that Node handed over for an upgrade. */
export function sendPlainOnSocket(socket: Duplex, answer: PlainAnswer): void {
  const body = answer.body.endsWith('\n') ? answer.body : answer.body + '\n';
  let head = `HTTP/1.1 ${answer.status} ${STATUS_CODES[answer.status] ?? ''}\r\n`;
  const headers: OutgoingHttpHeaders = {
    ...answer.headers,
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    Connection: 'close',
  };
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) head += `${name}: ${v}\r\n`;
  }
  socket.end(head + '\r\n' + body);
}
