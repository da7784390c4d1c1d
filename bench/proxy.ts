// Proxy mode against containerd itself, in one run on one sandbox with four apps (echo,
// reply-and-close, sink, source): kubectl via containerd's own streaming server and via
// ours, ALTERNATING (each measurement runs for both sides before the next; who goes first
// swaps every round; medians of 5 rounds, these machines are noisy), after a first round
// that warms both sides up and is reported on its own. The measurements of a
// round are in proxy-rounds.ts: 256 MiB down and up (MB/s, server CPU s/GiB), the
// connection rate (2000 connections a round) and CPU per connection (ours counts the
// containerd CPU it causes), 64-byte round trips (each side in its turn, then both
// interleaved).
// Then the pass-through cost on ListPodSandbox.

import { startPodApp, type PodApp } from '../test/support/apps';
import { containerdPodConfig, removeAllSandboxes, startContainerd } from '../test/support/containerd';
import { sandboxNetns, type CriTestClient } from '../test/support/cri-client';
import { FakeApiServer } from '../test/support/fake-apiserver';
import { startProxy, stopProxy } from '../test/support/proxy';
import { serverMetric } from '../test/support/server-process';
import { medians, MEASUREMENTS, pairedLatency, TRANSFER_BYTES, type Figures, type Pod, type Side } from './proxy-rounds';
import { ECHO_BYTES } from './echo-client';
import { median } from './stats';

const ROUNDS = 5;
/**
 * A round of every measurement for both sides before the measured ones, left out of the
 * medians and reported on its own. A long-running server is warm, and a fresh Node process
 * is not: V8 compiles the data path while the first few thousand connections run (perf of
 * our server in the first kubectl churn of 2000: TurboFan's threads took a fifth of its CPU,
 * 770 of 3919 samples, against 170 of 3281 by the fourth; 161 compiles, then 64, 17, 5), and
 * the first round's 64-byte round trips pay for it in their tail (34 over 1 ms of 2000, then
 * 3-9). containerd (Go) has nothing to warm, so the first round measures our start-up cost,
 * and the medians what a node sees for the rest of the server's life.
 *
 * One round is not enough for that: each change of workload (transfers, then a churn of
 * connections, then round trips) throws away some of the code V8 optimized for the last
 * one ("wrong map" deopts in Node's stream code, then recompiles: 127 compiles in the first
 * churn, 36, 9, 4 in the next ones, though 78 again in a fifth), and our CPU per connection
 * kept falling through the first five rounds in both runs that showed each round (0.64,
 * 0.61, 0.57, 0.49, 0.46 ms, while containerd's held at 1.10-1.29). So three rounds warm
 * both sides up; the first is reported on its own.
 */
const WARM_UP_ROUNDS = 3;
const LIST_CALLS = 2000;

export interface ProxyBench {
  ours: Figures;
  containerd: Figures;
  listP50AddedMs: number;
  listRateRatio: number;
  /** Memory trims our server did during the rounds (each makes the next session compile its data path again). */
  ourTrims: number;
  /** The first warm-up round's figures (not in the medians): a fresh server. */
  firstRound: { ours: Partial<Figures>; containerd: Partial<Figures> };
  /**
   * The interleaved round trips' ratios ours / containerd, the median of each round's own:
   * a pair measured at the same moments is compared within its round (the medians of each
   * side taken apart may come from different rounds, and moments).
   */
  pairedRatios: { p50: number; p99: number };
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

/**
 * WARM_UP_ROUNDS, then ROUNDS rounds of every measurement, alternating the two sides: the
 * figures of each side per round (the warm-up rounds first).
 */
async function alternate(containerd: Side, ours: Side, pod: Pod, ourTrims: () => Promise<number>): Promise<{ containerd: Partial<Figures>[]; ours: Partial<Figures>[] }> {
  const runs = { containerd: [] as Partial<Figures>[], ours: [] as Partial<Figures>[] };
  let trimsBefore = await ourTrims();
  for (let round = 0; round < WARM_UP_ROUNDS + ROUNDS; round++) {
    const figures = { containerd: {} as Partial<Figures>, ours: {} as Partial<Figures> };
    const order = round % 2 === 0 ? (['containerd', 'ours'] as const) : (['ours', 'containerd'] as const);
    const side = (name: 'ours' | 'containerd'): Side => (name === 'ours' ? ours : containerd);
    for (const measure of MEASUREMENTS) {
      for (const name of order) Object.assign(figures[name], await measure(side(name), pod));
    }
    const paired = await pairedLatency(side(order[0]), side(order[1]), pod);
    Object.assign(figures[order[0]], paired[0]);
    Object.assign(figures[order[1]], paired[1]);
    runs.containerd.push(figures.containerd);
    runs.ours.push(figures.ours);
    // Each round's own figures, for the scatter behind the medians (stdout has the table).
    const line = (f: Partial<Figures>): string =>
      `${Math.round(f.connectionsPerSecond ?? 0)} conns/s, ${(f.cpuMsPerConnection ?? 0).toFixed(3)} ms/conn, p50 ${Math.round(f.p50Us ?? 0)} us, p99 ${Math.round(f.p99Us ?? 0)} us (after ${Math.round(f.quietWaitMs ?? 0)} ms for a quiet machine), ` +
      `paired p50 ${Math.round(f.pairedP50Us ?? 0)} us, p99 ${Math.round(f.pairedP99Us ?? 0)} us`;
    const name = round < WARM_UP_ROUNDS ? `warm-up round ${round}` : `round ${round - WARM_UP_ROUNDS}`;
    // A trim makes our next session compile its data path again (memory-trim.ts): its p99 shows it.
    const trims = await ourTrims();
    process.stderr.write(`proxy ${name}: ours ${line(figures.ours)}, memory trims ${trims - trimsBefore}; containerd ${line(figures.containerd)}\n`);
    trimsBefore = trims;
  }
  return runs;
}

export async function proxyBench(): Promise<ProxyBench> {
  const containerd = await startContainerd();
  const apps: PodApp[] = [];
  let proxied: Awaited<ReturnType<typeof startProxy>> | undefined;
  let apiOurs: FakeApiServer | undefined;
  let apiContainerd: FakeApiServer | undefined;
  try {
    proxied = await startProxy(containerd.address, ['--log-level', 'warn']);
    const { proxy: server, viaProxy, direct } = proxied;
    apiOurs = await FakeApiServer.start({ criAddress: server.criAddress, namespace: 'bench' });
    apiContainerd = await FakeApiServer.start({ criAddress: containerd.address, namespace: 'bench' });
    const id = (await viaProxy.call('RunPodSandbox', { config: containerdPodConfig(containerd, 'bench', 'bench') })).pod_sandbox_id;
    const netns = await sandboxNetns(direct, id);
    for (const mode of ['echo', `reply-and-close:${ECHO_BYTES}`, 'sink', `source:${TRANSFER_BYTES}`] as const) apps.push(await startPodApp(netns, mode));
    const pod: Pod = { id, echoPort: apps[0]!.port, replyPort: apps[1]!.port, replyPid: apps[1]!.proc.pid!, sinkPort: apps[2]!.port, sourcePort: apps[3]!.port };
    const runs = await alternate(
      { api: apiContainerd, kubeconfigDir: containerd.dir, serverPid: containerd.pid },
      { api: apiOurs, kubeconfigDir: server.dir, serverPid: server.proc.pid!, upstreamPid: containerd.pid },
      pod,
      () => serverMetric(server, 'cri_portforward_memory_trims_total'),
    );
    const ourTrims = await serverMetric(server, 'cri_portforward_memory_trims_total');
    const listDirect = await listLatencies(direct);
    const listProxy = await listLatencies(viaProxy);
    const measured = (name: 'ours' | 'containerd'): Partial<Figures>[] => runs[name].slice(WARM_UP_ROUNDS);
    const pairedRatio = (pick: (f: Partial<Figures>) => number | undefined): number =>
      median(measured('ours').map((f, round) => pick(f)! / pick(measured('containerd')[round]!)!));
    return {
      pairedRatios: { p50: pairedRatio((f) => f.pairedP50Us), p99: pairedRatio((f) => f.pairedP99Us) },
      ours: medians(runs.ours.slice(WARM_UP_ROUNDS)),
      containerd: medians(runs.containerd.slice(WARM_UP_ROUNDS)),
      firstRound: { ours: runs.ours[0]!, containerd: runs.containerd[0]! },
      listP50AddedMs: listProxy.p50 - listDirect.p50,
      listRateRatio: listProxy.rate / listDirect.rate,
      ourTrims,
    };
  } finally {
    for (const app of apps) await app.stop();
    await apiOurs?.close();
    await apiContainerd?.close();
    await removeAllSandboxes(containerd.address);
    await stopProxy(proxied);
    await containerd.stop();
  }
}
