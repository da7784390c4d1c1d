// Proxy mode against containerd itself, in one run on one sandbox and app: 256 MiB
// downloads through kubectl via containerd's own streaming server and via ours,
// alternating (fresh kubectl per round; medians, these machines are noisy), with each
// server's CPU per GiB from /proc/<pid>/stat; and the pass-through cost on ListPodSandbox.

import { startPodApp } from '../test/support/apps';
import { containerdPodConfig, removeAllSandboxes, startContainerd } from '../test/support/containerd';
import { sandboxNetns, type CriTestClient } from '../test/support/cri-client';
import { FakeApiServer } from '../test/support/fake-apiserver';
import { startPortForward } from '../test/support/kubectl';
import { startProxy, stopProxy } from '../test/support/proxy';
import { runLoad } from './pod-side';
import { cpuSeconds, untilCpuQuiet } from './proc';

const ROUNDS = 5;
const DOWNLOAD_BYTES = 256 * 2 ** 20;
const LIST_CALLS = 2000;

export interface ProxyBench {
  oursMBps: number;
  containerdMBps: number;
  oursCpuPerGiB: number;
  containerdCpuPerGiB: number;
  listP50AddedMs: number;
  listRateRatio: number;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function download(api: FakeApiServer, kubeconfigDir: string, pod: string, port: number, pid: number) {
  const forward = await startPortForward({ kubeconfig: api.kubeconfig(kubeconfigDir), pod, ports: [`0:${port}`] });
  try {
    const cpuBefore = cpuSeconds(pid);
    const done = await runLoad('download', forward.localPorts[0]!, DOWNLOAD_BYTES);
    const cpu = (await untilCpuQuiet(pid)) - cpuBefore; // the server has finished the forward
    if (done.bytes !== DOWNLOAD_BYTES) throw new Error(`moved ${done.bytes} of ${DOWNLOAD_BYTES}`);
    return { mbps: DOWNLOAD_BYTES / 1e6 / done.seconds, cpuPerGiB: cpu / (DOWNLOAD_BYTES / 2 ** 30) };
  } finally {
    await forward.stop();
  }
}

async function listLatencies(cri: CriTestClient): Promise<{ p50: number; rate: number }> {
  const times: number[] = [];
  for (let i = 0; i < 200; i++) await cri.call('ListPodSandbox', {}); // warm-up
  for (let i = 0; i < LIST_CALLS; i++) {
    const t = process.hrtime.bigint();
    await cri.call('ListPodSandbox', {});
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  let next = 0;
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next++ < LIST_CALLS) await cri.call('ListPodSandbox', {});
  }));
  return { p50: median(times), rate: LIST_CALLS / (Number(process.hrtime.bigint() - started) / 1e9) };
}

export async function proxyBench(): Promise<ProxyBench> {
  const containerd = await startContainerd();
  const proxied = await startProxy(containerd.address, ['--log-level', 'warn']);
  const { proxy: ours, viaProxy, direct } = proxied;
  const apiOurs = await FakeApiServer.start({ criAddress: ours.criAddress, namespace: 'bench' });
  const apiContainerd = await FakeApiServer.start({ criAddress: containerd.address, namespace: 'bench' });
  try {
    const id = (await viaProxy.call('RunPodSandbox', { config: containerdPodConfig(containerd, 'bench', 'bench') })).pod_sandbox_id;
    const netns = await sandboxNetns(direct, id);
    const app = await startPodApp(netns, `source:${DOWNLOAD_BYTES}`);
    const oursRuns = [];
    const containerdRuns = [];
    for (let round = 0; round < ROUNDS; round++) {
      containerdRuns.push(await download(apiContainerd, containerd.dir, id, app.port, containerd.pid));
      oursRuns.push(await download(apiOurs, ours.dir, id, app.port, ours.proc.pid!));
    }
    await app.stop();
    const listDirect = await listLatencies(direct);
    const listProxy = await listLatencies(viaProxy);
    return {
      oursMBps: median(oursRuns.map((r) => r.mbps)),
      containerdMBps: median(containerdRuns.map((r) => r.mbps)),
      oursCpuPerGiB: median(oursRuns.map((r) => r.cpuPerGiB)),
      containerdCpuPerGiB: median(containerdRuns.map((r) => r.cpuPerGiB)),
      listP50AddedMs: listProxy.p50 - listDirect.p50,
      listRateRatio: listProxy.rate / listDirect.rate,
    };
  } finally {
    await apiOurs.close();
    await apiContainerd.close();
    await removeAllSandboxes(containerd.address);
    await stopProxy(proxied);
    await containerd.stop();
  }
}
