// The upgrade section of the bench: 1000 SPDY sessions (the load client of the tests) on
// one server, upgraded twice with SIGUSR2: first idle (an echo done on each), then with 200
// of them echoing 4 MiB. Measured per upgrade: sessions moved and the pause each saw (the
// new process's cri_portforward_handover_pause_seconds: mean, and the bucket that holds the
// slowest; goal < 100 ms at 1000 sessions); then every echo in flight intact, every session
// answering a new connection (new header blocks on the twice handed-over zlib context), and
// the last process's fds against the first one's.

import { until } from '../test/support/until';
import { serverFds } from '../test/support/server-process';
import { portForwardUrls, SpdyLoadSession, type ConnectionResult } from '../test/support/spdy-load';
import { startBenchSandbox } from './sandbox';

const SESSIONS = 1000;
const BUSY_SESSIONS = 200;
const BUSY_BYTES = 4 << 20;

export interface PauseFigures {
  moved: number;
  meanPauseMs: number;
  /** Upper bound of the histogram bucket holding the slowest session's pause. */
  maxPauseBucketMs: number;
}

export interface UpgradeBench {
  sessions: number;
  /** Every session idle (an echo done on each before): the goal's case. */
  idle: PauseFigures;
  /** The next upgrade, with BUSY_SESSIONS of them echoing BUSY_BYTES: busy sessions drain first. */
  busy: PauseFigures;
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

const PAUSE = 'cri_portforward_handover_pause_seconds';

/** The pause histogram of the process behind `baseUrl` (the last upgrade's new process). */
async function pauses(baseUrl: string): Promise<PauseFigures> {
  const raw = samples(await (await fetch(`${baseUrl}/metrics`)).text(), PAUSE);
  const get = (name: string): number => raw.get(name) ?? 0;
  const count = get(`${PAUSE}_count`);
  const sum = get(`${PAUSE}_sum`);
  let maxPauseBucketMs = Infinity;
  for (const name of raw.keys()) {
    const le = /_bucket\{le="([^"]+)"\}/.exec(name)?.[1];
    if (le !== undefined && le !== '+Inf' && get(name) === count) maxPauseBucketMs = Math.min(maxPauseBucketMs, Number(le) * 1000);
  }
  return { moved: count, meanPauseMs: count > 0 ? (sum / count) * 1000 : NaN, maxPauseBucketMs };
}

export async function upgradeBench(): Promise<UpgradeBench> {
  const { server, cri, sandboxId, app, stop } = await startBenchSandbox('echo');
  const readyPids = (): number[] => server.logs.filter((l) => l.msg === 'ready').map((l) => Number(l.pid));
  const gone = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return false;
    } catch {
      return true;
    }
  };
  const upgrade = async (): Promise<number> => {
    const pids = readyPids();
    const current = pids[pids.length - 1]!;
    process.kill(current, 'SIGUSR2');
    await until('the new process ready', () => readyPids().length === pids.length + 1, { timeoutMs: 30_000 });
    await until('the old process gone', () => gone(current), { timeoutMs: 30_000 });
    return readyPids()[pids.length]!;
  };
  let newPid = 0;
  try {
    const urls = await portForwardUrls(cri, sandboxId, app.port, SESSIONS);
    const sessions: SpdyLoadSession[] = [];
    for (const url of urls) sessions.push(await SpdyLoadSession.open(url));
    await Promise.all(sessions.map((s) => s.echo(app.port, 64)));
    const fdsBefore = serverFds(server);
    newPid = await upgrade();
    const idle = await pauses(server.streamBaseUrl);
    const busy: Promise<ConnectionResult>[] = sessions.slice(0, BUSY_SESSIONS).map((s) => s.echo(app.port, BUSY_BYTES));
    newPid = await upgrade();
    // A new process: its pause histogram is its own (counters carry over, histograms do not).
    const busyPauses = await pauses(server.streamBaseUrl);
    const results = await Promise.all(busy);
    const echoesIntact = results.filter((r) => r.end === 'fin' && r.matches && r.echoed === BUSY_BYTES).length;
    const after = await Promise.all(sessions.map((s) => s.echo(app.port, 64)));
    const answeringAfter = after.filter((r) => r.end === 'fin' && r.matches && r.echoed === 64).length;
    const fdsAfter = serverFds({ proc: { pid: newPid } } as Parameters<typeof serverFds>[0]);
    await Promise.all(sessions.map((s) => s.close()));
    return { sessions: SESSIONS, idle, busy: busyPauses, echoesIntact, answeringAfter, fdsBefore, fdsAfter };
  } finally {
    // The sandbox is removed through the CRI socket, the last new process's by now; then it stops.
    await stop();
    if (newPid !== 0) {
      try {
        process.kill(newPid, 'SIGTERM');
      } catch {
        // already gone
      }
      await until('the new process to stop', () => gone(newPid), { timeoutMs: 10_000 });
    }
  }
}
