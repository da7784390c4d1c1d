// 1 GiB down and up through kubectl port-forward (plain SPDY) and our server, relayed by
// FakeApiServer as kubelet would: MB/s, and the server process's CPU seconds per GiB
// (utime + stime from /proc/<pid>/stat, so kubectl's and the relay's CPU are not counted).

import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { FakeApiServer } from '../test/support/fake-apiserver';
import { startPortForward } from '../test/support/kubectl';
import type { Direction } from './pod-side';
import { cpuSeconds } from './proc';
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
    const load = spawn(process.execPath, [join(__dirname, 'load.js'), direction, String(forward.localPorts[0]), String(bytes)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: load.stdout! }).once('line', resolve);
      load.once('exit', (code) => reject(new Error(`load exited with ${code}`)));
    });
    const done = JSON.parse(line) as { bytes: number; seconds: number };
    await new Promise((r) => setTimeout(r, 200)); // let the server finish the pair
    const cpu = cpuSeconds(server.proc.pid!) - cpuBefore;
    if (done.bytes !== bytes) throw new Error(`kubectl ${direction}: moved ${done.bytes} of ${bytes} bytes`);
    return { mbPerSecond: bytes / 1e6 / done.seconds, serverCpuPerGiB: cpu / (bytes / 2 ** 30) };
  } finally {
    await forward.stop();
    await api.close();
    await stop();
  }
}
