// The processes of one server across upgrades in place (SIGUSR2): each new process inherits
// the first one's stdout, so the first ServerProcess's `logs` holds every line of the
// lineage, in order. What a test reads about them: pids, liveness, fds, memory, metrics
// summed over labels, and the TCP connections the streaming port holds.

import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import * as http from 'node:http';
import { basename } from 'node:path';
import type { ServerProcess } from './server-process';

type Logs = Pick<ServerProcess, 'logs'>;
type LogsAndStderr = Pick<ServerProcess, 'logs' | 'stderr'>;

/** The pids that printed a ready line, in order: the first process, then each upgrade's new one. */
export function readyPids(server: Logs): number[] {
  return server.logs.filter((l) => l.msg === 'ready').map((l) => Number(l.pid));
}

/** The pids of every new process an upgrade started (ready or not), in order. */
export function startedPids(server: Logs): number[] {
  return server.logs.filter((l) => l.msg === 'upgrade: starting the new process').map((l) => Number(l.pid));
}

/** Log lines whose msg is `msg` exactly, in order. */
export function linesOf(server: Logs, msg: string): Record<string, unknown>[] {
  return server.logs.filter((l) => l.msg === msg);
}

/** The lineage's upgrade story so far (its upgrade, ready, warn and error lines, the last `count`, and the end of stderr), for a timeout's message. */
export function upgradeStory(server: LogsAndStderr, count = 12): string {
  const lines = server.logs.filter((l) => /upgrade|ready|SIGUSR2|cannot start|stopped|shutting/.test(String(l.msg)) || l.level === 'warn' || l.level === 'error');
  const stderr = server.stderr().trim();
  return [...lines.slice(-count).map((l) => JSON.stringify(l)), ...(stderr ? [`stderr: ${stderr.slice(-2000)}`] : [])].join('\n');
}

/** Whether a process runs; a zombie (exited, not reaped yet by its new parent) counts as gone. */
export function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

export function pidFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/**
 * What a process's fds are, counted by kind: a file's path, `pipe`, `anon_inode:[eventpoll]`
 * and such, and sockets as `ss` sees them from this network namespace, with our end's
 * address (`tcp ESTAB 127.0.0.1:PORT`, `u_str ESTAB cri.sock`, `u_str ESTAB *`: a
 * client's end); a socket `ss` does not show here lives in another namespace (a pod
 * socket). For a message that explains a count.
 */
export function pidFdKinds(pid: number): Record<string, number> {
  const sockets = new Map<string, string>();
  // TCP and unix only: asking for every family makes ss print netlink errors for those
  // the kernel lacks.
  for (const line of execFileSync('ss', ['-Hanp', '-A', 'tcp,unix'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).split('\n')) {
    const [netid, state, , , local] = line.trim().split(/\s+/);
    for (const m of line.matchAll(/pid=(\d+),fd=(\d+)/g)) {
      // Our end's address: host:port, a socket file's name, or * (a client's end).
      if (Number(m[1]) === pid) sockets.set(m[2]!, `${netid} ${state} ${netid === 'tcp' ? local : basename(local ?? '')}`);
    }
  }
  const kinds: Record<string, number> = {};
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // closed meanwhile
    }
    const kind = target.startsWith('socket:') ? (sockets.get(fd) ?? 'socket in another netns') : target.replace(/^(\w+):\[\d+\]$/, '$1');
    kinds[kind] = (kinds[kind] ?? 0) + 1;
  }
  return kinds;
}

/** Resident memory (VmRSS) of a process, in bytes. */
export function pidRssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? NaN) * 1024;
}

/**
 * Every series of a metric on the server's /metrics, by its label set (`{protocol="spdy"}`,
 * or '' without labels): a counter's children, or `name_count` / `name_sum` of a
 * histogram. Exactly `name`: `x_total` does not match `x_total_foo`.
 */
export async function metricSeries(baseUrl: string, name: string): Promise<Map<string, number>> {
  const text = await getClosing(`${baseUrl}/metrics`);
  const series = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + ' ') && !line.startsWith(name + '{')) continue;
    const value = Number(line.split(' ').pop());
    series.set(line.slice(name.length, line.lastIndexOf(' ')), value);
  }
  return series;
}

/**
 * GET on a connection of its own, closed after the answer: fetch() would keep an idle
 * connection to the streaming port in its pool, and a test counting the server's
 * connections or fds would count it.
 */
function getClosing(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, headers: { connection: 'close' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`GET ${url}: ${res.statusCode} ${body}`))));
    });
    req.on('error', reject);
  });
}

/** A metric summed over its label sets; 0 when absent. */
export async function metricSum(baseUrl: string, name: string): Promise<number> {
  let sum = 0;
  for (const value of (await metricSeries(baseUrl, name)).values()) sum += value;
  return sum;
}

/** The client ends ("address:port") of the established TCP connections to 127.0.0.1:`port`, sorted. */
export function establishedTo(port: number): string[] {
  const out = execFileSync('ss', ['-Htn', 'state', 'established', `( dst 127.0.0.1:${port} )`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return out
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter((cols) => cols.length >= 4)
    .map((cols) => cols[2]!)
    .sort();
}
