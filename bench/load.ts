// The client end of a transfer: `node load.js download|upload <port> <bytes>` connects to
// 127.0.0.1:<port>, reads (download) or writes (upload) that many bytes, waits for the
// other side's end, and prints {"bytes":N,"seconds":S}.

import { connect } from 'node:net';
import { writeFill } from '../test/support/tcp-client';

const [direction, port, bytesText] = process.argv.slice(2);
const total = Number(bytesText);
const started = process.hrtime.bigint();
const socket = connect({ port: Number(port), host: '127.0.0.1', allowHalfOpen: true });
let received = 0;
socket.on('data', (chunk: Buffer) => (received += chunk.length));
socket.on('end', () => {
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const bytes = direction === 'download' ? received : total;
  process.stdout.write(JSON.stringify({ bytes, seconds }) + '\n');
  socket.end();
});
// A download never half-closes before the end: the pod side would start its grace period.
if (direction === 'upload') socket.once('connect', () => writeFill(socket, total, 'u'));
