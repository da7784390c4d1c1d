// The harness's own CRI calls to its containerd: Version on a fresh client (readiness),
// ImageStatus hand-encoded (our proto has no ImageService), and removing every sandbox.

import * as grpc from '@grpc/grpc-js';
import { join } from 'node:path';
import { RuntimeServiceClient } from '../../../src/cri-api';
import { criClient, rawUnary } from '../cri-client';

/** CRI Version on a client of its own (no shared subchannel, so no shared backoff). */
export function criVersion(address: string, timeoutMs: number): Promise<{ runtime_name: string; runtime_version: string }> {
  const client = new RuntimeServiceClient(address, grpc.credentials.createInsecure(), {
    'grpc.use_local_subchannel_pool': 1,
  });
  return new Promise<{ runtime_name: string; runtime_version: string }>((resolve, reject) => {
    (client as unknown as Record<string, Function>).Version(
      { version: 'v1' },
      { deadline: Date.now() + timeoutMs },
      (err: Error | null, res: { runtime_name: string; runtime_version: string }) => (err ? reject(err) : resolve(res)),
    );
  }).finally(() => client.close());
}

/** ImageStatusRequest{image: ImageSpec{image: ref}}, hand-encoded. */
function imageStatusRequest(ref: string): Buffer {
  const spec = Buffer.concat([Buffer.from([0x0a, Buffer.byteLength(ref)]), Buffer.from(ref)]);
  return Buffer.concat([Buffer.from([0x0a, spec.length]), spec]);
}

/** Whether the CRI resolves `ref` to an image (ImageStatusResponse has its image field); throws the status on failure. */
export async function criHasImage(address: string, ref: string, timeoutMs: number): Promise<boolean> {
  const { response, error } = await rawUnary(address, '/runtime.v1.ImageService/ImageStatus', imageStatusRequest(ref), timeoutMs);
  if (error) throw error;
  return response!.length > 0 && response![0] === 0x0a;
}

/**
 * Stop and remove every sandbox through the CRI (which also removes their containers, and
 * so ends their shims). Call it before stop(): shims outlive containerd. Returns the ids.
 */
export async function removeAllSandboxes(address: string): Promise<string[]> {
  const cri = criClient(address);
  try {
    const { items } = (await cri.call('ListPodSandbox', {})) as { items: { id: string }[] };
    for (const { id } of items) {
      await cri.call('StopPodSandbox', { pod_sandbox_id: id });
      await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
    }
    return items.map((s) => s.id);
  } finally {
    cri.close();
  }
}

/** A sandbox config for the private containerd: its log directory under the harness dir. */
export function containerdPodConfig(c: { dir: string }, name: string, namespace = 'test'): object {
  return {
    metadata: { name, namespace, uid: `${name}-uid`, attempt: 0 },
    labels: { app: name },
    log_directory: join(c.dir, 'pod-logs'),
    linux: {},
  };
}
