// The gRPC server on the CRI unix socket (kubelet's --container-runtime-endpoint).

import * as grpc from '@grpc/grpc-js';
import { promises as fs } from 'node:fs';
import { dirname } from 'node:path';
import { RuntimeServiceDefinition } from '../cri-api';
import { MESSAGE_MAX_BYTES } from './input-limits';
import { clearStaleSocket } from './socket-file';
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

  static async listen(socketPath: string, deps: RuntimeServiceDeps): Promise<CriServer> {
    await fs.mkdir(dirname(socketPath), { recursive: true, mode: 0o755 });
    await clearStaleSocket(socketPath);
    const server = new grpc.Server({
      // Over it, grpc-js answers RESOURCE_EXHAUSTED itself; below it, every field has its
      // own bound (input-limits.ts), so a 1 MiB id is an INVALID_ARGUMENT of ours.
      'grpc.max_receive_message_length': MESSAGE_MAX_BYTES,
      'grpc.max_send_message_length': MESSAGE_MAX_BYTES,
    });
    server.addService(RuntimeServiceDefinition, runtimeServiceHandlers(deps));
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(new Error(`cannot listen on CRI socket ${socketPath}: ${err.message}`)) : resolve(),
      );
    });
    // The CRI socket controls pods: only root (kubelet, crictl as root) may talk to it.
    await fs.chmod(socketPath, 0o660);
    return new CriServer(server, socketPath);
  }

  get address(): string {
    return `unix://${this.#socketPath}`;
  }

  async close(): Promise<void> {
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
    await fs.rm(this.#socketPath, { force: true });
  }
}
