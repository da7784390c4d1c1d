// The gRPC server on the CRI unix socket (kubelet's --container-runtime-endpoint).

import * as grpc from '@grpc/grpc-js';
import { promises as fs } from 'node:fs';
import { dirname } from 'node:path';
import { RuntimeServiceDefinition } from '../cri-api';
import { MESSAGE_MAX_BYTES } from './input-limits';
import { bindPathFor, clearStaleSocket } from './socket-file';
import { runtimeServiceHandlers, type RuntimeServiceDeps } from './runtime-service';

/** How long a shutdown waits for calls in flight before cancelling them. */
const SHUTDOWN_GRACE_MS = 2_000;

export class CriServer {
  readonly #server: grpc.Server;
  readonly #socketPath: string;

  private constructor(server: grpc.Server, socketPath: string) {
    this.#server = server;
    this.#socketPath = socketPath;
  }

  /**
   * Serve on `socketPath`: bound under bindPathFor(socketPath), then renamed over it. An
   * upgrade's new process (`takeover`) leaves the rename to the old one, which makes it
   * once the new one has taken over (atomic: every connection reaches one of the two).
   */
  static async listen(socketPath: string, deps: RuntimeServiceDeps, takeover = false): Promise<CriServer> {
    await fs.mkdir(dirname(socketPath), { recursive: true, mode: 0o755 });
    if (!takeover) await clearStaleSocket(socketPath);
    const bindPath = bindPathFor(socketPath);
    await fs.rm(bindPath, { force: true });
    const server = new grpc.Server({
      // Over it, grpc-js answers RESOURCE_EXHAUSTED itself; below it, every field has its
      // own bound (input-limits.ts), so a 1 MiB id is an INVALID_ARGUMENT of ours.
      'grpc.max_receive_message_length': MESSAGE_MAX_BYTES,
      'grpc.max_send_message_length': MESSAGE_MAX_BYTES,
    });
    server.addService(RuntimeServiceDefinition, runtimeServiceHandlers(deps));
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(`unix://${bindPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(new Error(`cannot listen on CRI socket ${bindPath}: ${err.message}`)) : resolve(),
      );
    });
    // The CRI socket controls pods: only root (kubelet, crictl as root) may talk to it.
    await fs.chmod(bindPath, 0o660);
    if (!takeover) await fs.rename(bindPath, socketPath);
    return new CriServer(server, socketPath);
  }

  get address(): string {
    return `unix://${this.#socketPath}`;
  }

  async close(): Promise<void> {
    await this.release();
    await fs.rm(this.#socketPath, { force: true });
  }

  /** Stop serving (clients get GOAWAY and reconnect by path) and leave the socket file: after an upgrade it is the new process's. */
  async release(): Promise<void> {
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => {
        this.#server.forceShutdown();
        resolve();
      }, SHUTDOWN_GRACE_MS);
      this.#server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
  }
}
