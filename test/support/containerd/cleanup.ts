// Cleaning up after a private containerd, and checking that nothing is left: containers
// (runc on its private root), shims and their sockets, mounts (netns, rootfs, shm),
// cgroups, the CNI bridge and cache entries, and the dir itself.

import { execFile } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { mountsUnder } from '../mounts';
import { sha256 } from '../tcp-client';
import { until } from '../until';
import { CNI_CONFLIST } from './config';
import { lookPath } from './prerequisites';

const execFileP = promisify(execFile);
/** containerd (1.6, 1.7 and 2.1 alike) puts shim sockets here whatever its config says (hash of address/ns/id). */
const SHIM_SOCKET_DIR = '/run/containerd/s';
/** libcni's result cache: containerd (1.6 to 2.1) does not move it. */
const CNI_RESULTS_DIR = '/var/lib/cni/results';

function cmdline(pid: string): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

/** Pids of containerd-shim processes whose command line mentions `dir`. */
export function shimsOf(dir: string): { pid: number; id: string | undefined }[] {
  const found: { pid: number; id: string | undefined }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const argv = cmdline(entry);
    if (!argv.length || !/containerd-shim/.test(argv[0]!)) continue;
    if (!argv.some((a) => a.includes(dir))) continue;
    const i = argv.indexOf('-id');
    found.push({ pid: Number(entry), id: i >= 0 ? argv[i + 1] : undefined });
  }
  return found;
}

export function linkExists(name: string): boolean {
  return existsSync(`/sys/class/net/${name}`);
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function rmdirQuiet(path: string): void {
  try {
    rmdirSync(path);
  } catch {
    // not there, not empty, or busy
  }
}

/** Sandbox (and container) ids this containerd knows of, from its dirs. */
function taskIds(dir: string): string[] {
  const ids = new Set<string>();
  for (const d of [
    join(dir, 'state', 'io.containerd.runtime.v2.task', 'k8s.io'),
    join(dir, 'root', 'io.containerd.grpc.v1.cri', 'sandboxes'),
    join(dir, 'root', 'io.containerd.grpc.v1.cri', 'containers'),
    join(dir, 'runc', 'k8s.io'),
  ]) {
    try {
      for (const id of readdirSync(d)) if (/^[0-9a-f]{64}$/.test(id)) ids.add(id);
    } catch {
      // no such dir
    }
  }
  return [...ids];
}

/**
 * Whatever a stopped private containerd left behind under (or because of) `dir`:
 * containers (runc on its private root), shims and their sockets, mounts (netns, rootfs,
 * shm), cgroups, the CNI bridge and cache entries, and the dir itself. Best effort; returns
 * what it could not clean. stop() runs it; it also cleans up after a crashed test run.
 */
export async function cleanUpContainerdDir(dir: string): Promise<string[]> {
  const problems: string[] = [];
  const socket = join(dir, 'containerd.sock');
  let bridge: string | undefined;
  let network: string | undefined;
  try {
    const conf = JSON.parse(readFileSync(join(dir, CNI_CONFLIST), 'utf8')) as { name: string; plugins: { bridge?: string }[] };
    network = conf.name;
    bridge = conf.plugins[0]?.bridge;
  } catch {
    // no CNI config (yet)
  }
  const ids = taskIds(dir);
  const runc = lookPath('runc');
  const runcRoot = join(dir, 'runc', 'k8s.io');
  if (runc && existsSync(runcRoot)) {
    let listed: string[] = [];
    try {
      listed = (await execFileP(runc, ['--root', runcRoot, 'list', '-q'])).stdout.split('\n').filter(Boolean);
    } catch (err) {
      problems.push(`runc list: ${(err as Error).message}`);
    }
    for (const id of listed) {
      await execFileP(runc, ['--root', runcRoot, 'delete', '--force', id]).catch((err: Error) =>
        problems.push(`runc delete ${id}: ${err.message}`),
      );
    }
  }

  const shims = shimsOf(dir);
  for (const { pid } of shims) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  await until('the killed shims to exit', () => !shims.some((s) => pidAlive(s.pid)), { timeoutMs: 5_000, intervalMs: 50 }).catch(
    () => undefined, // reported just below, shim by shim
  );
  for (const s of shims) if (pidAlive(s.pid)) problems.push(`shim ${s.pid} survived SIGKILL`);
  // A shim removes its socket when it exits, a SIGKILLed one cannot: containerd (1.6, 1.7
  // and 2.1 alike) names it sha256(<grpc address>/<namespace>/<id>) in /run/containerd/s
  // whatever the config says.
  for (const id of new Set([...ids, ...shims.flatMap((s) => (s.id ? [s.id] : []))])) {
    rmSync(join(SHIM_SOCKET_DIR, sha256(Buffer.from(join(socket, 'k8s.io', id)))), { force: true });
  }
  rmdirQuiet(SHIM_SOCKET_DIR);
  rmdirQuiet('/run/containerd');

  const umount = lookPath('umount') ?? 'umount';
  for (let pass = 0; pass < 3; pass++) {
    const mounts = mountsUnder(dir);
    if (!mounts.length) break;
    for (const m of mounts) {
      try {
        await execFileP(umount, [m]);
      } catch {
        await execFileP(umount, ['-l', m]).catch(() => undefined);
      }
    }
  }
  for (const m of mountsUnder(dir)) problems.push(`still mounted: ${m}`);

  // runc removes a container's cgroups on delete; a killed one may leave them (v1 and v2).
  for (const root of cgroupRoots()) {
    for (const id of ids) rmdirQuiet(join(root, 'k8s.io', id));
    rmdirQuiet(join(root, 'k8s.io')); // only if empty: another containerd may use it
  }

  if (bridge && linkExists(bridge)) {
    await execFileP(lookPath('ip') ?? 'ip', ['link', 'del', bridge]).catch((err: Error) =>
      problems.push(`ip link del ${bridge}: ${err.message}`),
    );
  }

  // libcni's result cache lives in /var/lib/cni whatever the config says; a CNI DEL empties
  // it, but a killed sandbox never gets one. Files: <network>-<id>-<ifname>.
  for (const f of readdirSafe(CNI_RESULTS_DIR)) {
    if ((network && f.startsWith(`${network}-`)) || ids.some((id) => f.includes(`-${id}-`))) {
      rmSync(join(CNI_RESULTS_DIR, f), { force: true });
    }
  }

  // A just-unmounted dir can be busy for a moment.
  await until(`rm -rf ${dir}`, () => (rmSync(dir, { recursive: true, force: true }), true), { timeoutMs: 1_000, intervalMs: 100 }).catch(
    (err: Error) => problems.push(err.message),
  );
  return problems;
}

/** The cgroup roots: v2's, and each v1 controller's. */
function cgroupRoots(): string[] {
  return ['/sys/fs/cgroup', ...readdirSafe('/sys/fs/cgroup').map((c) => join('/sys/fs/cgroup', c))];
}

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** What a stopped harness must not have left: shims, mounts, the bridge, the dir, CNI cache. */
export function leftoversOf(c: { dir: string; bridge: string }, sandboxIds: string[] = []): string[] {
  const found: string[] = [];
  for (const s of shimsOf(c.dir)) found.push(`shim ${s.pid} (${s.id ?? '?'})`);
  for (const m of mountsUnder(c.dir)) found.push(`mount ${m}`);
  if (linkExists(c.bridge)) found.push(`bridge ${c.bridge}`);
  if (existsSync(c.dir)) found.push(`dir ${c.dir}`);
  for (const f of readdirSafe(CNI_RESULTS_DIR)) {
    if (f.startsWith(`${c.bridge}-`) || sandboxIds.some((id) => f.includes(`-${id}-`))) found.push(`CNI cache ${f}`);
  }
  for (const id of sandboxIds) {
    for (const root of cgroupRoots()) {
      if (existsSync(join(root, 'k8s.io', id))) found.push(`cgroup ${join(root, 'k8s.io', id)}`);
    }
  }
  return found;
}
