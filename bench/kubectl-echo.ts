// The connection benchmarks through `kubectl port-forward` (plain SPDY, a fresh kubectl per
// measurement), for the embedded section (connections.ts) and proxy mode (proxy.ts):
// - connection rate: 2000 connections, 16 at a time, 64-byte echo each, after 200 to warm
//   up; connections/s and the CPU the given server processes spend per connection;
// - round-trip latency: 2000 sequential 64-byte round trips on one connection after 200;
//   or on two at once, through two kubectls, in turn (kubectlLatencyPaired).

import type { FakeApiServer } from '../test/support/fake-apiserver';
import { startPortForward } from '../test/support/kubectl';
import { echoChurn, roundTrips, type Latency } from './echo-client';
import { cpuOf } from './proc';

export const CONNECTIONS = 2000;
export const CONNECTIONS_IN_FLIGHT = 16;
export const WARM_UP_CONNECTIONS = 200;
export const ROUND_TRIPS = 2000;
export const WARM_UP_ROUND_TRIPS = 200;

/** A pod port as kubectl reaches it: through this apiserver, which relays to one CRI. */
export interface KubectlTarget {
  api: FakeApiServer;
  /** Where the kubeconfig (and kubectl's cache) go. */
  kubeconfigDir: string;
  pod: string;
  port: number;
}

/** Run `use` against a fresh kubectl's local port for the target; kubectl is stopped after. */
export async function throughKubectl<T>(target: KubectlTarget, use: (localPort: number, kubectlPid: number) => Promise<T>): Promise<T> {
  const forward = await startPortForward({ kubeconfig: target.api.kubeconfig(target.kubeconfigDir), pod: target.pod, ports: [`0:${target.port}`] });
  try {
    return await use(forward.localPorts[0]!, forward.proc.pid!);
  } finally {
    await forward.stop();
  }
}

export interface ConnectionRate {
  connectionsPerSecond: number;
  /** CPU of the server processes (`cpuPids`) per connection, in ms. */
  cpuMsPerConnection: number;
  /** The same, each process's share, in the order of `cpuPids`. */
  eachCpuMsPerConnection: number[];
  /**
   * CPU per connection of everything else on the path, which shares the machine's cores
   * with the server: kubectl, the app (`appPid`, when given), and this process (the TCP
   * client and the apiserver's relay). With the cores busy, the rate is bounded by the
   * sum; see run.ts. Only through kubectl.
   */
  outsideCpuMsPerConnection?: { kubectl: number; app: number; client: number };
}

/**
 * Connection rate through kubectl to an echo app; `cpuPids` are the processes whose CPU
 * counts. `connections` and `warmUp` default to 2000 and 200.
 */
export function kubectlConnectionRate(
  target: KubectlTarget,
  cpuPids: number[],
  { connections = CONNECTIONS, warmUp = WARM_UP_CONNECTIONS, appPid = undefined as number | undefined } = {},
): Promise<ConnectionRate> {
  return throughKubectl(target, async (port, kubectlPid) => {
    await echoChurn(port, warmUp, CONNECTIONS_IN_FLIGHT);
    const outsidePids = appPid === undefined ? [kubectlPid] : [kubectlPid, appPid];
    let clientMicros = 0;
    const { result: seconds, eachCpuSeconds } = await cpuOf([...cpuPids, ...outsidePids], async () => {
      const before = process.cpuUsage();
      const s = await echoChurn(port, connections, CONNECTIONS_IN_FLIGHT);
      const used = process.cpuUsage(before);
      clientMicros = used.user + used.system;
      return s;
    });
    const msEach = (s: number): number => (s * 1000) / connections;
    const servers = eachCpuSeconds.slice(0, cpuPids.length);
    return {
      connectionsPerSecond: connections / seconds,
      cpuMsPerConnection: msEach(servers.reduce((a, b) => a + b, 0)),
      eachCpuMsPerConnection: servers.map(msEach),
      outsideCpuMsPerConnection: {
        kubectl: msEach(eachCpuSeconds[cpuPids.length]!),
        app: appPid === undefined ? 0 : msEach(eachCpuSeconds[cpuPids.length + 1]!),
        client: msEach(clientMicros / 1e6),
      },
    };
  });
}

/** Round-trip latency through kubectl to an echo app. */
export function kubectlLatency(target: KubectlTarget): Promise<Latency> {
  return throughKubectl(target, async (port) => (await roundTrips([port], ROUND_TRIPS, WARM_UP_ROUND_TRIPS))[0]!);
}

/**
 * The same through two kubectls at once (two servers, one app), their round trips taken
 * in turn: both servers measured at the same moments of the machine. Each one's latency.
 */
export function kubectlLatencyPaired(a: KubectlTarget, b: KubectlTarget): Promise<[Latency, Latency]> {
  return throughKubectl(a, (portA) =>
    throughKubectl(b, async (portB) => {
      const [latencyA, latencyB] = await roundTrips([portA, portB], ROUND_TRIPS, WARM_UP_ROUND_TRIPS);
      return [latencyA!, latencyB!];
    }),
  );
}
