// The load section of the bench, with the SPDY load client of the tests
// (test/support/spdy-load.ts) against the real server and an echo app in a sandbox:
//
// - 1000 forwarded connections at once, each echoing 1 MiB and half-closing, spread over
//   4 sessions (one session holds at most 1000 open streams, i.e. 500 pairs: the one-session
//   case is test/integration/load-spdy.test.ts), without and with two CPU burners. Each run
//   has a fresh server, so its VmHWM is that run's peak RSS;
// - a churn of 10 000 short connections (1 KiB echo each) over 4 sessions, 8 in flight per
//   session: connections per second, and the server's fds and RSS before and after.

import { setTimeout as sleep } from 'node:timers/promises';
import { withCpuBurners } from '../test/support/burners';
import { serverFds, serverFdsSettled, serverMemory } from '../test/support/server-process';
import { portForwardUrls, runEchoLoad, type LoadSummary } from '../test/support/spdy-load';
import { cpuSeconds } from './proc';
import { startBenchSandbox } from './sandbox';

const MiB = 1 << 20;
const CONNECTIONS = 1000;
const SESSIONS = 4;
/** The goal's "RSS within +32 MiB of the start 10 s after they end": the time is the measurement. */
const SETTLE_MS = 10_000;
const CHURN_CONNECTIONS = 10_000;
const CHURN_IN_FLIGHT_PER_SESSION = 8;

export interface ConcurrentLoad {
  summary: LoadSummary;
  rssStartBytes: number;
  peakRssBytes: number;
  /** RSS 10 s after the last connection ended. */
  rssAfterBytes: number;
}

export async function concurrentLoad(burners: number): Promise<ConcurrentLoad> {
  const { server, cri, sandboxId, app, stop } = await startBenchSandbox('echo');
  try {
    const rssStartBytes = serverMemory(server).rssBytes;
    const urls = await portForwardUrls(cri, sandboxId, app.port, SESSIONS);
    const summary = await withCpuBurners(burners, () => runEchoLoad(urls, app.port, CONNECTIONS, MiB));
    const { peakRssBytes } = serverMemory(server);
    await sleep(SETTLE_MS);
    return { summary, rssStartBytes, peakRssBytes, rssAfterBytes: serverMemory(server).rssBytes };
  } finally {
    await stop();
  }
}

export interface Churn {
  summary: LoadSummary;
  fdsBefore: number;
  fdsAfter: number;
  rssBeforeBytes: number;
  rssAfterBytes: number;
  /** Server CPU (user + system) over the churn, per connection. */
  serverCpuMsPerConnection: number;
}

export async function churn(): Promise<Churn> {
  const { server, cri, sandboxId, app, stop } = await startBenchSandbox('echo');
  try {
    const fdsBefore = serverFds(server);
    const rssBeforeBytes = serverMemory(server).rssBytes;
    const urls = await portForwardUrls(cri, sandboxId, app.port, SESSIONS);
    const cpuBefore = cpuSeconds(server.proc.pid!);
    const summary = await runEchoLoad(urls, app.port, CHURN_CONNECTIONS, 1024, { inFlight: CHURN_IN_FLIGHT_PER_SESSION });
    const fdsAfter = await serverFdsSettled(server, fdsBefore);
    const serverCpuMsPerConnection = ((cpuSeconds(server.proc.pid!) - cpuBefore) * 1000) / CHURN_CONNECTIONS;
    return { summary, fdsBefore, fdsAfter, rssBeforeBytes, rssAfterBytes: serverMemory(server).rssBytes, serverCpuMsPerConnection };
  } finally {
    await stop();
  }
}
