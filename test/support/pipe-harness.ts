// A forwarded connection without any protocol: a local TCP listener stands in for the
// client side. Test client --TCP--> [accepted socket] --Pipe--> pod socket --> app.

import { connect, createServer, type Server, type Socket } from 'node:net';
import type { Forwarder } from '../../src/netns/forwarder';
import { Pipe, type PipeResult } from '../../src/pipe';
import { DuplexClient } from '../../src/pipe-client';
import type { PodSocket } from '../../src/pod-socket';

export interface Forwarded {
  /** The test's own client socket (allowHalfOpen). */
  client: Socket;
  /** The server side of the client connection, which the pipe owns. */
  clientSide: Socket;
  /** The pipe's pod connection. */
  pod: PodSocket;
  result: Promise<PipeResult>;
}

export class PipeHarness {
  readonly #server: Server;
  readonly #pending: ((socket: Socket) => void)[] = [];
  /** The test's client sockets: destroyed on close(); the pipe owns the other sockets. */
  readonly #clients = new Set<Socket>();

  private constructor(server: Server) {
    this.#server = server;
    server.on('connection', (socket) => this.#pending.shift()?.(socket));
  }

  static async start(): Promise<PipeHarness> {
    const server = createServer({ allowHalfOpen: true });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return new PipeHarness(server);
  }

  /** Connect a client and pipe it to sandbox:port through the forwarder. */
  async forward(forwarder: Forwarder, sandboxId: string, port: number, graceMs?: number): Promise<Forwarded> {
    const accepted = new Promise<Socket>((resolve) => this.#pending.push(resolve));
    const address = this.#server.address() as { port: number };
    const client = connect({ port: address.port, host: '127.0.0.1', allowHalfOpen: true });
    this.#clients.add(client);
    client.once('close', () => this.#clients.delete(client));
    const clientSide = await accepted;
    try {
      const podFd = await forwarder.open(sandboxId, port);
      const pipe = new Pipe(new DuplexClient(clientSide), podFd, graceMs === undefined ? {} : { graceMs });
      return { client, clientSide, pod: pipe.pod, result: pipe.done };
    } catch (err) {
      client.destroy();
      clientSide.destroy();
      throw err;
    }
  }

  close(): Promise<void> {
    for (const client of this.#clients) client.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}
