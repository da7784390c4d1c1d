// A real grpc-js client of runtime.v1.RuntimeService over the unix socket, with promise
// methods, plus a raw caller for methods our proto does not declare.

import * as grpc from '@grpc/grpc-js';
import { RuntimeServiceClient } from '../../src/cri-api';
import { netnsPathFromInfo } from '../../src/sandbox/upstream';

export type CriCall = (method: string, request: object) => Promise<any>;

export interface CriTestClient {
  call: CriCall;
  /** Call any method path with an empty request; resolves to the status error. */
  callRaw(path: string): Promise<grpc.ServiceError | null>;
  close(): void;
}

/**
 * A client with a connection of its own, as each crictl or kubelet has. grpc-js shares one
 * transport per target across a process's clients by default: a client made just after a
 * server was killed, before this process read the dead connection's EOF, was handed that
 * connection and failed UNAVAILABLE "Connection dropped" (upgrade.test, on a busy CI run).
 */
export function criClient(socketAddress: string): CriTestClient {
  const client = new RuntimeServiceClient(socketAddress, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
  const call: CriCall = (method, request) =>
    new Promise((resolve, reject) => {
      const fn = (client as unknown as Record<string, Function>)[method];
      if (typeof fn !== 'function') throw new Error(`no client method ${method}`);
      fn.call(client, request, { deadline: Date.now() + 10_000 }, (err: grpc.ServiceError | null, res: unknown) =>
        err ? reject(err) : resolve(res),
      );
    });
  const callRaw = (path: string): Promise<grpc.ServiceError | null> =>
    new Promise((resolve) => {
      client.makeUnaryRequest(
        path,
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.alloc(0),
        { deadline: Date.now() + 10_000 },
        (err) => resolve(err ?? null),
      );
    });
  return { call, callRaw, close: () => client.close() };
}

/** Assert-friendly: the gRPC status of a call that must fail. */
export async function grpcError(p: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new Error('expected the call to fail');
}

export function podConfig(name: string, extra: Record<string, unknown> = {}): object {
  return {
    metadata: { name, namespace: 'test', uid: `uid-${name}`, attempt: 0 },
    labels: { app: name },
    ...extra,
  };
}

export const HOST_NETWORK = { linux: { security_context: { namespace_options: { network: 'NODE' } } } };

/** A sandbox's network namespace path from its verbose PodSandboxStatus (null for host network). */
export async function sandboxNetns(cri: CriTestClient, id: string): Promise<string | null> {
  return netnsPathFromInfo((await cri.call('PodSandboxStatus', { pod_sandbox_id: id, verbose: true })).info.info);
}

/** Run a sandbox named `name` (host network or a namespace of its own): its id and netns path. */
export async function runSandbox(cri: CriTestClient, name: string, hostNetwork = false): Promise<{ id: string; netns: string | null }> {
  const id: string = (await cri.call('RunPodSandbox', { config: podConfig(name, hostNetwork ? HOST_NETWORK : {}) })).pod_sandbox_id;
  return { id, netns: await sandboxNetns(cri, id) };
}

/**
 * One raw unary call on a client of its own (no shared subchannel, so no shared backoff):
 * request bytes in, response bytes or the status out, nothing decoded.
 */
export function rawUnary(
  address: string,
  path: string,
  request: Buffer,
  timeoutMs = 10_000,
): Promise<{ response?: Buffer; error?: grpc.ServiceError }> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
  return new Promise((resolve) => {
    client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, request, { deadline: Date.now() + timeoutMs }, (error, response) => {
      client.close();
      resolve(error ? { error } : { response: response ?? Buffer.alloc(0) });
    });
  });
}
