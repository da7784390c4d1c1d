// The upgrade section of the bench: 1000 SPDY sessions (the load client of the tests) on
// one server, 200 of them echoing 4 MiB while the server gets SIGUSR2. Measured: how many
// sessions moved, the pause each saw (the new process's cri_portforward_handover_pause_seconds:
// mean, and the bucket that holds the slowest; goal < 100 ms), every echo in flight intact,
// every session answering a new connection afterwards (new header blocks on the handed-over
// zlib context), and the new process's fds against the old one's before.

import { until } from '../test/support/until';
import { serverFds } from '../test/support/server-process';
import { portForwardUrls, SpdyLoadSession, type ConnectionResult } from '../test/support/spdy-load';
import { startBenchSandbox } from './sandbox';

const SESSIONS = 1000;
const BUSY_SESSIONS = 200;
const BUSY_BYTES = 4 << 20;

export interface UpgradeBench {
  sessions: number;
  moved: number;
  meanPauseMs: number;
  /** Upper bound of the histogram bucket holding the slowest session's pause. */
  maxPauseBucketMs: number;
  echoesIntact: number;
  answeringAfter: number;
  fdsBefore: number;
  fdsAfter: number;
}

/** A metrics family's samples from a Prometheus text page: name{labels} -> value. */
function samples(text: string, family: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith(family)) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

export async function upgradeBench(): Promise<UpgradeBench> {
  const { server, cri, sandboxId, app, stop } = await startBenchSandbox('echo');
  const readyPids = (): number[] => server.logs.filter((l) => l.msg === 'ready').map((l) => Number(l.pid));
  let newPid = 0;
  try {
    const urls = await portForwardUrls(cri, sandboxId, app.port, SESSIONS);
    const sessions: SpdyLoadSession[] = [];
    for (const url of urls) sessions.push(await SpdyLoadSession.open(url));
    const busy: Promise<ConnectionResult>[] = sessions.slice(0, BUSY_SESSIONS).map((s) => s.echo(app.port, BUSY_BYTES));
    const fdsBefore = serverFds(server);
    process.kill(server.proc.pid!, 'SIGUSR2');
    await until('the new process ready', () => readyPids().length === 2, { timeoutMs: 30_000 });
    newPid = readyPids()[1]!;
    await server.exited;
    const results = await Promise.all(busy);
    const echoesIntact = results.filter((r) => r.end === 'fin' && r.matches && r.echoed === BUSY_BYTES).length;
    const after = await Promise.all(sessions.map((s) => s.echo(app.port, 64)));
    const answeringAfter = after.filter((r) => r.end === 'fin' && r.matches && r.echoed === 64).length;
    const fdsAfter = serverFds({ proc: { pid: newPid } } as Parameters<typeof serverFds>[0]);
    const page = await (await fetch(`${server.streamBaseUrl}/metrics`)).text();
    const pause = samples(page, 'cri_portforward_handover_pause_seconds');
    const count = pause.get('cri_portforward_handover_pause_seconds_count') ?? 0;
    const sum = pause.get('cri_portforward_handover_pause_seconds_sum') ?? 0;
    let maxPauseBucketMs = Infinity;
    for (const [name, value] of pause) {
      const le = /_bucket\{le="([^"]+)"\}/.exec(name)?.[1];
      if (le !== undefined && le !== '+Inf' && value === count) maxPauseBucketMs = Math.min(maxPauseBucketMs, Number(le) * 1000);
    }
    await Promise.all(sessions.map((s) => s.close()));
    return { sessions: SESSIONS, moved: count, meanPauseMs: count > 0 ? (sum / count) * 1000 : NaN, maxPauseBucketMs, echoesIntact, answeringAfter, fdsBefore, fdsAfter };
  } finally {
    // The sandbox is removed through the CRI socket, the new process's by now; then it stops.
    await stop();
    if (newPid !== 0) {
      try {
        process.kill(newPid, 'SIGTERM');
      } catch {
        // already gone
      }
      await until('the new process to stop', () => {
        try {
          process.kill(newPid, 0);
          return false;
        } catch {
          return true;
        }
      }, { timeoutMs: 10_000 });
    }
  }
}
