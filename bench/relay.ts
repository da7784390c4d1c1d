// One relay hop by our pod side, as a process of its own so its CPU can be measured like
// socat's: `node relay.js <netnsPath|-> <targetPort>` listens on 127.0.0.1:0, prints
// {"port":N}, forwards one connection to localhost:<targetPort> inside the namespace
// (or on the host) through Forwarder + Pipe, then prints {"cpuSeconds":...} and exits.

import { createServer } from 'node:net';
import { Forwarder } from '../src/netns/forwarder';
import { Pipe } from '../src/pipe';
import { DuplexClient } from '../src/pipe-client';
import { podPorts } from '../src/policy/port-policy';

const [netnsArg, targetPort] = process.argv.slice(2);
const netnsPath = netnsArg === '-' ? null : (netnsArg ?? null);
const pod = { namespace: 'bench', name: 'relay', uid: '' };
const forwarder = new Forwarder({ resolve: async (id) => ({ id, ready: true, netnsPath, pod, ports: podPorts(undefined, {}) }) });

const server = createServer({ allowHalfOpen: true }, async (clientSide) => {
  server.close();
  const cpuAtStart = process.cpuUsage();
  const pipe = new Pipe(new DuplexClient(clientSide), await forwarder.open('bench', Number(targetPort)));
  const result = await pipe.done;
  const cpu = process.cpuUsage(cpuAtStart);
  process.stdout.write(JSON.stringify({ cpuSeconds: (cpu.user + cpu.system) / 1e6, outcome: result.outcome }) + '\n');
  process.exit(0);
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: (server.address() as { port: number }).port }) + '\n');
});
