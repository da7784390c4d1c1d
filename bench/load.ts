// The client end of a transfer: `node load.js download|upload <port> <bytes>` connects to
// 127.0.0.1:<port>, reads (download) or writes (upload) that many bytes, waits for the
// other side's end, and prints {"bytes":N,"seconds":S}.

import { connect } from 'node:net';

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
if (direction === 'upload') {
  const chunk = Buffer.alloc(1 << 20, 'u');
  let left = total;
  const more = (): void => {
    while (left > 0) {
      const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
      left -= piece.length;
      if (!socket.write(piece)) return;
    }
    socket.end();
  };
  socket.on('drain', more);
  socket.once('connect', more);
} else {
  // No half-close before the download ends: the pod side would start its grace period.
}
