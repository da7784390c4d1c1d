// The pod side without a server process: sandboxes of an EmbeddedSandboxStore (real
// network namespaces) and many dials into one, for test/integration/pod-side.test.ts and
// bench/pod-side.ts.

import { once } from 'node:events';
import { Socket } from 'node:net';
import type { Forwarder } from '../../src/netns/forwarder';
import type { EmbeddedSandboxStore } from '../../src/sandbox/embedded';

/** Run a sandbox in the store: a namespace of its own (POD) or the host's (NODE). */
export function runEmbeddedSandbox(store: EmbeddedSandboxStore, name: string, networkMode: 'POD' | 'NODE' = 'POD', namespace = 'test') {
  return store.run({
    metadata: { name, namespace, uid: `uid-${name}`, attempt: 0 },
    labels: {},
    annotations: {},
    runtimeHandler: '',
    networkMode,
    portMappings: [],
  });
}

/** Open `total` pod connections, `inFlight` at a time, closing each as soon as it is open. */
export async function dialMany(forwarder: Forwarder, sandboxId: string, port: number, total: number, inFlight: number): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next++ < total) {
        const socket = new Socket({ fd: await forwarder.open(sandboxId, port) });
        socket.destroy();
        await once(socket, 'close');
      }
    }),
  );
}
