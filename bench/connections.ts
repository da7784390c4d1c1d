// The connections section (embedded mode, one server with one sandbox and an echo app):
// - connection rate through kubectl (plain SPDY): connections/s and the server's CPU per
//   connection (kubectl-echo.ts);
// - the same churn through our own SPDY client (runEchoLoad on one session), which takes
//   kubectl's cost and pace out of the figure; every connection must end by FIN with every
//   byte back, or this throws; once more on a server at the default --log-level info, for
//   what the audit trail (two lines per connection) costs;
// - 64-byte round-trip latency through kubectl, and the same loop straight against an echo
//   app on the host loopback in the same run, as the reference for a ratio.

import { startPodApp } from '../test/support/apps';
import type { CriTestClient } from '../test/support/cri-client';
import { FakeApiServer } from '../test/support/fake-apiserver';
import { portForwardUrls, runEchoLoad, type LoadSummary } from '../test/support/spdy-load';
import { ECHO_BYTES, roundTrips, type Latency } from './echo-client';
import {
  CONNECTIONS,
  CONNECTIONS_IN_FLIGHT,
  kubectlConnectionRate,
  kubectlLatency,
  ROUND_TRIPS,
  WARM_UP_CONNECTIONS,
  WARM_UP_ROUND_TRIPS,
  type ConnectionRate,
} from './kubectl-echo';
import { cpuOf } from './proc';
import { startBenchSandbox } from './sandbox';

export interface ConnectionsBench {
  viaKubectl: ConnectionRate;
  viaSpdyClient: ConnectionRate;
  /** The same at the default --log-level info: each connection writes its start and end lines. */
  viaSpdyClientAtInfo: ConnectionRate;
  latencyViaKubectl: Latency;
  /** The same round trips against an echo app on the host loopback, no forwarding. */
  latencyDirect: Latency;
}

function assertClean(summary: LoadSummary, expected: number): void {
  if (summary.clean !== expected) {
    throw new Error(`SPDY client: ${summary.clean} of ${expected} connections ended by FIN with every byte back: ${JSON.stringify(summary)}`);
  }
}

/** One session (one PortForward URL, a URL is redeemed once) carrying `connections`, 16 at a time. */
async function spdyChurn(cri: CriTestClient, sandboxId: string, port: number, connections: number): Promise<LoadSummary> {
  const urls = await portForwardUrls(cri, sandboxId, port, 1);
  return runEchoLoad(urls, port, connections, ECHO_BYTES, { inFlight: CONNECTIONS_IN_FLIGHT });
}

async function spdyClientRate(cri: CriTestClient, sandboxId: string, port: number, serverPid: number, warmUp = WARM_UP_CONNECTIONS): Promise<ConnectionRate> {
  assertClean(await spdyChurn(cri, sandboxId, port, warmUp), warmUp);
  // The session's upgrade and GOAWAY are inside the figure: one session for 2000 connections.
  const { result: summary, cpuSeconds } = await cpuOf([serverPid], () => spdyChurn(cri, sandboxId, port, CONNECTIONS));
  assertClean(summary, CONNECTIONS);
  const cpuMsPerConnection = (cpuSeconds * 1000) / CONNECTIONS;
  return { connectionsPerSecond: CONNECTIONS / summary.seconds, cpuMsPerConnection, eachCpuMsPerConnection: [cpuMsPerConnection] };
}

async function directLatency(): Promise<Latency> {
  const app = await startPodApp(null, 'echo');
  try {
    const [latency] = await roundTrips([app.port], ROUND_TRIPS, WARM_UP_ROUND_TRIPS);
    return latency!;
  } finally {
    await app.stop();
  }
}

export async function connectionsBench(): Promise<ConnectionsBench> {
  const { server, cri, sandboxId, app, stop } = await startBenchSandbox('echo');
  let api: FakeApiServer | undefined;
  let figures: Omit<ConnectionsBench, 'viaSpdyClientAtInfo'>;
  try {
    api = await FakeApiServer.start({ criAddress: server.criAddress, namespace: 'bench', refuseWebSocket: true });
    const target = { api, kubeconfigDir: server.dir, pod: sandboxId, port: app.port };
    const serverPid = server.proc.pid!;
    figures = {
      viaKubectl: await kubectlConnectionRate(target, [serverPid]),
      viaSpdyClient: await spdyClientRate(cri, sandboxId, app.port, serverPid),
      latencyViaKubectl: await kubectlLatency(target),
      latencyDirect: await directLatency(),
    };
  } finally {
    await api?.close();
    await stop();
  }
  const atInfo = await startBenchSandbox('echo', 'info');
  try {
    // A fresh server: warmed as long as the first one was before its SPDY-client figure.
    const warmUp = WARM_UP_CONNECTIONS * 2 + CONNECTIONS;
    return { ...figures, viaSpdyClientAtInfo: await spdyClientRate(atInfo.cri, atInfo.sandboxId, atInfo.app.port, atInfo.server.proc.pid!, warmUp) };
  } finally {
    await atInfo.stop();
  }
}
