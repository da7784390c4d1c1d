// A TCP echo app in a network namespace that reports each connection it accepts ("open")
// and how it ended ("end" after an EOF, "error" e.g. ECONNRESET), with the bytes it read:
// tests see from the app's side whether a connection reached it at all.

import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

const PROBE_APP = `
const net = require('node:net');
const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
let count = 0;
const server = net.createServer({ allowHalfOpen: true }, (c) => {
  const id = ++count;
  let bytes = 0;
  say({ id, event: 'open' });
  c.on('data', (d) => { bytes += d.length; if (!c.write(d)) c.pause(); });
  c.on('drain', () => c.resume());
  c.on('end', () => { say({ id, event: 'end', bytes }); c.end(); });
  c.on('error', (e) => say({ id, event: 'error', code: e.code, bytes }));
});
server.listen(Number(process.argv[1] ?? 0), '127.0.0.1', () => say({ port: server.address().port }));
`;

export interface ProbeApp {
  port: number;
  events: { id: number; event: string; bytes?: number; code?: string }[];
  proc: ChildProcess;
  stop(): Promise<void>;
}

export async function startProbeApp(netnsPath: string, listenPort = 0): Promise<ProbeApp> {
  const proc = spawn('nsenter', [`--net=${netnsPath}`, process.execPath, '-e', PROBE_APP, String(listenPort)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const events: ProbeApp['events'] = [];
  const port = await new Promise<number>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      const entry = JSON.parse(line) as { port?: number } & ProbeApp['events'][number];
      if (entry.port !== undefined) resolve(entry.port);
      else events.push(entry);
    });
    proc.once('exit', (code) => reject(new Error(`probe app exited with ${code}`)));
  });
  return {
    port,
    events,
    proc,
    async stop() {
      proc.kill('SIGKILL');
      await exited;
    },
  };
}

