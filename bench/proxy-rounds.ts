// One round of proxy mode's kubectl measurements for one side (containerd's own streaming
// server, or ours in front of it), and the medians over rounds. Each measurement runs a
// fresh kubectl (plain SPDY) against one of three apps in the same sandbox:
// - 256 MiB download (source app) and upload (sink app): MB/s and the server's CPU s/GiB;
// - the connection rate and CPU per connection (kubectl-echo.ts), 2000 connections a round
//   after 200 to warm up, against an app that answers 64 bytes and closes (reply-and-close,
//   a request/response server as HTTP/1.0 is). Against the echo app, which waits for the
//   client's FIN, containerd holds every connection 1 s (it never half-closes the pod side
//   and waits out its grace period): 16 connections/s at 16 in flight, a figure about
//   containerd's semantics, not its cost;
// - the 64-byte round-trip latency, p50 and p99 (kubectl-echo.ts), each side in its turn;
// - and the same with both sides at once, their round trips taken in turn (pairedLatency):
//   the p99 of one side's turn moves with whatever the machine did in those seconds (on
//   one day ours read 1.1-3.5 ms from round to round, containerd's 0.8-5.1 ms), while
//   interleaved round trip by round trip both sides meet the same moments.

import type { FakeApiServer } from '../test/support/fake-apiserver';
import { kubectlConnectionRate, kubectlLatency, kubectlLatencyPaired, throughKubectl, type KubectlTarget } from './kubectl-echo';
import { runLoad, type Direction } from './pod-side';
import { cpuOf, untilMachineQuiet } from './proc';
import { median } from './stats';

export const TRANSFER_BYTES = 256 * 2 ** 20;
const CONNECTIONS_PER_ROUND = 2000;
const WARM_UP_CONNECTIONS_PER_ROUND = 200;

/** What kubectl talks to, and whose CPU counts. */
export interface Side {
  api: FakeApiServer;
  kubeconfigDir: string;
  /** The streaming server's process: its CPU is a transfer's cost. */
  serverPid: number;
  /**
   * For ours, the containerd it asks for the sandbox (PodSandboxStatus upstream): its CPU
   * counts in the cost of a connection too.
   */
  upstreamPid?: number;
}

/** The pod side: one sandbox, three apps. */
export interface Pod {
  id: string;
  echoPort: number;
  /** reply-and-close:64, for the connection rate. */
  replyPort: number;
  /** Its process: its CPU per connection is part of the machine's load (outsideCpuMs). */
  replyPid: number;
  sinkPort: number;
  sourcePort: number;
}

export interface Figures {
  downloadMBps: number;
  downloadCpuPerGiB: number;
  uploadMBps: number;
  uploadCpuPerGiB: number;
  connectionsPerSecond: number;
  /** Server and upstream CPU per connection. */
  cpuMsPerConnection: number;
  /** The upstream's part of it (0 without an upstream). */
  upstreamCpuMsPerConnection: number;
  /** kubectl, the app, and the bench's client and relay, per connection (kubectl-echo.ts). */
  outsideCpuMsPerConnection: number;
  p50Us: number;
  p99Us: number;
  /** How long the machine took to go quiet before the latency loop (untilMachineQuiet). */
  quietWaitMs: number;
  /** The same, measured interleaved with the other side's (pairedLatency). */
  pairedP50Us: number;
  pairedP99Us: number;
}

type Measurement = (side: Side, pod: Pod) => Promise<Partial<Figures>>;

function target(side: Side, pod: string, port: number): KubectlTarget {
  return { api: side.api, kubeconfigDir: side.kubeconfigDir, pod, port };
}

async function transfer(side: Side, pod: Pod, direction: Direction): Promise<{ mbps: number; cpuPerGiB: number }> {
  const port = direction === 'download' ? pod.sourcePort : pod.sinkPort;
  return throughKubectl(target(side, pod.id, port), async (localPort) => {
    const { result: done, cpuSeconds } = await cpuOf([side.serverPid], () => runLoad(direction, localPort, TRANSFER_BYTES));
    if (done.bytes !== TRANSFER_BYTES) throw new Error(`${direction}: moved ${done.bytes} of ${TRANSFER_BYTES} bytes`);
    return { mbps: TRANSFER_BYTES / 1e6 / done.seconds, cpuPerGiB: cpuSeconds / (TRANSFER_BYTES / 2 ** 30) };
  });
}

/** Each runs for both sides in turn before the next starts, so both see the same moment of the machine. */
export const MEASUREMENTS: Measurement[] = [
  async (side, pod) => {
    const t = await transfer(side, pod, 'download');
    return { downloadMBps: t.mbps, downloadCpuPerGiB: t.cpuPerGiB };
  },
  async (side, pod) => {
    const t = await transfer(side, pod, 'upload');
    return { uploadMBps: t.mbps, uploadCpuPerGiB: t.cpuPerGiB };
  },
  async (side, pod) => {
    const pids = side.upstreamPid === undefined ? [side.serverPid] : [side.serverPid, side.upstreamPid];
    const r = await kubectlConnectionRate(target(side, pod.id, pod.replyPort), pids, {
      connections: CONNECTIONS_PER_ROUND,
      warmUp: WARM_UP_CONNECTIONS_PER_ROUND,
      appPid: pod.replyPid,
    });
    const outside = r.outsideCpuMsPerConnection!;
    return {
      connectionsPerSecond: r.connectionsPerSecond,
      cpuMsPerConnection: r.cpuMsPerConnection,
      upstreamCpuMsPerConnection: r.eachCpuMsPerConnection[1] ?? 0,
      outsideCpuMsPerConnection: outside.kubectl + outside.app + outside.client,
    };
  },
  async (side, pod) => {
    // Each side's loop on a machine that is done with the measurement before it. Without
    // this wait the side measured right after the other's churn paid for its aftermath: in
    // 45 rounds of nine runs ours read a median p99 of 2193 us after containerd's churn and
    // 800 after containerd's latency loop (containerd: 827 after our churn, 1093 after our
    // latency loop).
    const quietWaitMs = await untilMachineQuiet();
    const l = await kubectlLatency(target(side, pod.id, pod.echoPort));
    return { p50Us: l.p50Us, p99Us: l.p99Us, quietWaitMs };
  },
];

/**
 * The round-trip latency of both sides at once, interleaved (kubectlLatencyPaired); `first`
 * starts each pair of the first round trip, and the two swap every pair.
 */
export async function pairedLatency(first: Side, second: Side, pod: Pod): Promise<[Partial<Figures>, Partial<Figures>]> {
  const [a, b] = await kubectlLatencyPaired(target(first, pod.id, pod.echoPort), target(second, pod.id, pod.echoPort));
  return [
    { pairedP50Us: a.p50Us, pairedP99Us: a.p99Us },
    { pairedP50Us: b.p50Us, pairedP99Us: b.p99Us },
  ];
}

/** Each figure's median over the rounds (taken figure by figure). */
export function medians(rounds: Partial<Figures>[]): Figures {
  const of = (key: keyof Figures): number => median(rounds.map((r) => r[key]).filter((v): v is number => v !== undefined));
  return {
    downloadMBps: of('downloadMBps'),
    downloadCpuPerGiB: of('downloadCpuPerGiB'),
    uploadMBps: of('uploadMBps'),
    uploadCpuPerGiB: of('uploadCpuPerGiB'),
    connectionsPerSecond: of('connectionsPerSecond'),
    cpuMsPerConnection: of('cpuMsPerConnection'),
    upstreamCpuMsPerConnection: of('upstreamCpuMsPerConnection'),
    outsideCpuMsPerConnection: of('outsideCpuMsPerConnection'),
    p50Us: of('p50Us'),
    p99Us: of('p99Us'),
    quietWaitMs: of('quietWaitMs'),
    pairedP50Us: of('pairedP50Us'),
    pairedP99Us: of('pairedP99Us'),
  };
}
