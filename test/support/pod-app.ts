// A TCP app to run inside a sandbox: `node pod-app.js <mode> <host> <port>` prints
// {"port":N} once listening. Started with nsenter --net=<netns> by test/support/apps.ts.
//
// modes: echo (echoes; ends after the client's FIN), answer-after-eof (reads to EOF, then
// writes 100 bytes and ends), never-close (reads, never ends), reset (writes 1 MiB, then
// resets once the client has sent something), flood (writes forever), ignore (never
// reads), source:<bytes> (writes that many bytes, then ends), sink (reads to EOF, then ends),
// trickle-after-eof:<count>:<ms> (after EOF, writes <count> bytes one every <ms>, then ends),
// reply-and-close:<bytes> (echoes the first <bytes>, then ends: a server that answers one
// request and closes, as HTTP/1.0 does), pattern:<bytes>:<seed>:<bytesPerSecond> (writes
// that many bytes of a seeded, verifiable stream at that pace, 0 = unpaced, then ends; the
// first byte the client sends lifts the pace: test/support/pattern.ts).

import { createServer, type Socket } from 'node:net';
import { sendPattern } from './pattern';
import { writeFill } from './tcp-client';

const [mode, host, portText] = process.argv.slice(2);

function serve(socket: Socket): void {
  socket.on('error', () => undefined);
  if (mode?.startsWith('trickle-after-eof:')) {
    // After the client's FIN: `count` bytes, one every `everyMs`, then FIN. A slow answer.
    const [count, everyMs] = mode.split(':').slice(1).map(Number) as [number, number];
    socket.resume();
    socket.on('end', () => {
      let sent = 0;
      const timer = setInterval(() => {
        socket.write('t');
        if (++sent === count) {
          clearInterval(timer);
          socket.end();
        }
      }, everyMs);
    });
    return;
  }
  if (mode?.startsWith('reply-and-close:')) {
    let left = Number(mode.slice('reply-and-close:'.length));
    socket.on('data', (chunk: Buffer) => {
      if (left === 0) return;
      const answer = chunk.subarray(0, left);
      left -= answer.length;
      socket.write(answer);
      if (left === 0) socket.end();
    });
    return;
  }
  if (mode?.startsWith('pattern:')) {
    const [bytes, seed, bytesPerSecond] = mode.split(':').slice(1).map(Number) as [number, number, number];
    sendPattern(socket, bytes, seed, bytesPerSecond);
    return;
  }
  if (mode?.startsWith('source:')) {
    socket.resume();
    writeFill(socket, Number(mode.slice('source:'.length)), 's');
    return;
  }
  switch (mode) {
    case 'sink':
      socket.resume();
      socket.on('end', () => socket.end());
      break;
    case 'echo':
      socket.pipe(socket);
      break;
    case 'answer-after-eof':
      socket.resume();
      socket.on('end', () => socket.end(Buffer.alloc(100, 'x')));
      break;
    case 'never-close':
      socket.resume();
      break;
    case 'reset': {
      // Once the 1 MiB is written and the client has spoken (the connection still open).
      let written = false;
      let heard = false;
      const reset = (): void => {
        if (written && heard) socket.resetAndDestroy();
      };
      socket.once('data', () => ((heard = true), reset()));
      socket.resume();
      socket.write(Buffer.alloc(1 << 20, 'r'), () => ((written = true), reset()));
      break;
    }
    case 'flood': {
      const chunk = Buffer.alloc(64 * 1024, 'f');
      const more = (): void => {
        while (!socket.destroyed && socket.write(chunk));
      };
      socket.on('drain', more);
      more();
      break;
    }
    case 'ignore':
      socket.pause();
      break;
    default:
      throw new Error(`unknown mode ${mode}`);
  }
}

const server = createServer({ allowHalfOpen: true }, serve);
server.listen(Number(portText), host, () => {
  const address = server.address();
  process.stdout.write(JSON.stringify({ port: typeof address === 'object' && address ? address.port : 0 }) + '\n');
});
