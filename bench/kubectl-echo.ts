// The connection benchmarks through `kubectl port-forward` (plain SPDY, a fresh kubectl per
// measurement), for the embedded section (connections.ts) and proxy mode (proxy.ts):
// - connection rate: 2000 connections, 16 at a time, 64-byte echo each, after 200 to warm
//   up; connections/s and the CPU the given server processes spend per connection;
// - round-trip latency: 2000 sequential 64-byte round trips on one connection after 200.

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
export async function throughKubectl<T>(target: KubectlTarget, use: (localPort: number) => Promise<T>): Promise<T> {
  const forward = await startPortForward({ kubeconfig: target.api.kubeconfig(target.kubeconfigDir), pod: target.pod, ports: [`0:${target.port}`] });
  try {
    return await use(forward.localPorts[0]!);
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
}

/**
 * Connection rate through kubectl to an echo app; `cpuPids` are the processes whose CPU
 * counts. `connections` and `warmUp` default to 2000 and 200.
 */
export function kubectlConnectionRate(
  target: KubectlTarget,
  cpuPids: number[],
  { connections = CONNECTIONS, warmUp = WARM_UP_CONNECTIONS } = {},
): Promise<ConnectionRate> {
  return throughKubectl(target, async (port) => {
    await echoChurn(port, warmUp, CONNECTIONS_IN_FLIGHT);
    const { result: seconds, cpuSeconds, eachCpuSeconds } = await cpuOf(cpuPids, () => echoChurn(port, connections, CONNECTIONS_IN_FLIGHT));
    const msEach = (s: number): number => (s * 1000) / connections;
    return { connectionsPerSecond: connections / seconds, cpuMsPerConnection: msEach(cpuSeconds), eachCpuMsPerConnection: eachCpuSeconds.map(msEach) };
  });
}

/** Round-trip latency through kubectl to an echo app. */
export function kubectlLatency(target: KubectlTarget): Promise<Latency> {
  return throughKubectl(target, (port) => roundTrips(port, ROUND_TRIPS, WARM_UP_ROUND_TRIPS));
}
