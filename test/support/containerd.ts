// A private containerd 1.6 (Debian's `containerd` package) with its CRI plugin, for
// integration tests: everything it owns (root, state, sockets, runc root, CNI config and
// IPAM data, netns mounts, log) lives under one temp dir, its CNI bridge has a name of
// its own, and its sandbox image is a static pause binary we build and import (no
// registry). Shims outlive containerd: call removeAllSandboxes() before stop(); stop()
// then kills and unmounts whatever is still left and removes the dir.
//
// Needs root and the packages containerd, runc, containernetworking-plugins, gcc and
// libc6-dev (gcc -static), iproute2 and mount. It never installs anything itself.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  rmdirSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import { RuntimeServiceClient } from '../../src/cri-api';
import { criClient } from './cri-client';

const execFileP = promisify(execFile);
const REQUIRE = process.env.CRI_PORTFORWARD_REQUIRE_ROOT === '1';

export const SANDBOX_IMAGE = 'localhost/cripf-pause:1';
/** Where Debian's containernetworking-plugins puts the CNI plugins. */
export const CNI_BIN_DIR = '/usr/lib/cni';
/** The pods' subnet. The bridge has no address and no route, so it clashes with nothing. */
export const POD_SUBNET = '10.88.77.0/24';
const READY_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 5_000;
/** Prepended to containerd's PATH: its shims look runc up there, and /usr/sbin matters. */
const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** containerd 1.6 puts shim sockets here whatever its config says (hash of address/ns/id). */
const SHIM_SOCKET_DIR = '/run/containerd/s';
/** libcni's result cache: containerd 1.6 does not move it. */
const CNI_RESULTS_DIR = '/var/lib/cni/results';
const CNI_CONFLIST = 'cni/net.d/10-cripf.conflist';

export interface PrivateContainerd {
  /** The temp dir that holds everything of this containerd. */
  dir: string;
  /** Absolute path of its gRPC socket. */
  socket: string;
  /** `unix://` + socket, for gRPC clients. */
  address: string;
  /** Pid of the current containerd process (changes on restart). */
  pid: number;
  /** The pause image its CRI runs sandboxes from. */
  sandboxImage: string;
  /** The CNI bridge its pods attach to. */
  bridge: string;
  /** containerd's stdout and stderr. */
  logFile: string;
  /** Stop containerd, then kill/unmount/delete what is left of it and remove `dir`. */
  stop(): Promise<void>;
  /** Stop containerd only (shims live on) and start it again on the same dirs. */
  restart(): Promise<void>;
}

/** `false` when root, else the reason to skip (or a thrown error under CI). */
export function containerdSkipReason(): string | false {
  if (process.getuid?.() === 0) return false;
  const reason = 'needs root: runs a private containerd with its CRI plugin, runc and CNI (run as root, as CI does)';
  if (REQUIRE) throw new Error(`CRI_PORTFORWARD_REQUIRE_ROOT=1 but ${reason}`);
  return reason;
}

// ---------------------------------------------------------------------------------------
// Prerequisites

function lookPath(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), ...SYSTEM_PATH.split(':')];
  for (const d of dirs) {
    if (!d) continue;
    const p = join(d, name);
    try {
      if (statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

function need(name: string, pkg: string): string {
  const p = lookPath(name);
  if (!p) throw new Error(`containerd harness: '${name}' not found (install the Debian package '${pkg}')`);
  return p;
}

interface Tools {
  containerd: string;
  ctr: string;
  runc: string;
  ip: string;
  umount: string;
}

function checkPrerequisites(): Tools {
  const tools: Tools = {
    containerd: need('containerd', 'containerd'),
    ctr: need('ctr', 'containerd'),
    runc: need('runc', 'runc'),
    ip: need('ip', 'iproute2'),
    umount: need('umount', 'mount'),
  };
  need('containerd-shim-runc-v2', 'containerd');
  for (const plugin of ['bridge', 'host-local', 'loopback']) {
    if (!existsSync(join(CNI_BIN_DIR, plugin))) {
      throw new Error(
        `containerd harness: CNI plugin ${join(CNI_BIN_DIR, plugin)} not found (install the Debian package 'containernetworking-plugins')`,
      );
    }
  }
  return tools;
}

// ---------------------------------------------------------------------------------------
// The pause image: a static C binary in an OCI image tar, built once per machine (cached
// under os.tmpdir(), rebuilt when missing).

const PAUSE_C = `#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }
static void on_chld(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, 0);
  sigaction(SIGINT, &sa, 0);
  sa.sa_handler = on_chld;
  sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  sigaction(SIGCHLD, &sa, 0);
  for (;;) pause();
  return 0;
}
`;

const OCI_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x' };

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** One ustar entry (header + data padded to 512). Names must fit in 100 bytes. */
function tarEntry(name: string, data: Buffer | null, mode: number): Buffer {
  const header = Buffer.alloc(512);
  const isDir = data === null;
  if (Buffer.byteLength(name) > 99) throw new Error(`tar name too long: ${name}`);
  const octal = (v: number, len: number) => v.toString(8).padStart(len - 1, '0') + '\0';
  header.write(name, 0, 100, 'utf8');
  header.write(octal(mode, 8), 100, 8, 'ascii');
  header.write(octal(0, 8), 108, 8, 'ascii'); // uid
  header.write(octal(0, 8), 116, 8, 'ascii'); // gid
  header.write(octal(isDir ? 0 : data.length, 12), 124, 12, 'ascii');
  header.write(octal(0, 12), 136, 12, 'ascii'); // mtime
  header.write('        ', 148, 8, 'ascii'); // checksum placeholder
  header.write(isDir ? '5' : '0', 156, 1, 'ascii');
  header.write('ustar\0', 257, 6, 'ascii');
  header.write('00', 263, 2, 'ascii');
  header.write('root', 265, 32, 'ascii');
  header.write('root', 297, 32, 'ascii');
  let sum = 0;
  for (const b of header) sum += b;
  header.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'ascii');
  if (isDir) return header;
  const pad = Buffer.alloc((512 - (data.length % 512)) % 512);
  return Buffer.concat([header, data, pad]);
}

function tar(entries: Buffer[]): Buffer {
  return Buffer.concat([...entries, Buffer.alloc(1024)]);
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}

/**
 * The OCI image tar of the pause image (oci-layout, index.json, blobs/sha256/...), built
 * with `gcc -static` once and cached under os.tmpdir(); rebuilt when the file is missing.
 */
export async function pauseImageTar(): Promise<string> {
  const arch = OCI_ARCH[process.arch] ?? process.arch;
  const key = sha256(Buffer.from(`cripf-pause v1\n${arch}\n${SANDBOX_IMAGE}\n${PAUSE_C}`)).slice(0, 16);
  const path = join(tmpdir(), `cripf-pause-image-${key}.tar`);
  try {
    if (statSync(path).size > 1024) return path;
  } catch {
    // not built yet
  }
  const gcc = lookPath('gcc');
  if (!gcc) throw new Error(`containerd harness: 'gcc' not found (install the Debian packages 'gcc' and 'libc6-dev')`);
  const work = mkdtempSync(join(tmpdir(), 'cripf-pause-build-'));
  try {
    const src = join(work, 'pause.c');
    const bin = join(work, 'pause');
    writeFileSync(src, PAUSE_C);
    try {
      await execFileP(gcc, ['-static', '-Os', '-s', '-o', bin, src]);
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new Error(
        `containerd harness: gcc -static failed (install the Debian package 'libc6-dev'): ${e.stderr || e.message}`,
      );
    }
    const layer = tar([tarEntry('pause', readFileSync(bin), 0o755)]);
    const layerGz = gzipSync(layer, { level: 9 });
    const config = json({
      created: '1970-01-01T00:00:00Z',
      architecture: arch,
      os: 'linux',
      config: { Entrypoint: ['/pause'], Env: ['PATH=/'], WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: [`sha256:${sha256(layer)}`] },
      history: [{ created: '1970-01-01T00:00:00Z', created_by: 'cri-portforward test harness: gcc -static pause.c' }],
    });
    const manifest = json({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha256(config)}`, size: config.length },
      layers: [
        { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${sha256(layerGz)}`, size: layerGz.length },
      ],
    });
    const tag = SANDBOX_IMAGE.slice(SANDBOX_IMAGE.lastIndexOf(':') + 1);
    const index = json({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: `sha256:${sha256(manifest)}`,
          size: manifest.length,
          platform: { architecture: arch, os: 'linux' },
          // As `ctr images export` writes them: the full name for containerd, the tag for OCI.
          annotations: { 'io.containerd.image.name': SANDBOX_IMAGE, 'org.opencontainers.image.ref.name': tag },
        },
      ],
    });
    const blob = (data: Buffer) => tarEntry(`blobs/sha256/${sha256(data)}`, data, 0o644);
    const image = tar([
      tarEntry('oci-layout', json({ imageLayoutVersion: '1.0.0' }), 0o644),
      tarEntry('index.json', index, 0o644),
      tarEntry('blobs/', null, 0o755),
      tarEntry('blobs/sha256/', null, 0o755),
      blob(layerGz),
      blob(config),
      blob(manifest),
    ]);
    const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
    writeFileSync(tmp, image);
    renameSync(tmp, path); // atomic: concurrent builders just replace equal files
    return path;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------
// Config

function configToml(o: { dir: string; socket: string; runc: string; cniConfDir: string }): string {
  const { dir } = o;
  const cri = 'plugins."io.containerd.grpc.v1.cri"';
  return `version = 2
root = "${dir}/root"
state = "${dir}/state"
oom_score = 0
# Not these: they only fail to load and log why. (Never io.containerd.runtime.v1.linux:
# the CRI plugin then fails to load.)
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "${o.socket}"

[ttrpc]
  address = "${o.socket}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${dir}/opt"

[${cri}]
  sandbox_image = "${SANDBOX_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  restrict_oom_score_adj = true
  enable_selinux = false

[${cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[${cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[${cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "${o.runc}"
  Root = "${dir}/runc"

[${cri}.cni]
  bin_dir = "${CNI_BIN_DIR}"
  conf_dir = "${o.cniConfDir}"
  max_conf_num = 1
  conf_template = ""
`;
}

function cniConflist(o: { name: string; bridge: string; ipamDir: string }): string {
  return JSON.stringify(
    {
      cniVersion: '1.0.0',
      name: o.name,
      plugins: [
        {
          type: 'bridge',
          bridge: o.bridge,
          isGateway: false,
          ipMasq: false,
          hairpinMode: false,
          ipam: { type: 'host-local', ranges: [[{ subnet: POD_SUBNET }]], dataDir: o.ipamDir },
        },
      ],
    },
    null,
    2,
  );
}

// ---------------------------------------------------------------------------------------
// Process control

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function running(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

function exitOf(child: ChildProcess): Promise<void> {
  if (!running(child)) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (!running(child)) return;
  const exited = exitOf(child);
  child.kill('SIGTERM');
  const timer = setTimeout(() => {
    if (running(child)) child.kill('SIGKILL');
  }, STOP_GRACE_MS);
  await exited;
  clearTimeout(timer);
}

function logTail(logFile: string, lines = 30): string {
  try {
    return readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** One CRI call on a client of its own (no shared subchannel, so no shared backoff). */
function rawCall(address: string, path: string, request: Buffer, timeoutMs: number): Promise<Buffer> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
  return new Promise<Buffer>((resolve, reject) => {
    client.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      request,
      { deadline: Date.now() + timeoutMs },
      (err, res) => (err ? reject(err) : resolve(res ?? Buffer.alloc(0))),
    );
  }).finally(() => client.close());
}

function criVersion(address: string, timeoutMs: number): Promise<{ runtime_name: string }> {
  const client = new RuntimeServiceClient(address, grpc.credentials.createInsecure(), {
    'grpc.use_local_subchannel_pool': 1,
  });
  return new Promise<{ runtime_name: string }>((resolve, reject) => {
    (client as unknown as Record<string, Function>).Version(
      { version: 'v1' },
      { deadline: Date.now() + timeoutMs },
      (err: Error | null, res: { runtime_name: string }) => (err ? reject(err) : resolve(res)),
    );
  }).finally(() => client.close());
}

/** ImageStatusRequest{image: ImageSpec{image: ref}}, hand-encoded: our proto has no ImageService. */
function imageStatusRequest(ref: string): Buffer {
  const spec = Buffer.concat([Buffer.from([0x0a, Buffer.byteLength(ref)]), Buffer.from(ref)]);
  return Buffer.concat([Buffer.from([0x0a, spec.length]), spec]);
}

async function until<T>(what: string, timeoutMs: number, attempt: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await attempt();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`${what} (last error: ${last instanceof Error ? last.message : String(last)})`);
    }
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------
// Cleanup

function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mount points under `dir`, deepest first. */
export function mountsUnderDir(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => unescapeMountPath(line.split(' ')[4] ?? ''))
    .filter((m) => m.startsWith(dir + '/'))
    .sort((a, b) => b.split('/').length - a.split('/').length || b.length - a.length);
}

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
  const deadline = Date.now() + 5_000;
  while (shims.some((s) => pidAlive(s.pid)) && Date.now() < deadline) await sleep(50);
  for (const s of shims) if (pidAlive(s.pid)) problems.push(`shim ${s.pid} survived SIGKILL`);
  // A shim removes its socket when it exits, a SIGKILLed one cannot: containerd 1.6 names
  // it sha256(<grpc address>/<namespace>/<id>) in /run/containerd/s whatever the config says.
  for (const id of new Set([...ids, ...shims.flatMap((s) => (s.id ? [s.id] : []))])) {
    rmSync(join(SHIM_SOCKET_DIR, sha256(Buffer.from(join(socket, 'k8s.io', id)))), { force: true });
  }
  rmdirQuiet(SHIM_SOCKET_DIR);
  rmdirQuiet('/run/containerd');

  const umount = lookPath('umount') ?? 'umount';
  for (let pass = 0; pass < 3; pass++) {
    const mounts = mountsUnderDir(dir);
    if (!mounts.length) break;
    for (const m of mounts) {
      try {
        await execFileP(umount, [m]);
      } catch {
        await execFileP(umount, ['-l', m]).catch(() => undefined);
      }
    }
  }
  for (const m of mountsUnderDir(dir)) problems.push(`still mounted: ${m}`);

  // runc removes a container's cgroups on delete; a killed one may leave them (v1 and v2).
  const cgroupRoots = ['/sys/fs/cgroup', ...readdirSafe('/sys/fs/cgroup').map((c) => join('/sys/fs/cgroup', c))];
  for (const root of cgroupRoots) {
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

  for (let i = 0; ; i++) {
    try {
      rmSync(dir, { recursive: true, force: true });
      break;
    } catch (err) {
      if (i >= 10) {
        problems.push(`rm -rf ${dir}: ${(err as Error).message}`);
        break;
      }
      await sleep(100);
    }
  }
  return problems;
}

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** What a stopped harness must not have left: shims, mounts, the bridge, the dir, CNI cache. */
export function leftoversOf(c: Pick<PrivateContainerd, 'dir' | 'bridge'>, sandboxIds: string[] = []): string[] {
  const found: string[] = [];
  for (const s of shimsOf(c.dir)) found.push(`shim ${s.pid} (${s.id ?? '?'})`);
  for (const m of mountsUnderDir(c.dir)) found.push(`mount ${m}`);
  if (linkExists(c.bridge)) found.push(`bridge ${c.bridge}`);
  if (existsSync(c.dir)) found.push(`dir ${c.dir}`);
  for (const f of readdirSafe(CNI_RESULTS_DIR)) {
    if (f.startsWith(`${c.bridge}-`) || sandboxIds.some((id) => f.includes(`-${id}-`))) found.push(`CNI cache ${f}`);
  }
  for (const id of sandboxIds) {
    for (const root of ['/sys/fs/cgroup', ...readdirSafe('/sys/fs/cgroup').map((x) => join('/sys/fs/cgroup', x))]) {
      if (existsSync(join(root, 'k8s.io', id))) found.push(`cgroup ${join(root, 'k8s.io', id)}`);
    }
  }
  return found;
}

// ---------------------------------------------------------------------------------------
// The harness

export async function startContainerd(): Promise<PrivateContainerd> {
  const tools = checkPrerequisites();
  const imageTar = await pauseImageTar();

  // Under /tmp, not $TMPDIR: unix socket paths must stay short.
  const dir = mkdtempSync(join('/tmp', 'cripf-containerd-'));
  const socket = join(dir, 'containerd.sock');
  const address = `unix://${socket}`;
  const logFile = join(dir, 'containerd.log');
  const configFile = join(dir, 'config.toml');
  let bridge = '';
  do bridge = `cripf${randomBytes(2).toString('hex')}`;
  while (linkExists(bridge));
  const network = bridge;
  const cniConfDir = join(dir, 'cni', 'net.d');
  mkdirSync(cniConfDir, { recursive: true });
  writeFileSync(
    join(dir, CNI_CONFLIST),
    cniConflist({ name: network, bridge, ipamDir: join(dir, 'cni', 'ipam') }),
  );
  writeFileSync(configFile, configToml({ dir, socket, runc: tools.runc, cniConfDir }));

  const launch = (): ChildProcess => {
    const fd = openSync(logFile, 'a');
    try {
      const child = spawn(tools.containerd, ['--config', configFile], {
        stdio: ['ignore', fd, fd],
        env: { ...process.env, PATH: `${SYSTEM_PATH}${delimiter}${process.env.PATH ?? ''}` },
      });
      child.on('error', () => undefined); // surfaces as an early exit below
      return child;
    } finally {
      closeSync(fd);
    }
  };

  const waitReady = async (child: ChildProcess): Promise<void> => {
    let exited = false;
    void exitOf(child).then(() => (exited = true));
    const deadline = Date.now() + READY_TIMEOUT_MS;
    let last = '';
    for (;;) {
      if (exited || !running(child)) {
        throw new Error(
          `containerd exited (${child.exitCode ?? child.signalCode}) before its CRI answered; last lines of ${logFile}:\n${logTail(logFile)}`,
        );
      }
      if (existsSync(socket)) {
        try {
          const v = await criVersion(address, 2_000);
          if (v.runtime_name) return;
        } catch (err) {
          last = (err as Error).message;
        }
      }
      if (Date.now() > deadline) {
        await stopProcess(child);
        throw new Error(
          `containerd's CRI did not answer Version within ${READY_TIMEOUT_MS} ms (last error: ${last}); last lines of ${logFile}:\n${logTail(logFile)}`,
        );
      }
      await sleep(100);
    }
  };

  let proc = launch();
  let stopping: Promise<void> | undefined;
  const handle: PrivateContainerd = {
    dir,
    socket,
    address,
    pid: proc.pid ?? -1,
    sandboxImage: SANDBOX_IMAGE,
    bridge,
    logFile,
    stop() {
      stopping ??= (async () => {
        await stopProcess(proc);
        const problems = await cleanUpContainerdDir(dir);
        if (problems.length) throw new Error(`containerd harness cleanup: ${problems.join('; ')}`);
      })();
      return stopping;
    },
    async restart() {
      if (stopping) throw new Error('containerd harness: restart() after stop()');
      await stopProcess(proc);
      writeFileSync(logFile, `--- harness: restart ---\n`, { flag: 'a' });
      proc = launch();
      handle.pid = proc.pid ?? -1;
      await waitReady(proc);
    },
  };

  try {
    await waitReady(proc);
    try {
      await execFileP(tools.ctr, ['--address', socket, '-n', 'k8s.io', 'images', 'import', imageTar]);
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new Error(`ctr images import ${imageTar} failed: ${e.stderr || e.message}\n${logTail(logFile)}`);
    }
    // The CRI plugin learns of the import from an event; wait until it resolves the image,
    // or RunPodSandbox would try to pull it.
    await until(`containerd's CRI does not see ${SANDBOX_IMAGE} after import`, 10_000, async () => {
      const res = await rawCall(address, '/runtime.v1.ImageService/ImageStatus', imageStatusRequest(SANDBOX_IMAGE), 2_000);
      return res.length > 0 && res[0] === 0x0a ? true : undefined;
    });
  } catch (err) {
    await handle.stop().catch(() => undefined);
    throw err;
  }
  return handle;
}

/**
 * Stop and remove every sandbox through the CRI (which also removes their containers, and
 * so ends their shims). Call it before stop(): shims outlive containerd. Returns the ids.
 */
export async function removeAllSandboxes(address: string): Promise<string[]> {
  const cri = criClient(address);
  try {
    const { items } = (await cri.call('ListPodSandbox', {})) as { items: { id: string }[] };
    for (const { id } of items) {
      await cri.call('StopPodSandbox', { pod_sandbox_id: id });
      await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
    }
    return items.map((s) => s.id);
  } finally {
    cri.close();
  }
}

/** The netns path of a sandbox from containerd 1.6's verbose PodSandboxStatus info. */
export function netnsPathFromVerboseInfo(info: Record<string, string>): string | undefined {
  const parsed = JSON.parse(info.info ?? '{}') as {
    runtimeSpec?: { linux?: { namespaces?: { type: string; path?: string }[] } };
  };
  return parsed.runtimeSpec?.linux?.namespaces?.find((n) => n.type === 'network')?.path;
}
