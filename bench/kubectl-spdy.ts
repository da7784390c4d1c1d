// 1 GiB down and up through kubectl port-forward (plain SPDY) and our server, relayed by
// FakeApiServer as kubelet would: MB/s, and the server process's CPU seconds per GiB
// (utime + stime from /proc/<pid>/stat, so kubectl's and the relay's CPU are not counted).

import { FakeApiServer } from '../test/support/fake-apiserver';
import { startPortForward } from '../test/support/kubectl';
import { runLoad, type Direction } from './pod-side';
import { cpuSeconds, untilCpuQuiet } from './proc';
import { startBenchSandbox } from './sandbox';

export interface KubectlTransfer {
  mbPerSecond: number;
  serverCpuPerGiB: number;
}

export async function kubectlTransfer(
  direction: Direction,
  bytes: number,
  transport: 'spdy' | 'default' = 'spdy',
): Promise<KubectlTransfer> {
  const { server, sandboxId: id, app, stop } = await startBenchSandbox(direction === 'download' ? `source:${bytes}` : 'sink');
  const api = await FakeApiServer.start({ criAddress: server.criAddress, namespace: 'bench', refuseWebSocket: transport === 'spdy' });
  const forward = await startPortForward({ kubeconfig: api.kubeconfig(server.dir), pod: id, ports: [`0:${app.port}`], transport });
  try {
    const cpuBefore = cpuSeconds(server.proc.pid!);
    const done = await runLoad(direction, forward.localPorts[0]!, bytes);
    const cpu = (await untilCpuQuiet(server.proc.pid!)) - cpuBefore; // the server has finished the pair
    if (done.bytes !== bytes) throw new Error(`kubectl ${direction}: moved ${done.bytes} of ${bytes} bytes`);
    return { mbPerSecond: bytes / 1e6 / done.seconds, serverCpuPerGiB: cpu / (bytes / 2 ** 30) };
  } finally {
    await forward.stop();
    await api.close();
    await stop();
  }
}
