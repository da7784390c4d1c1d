// A private containerd with its CRI plugin, for integration tests and the bench: the
// machine's own 1.6 (Debian 12's `containerd` package) by default, or 1.7 / 2.1 (Debian
// packages unpacked under a cache dir by .ci/fetch-containerd-releases, fetched on first
// use when root; releases.ts), each with the shim and ctr of its own release. Everything it
// owns (root, state, sockets, runc root, CNI config and IPAM data, netns mounts, log) lives
// under one temp dir, its CNI bridge has a name of its own, and its sandbox image is a
// static pause binary we build and import (no registry). Shims outlive containerd: call
// removeAllSandboxes() before stop(); stop() then kills and unmounts whatever is still
// left and removes the dir.
//
// One concern a file: releases (which containerd, where its binaries are, fetching them),
// prerequisites (root, the other binaries), pause-image (the OCI tar), config (config.toml,
// CNI conflist), process (launch, ready, stop), cri-raw (the harness's own CRI calls),
// cleanup (what a stopped containerd leaves, and removing it).

import { execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { until } from '../until';
import { cleanUpContainerdDir, linkExists } from './cleanup';
import { CNI_CONFLIST, cniConflist, configToml } from './config';
import { criHasImage, criVersion } from './cri-raw';
import { pauseImageTar, SANDBOX_IMAGE } from './pause-image';
import { checkPrerequisites } from './prerequisites';
import { launchContainerd, logTail, stopProcess, waitReady } from './process';
import { ensureContainerdRelease, releaseBinaries, SYSTEM_RELEASE, type ContainerdRelease } from './releases';

export { cleanUpContainerdDir, leftoversOf, linkExists, shimsOf } from './cleanup';
export { POD_SUBNET } from './config';
export { containerdPodConfig, removeAllSandboxes } from './cri-raw';
export { pauseImageTar, SANDBOX_IMAGE } from './pause-image';
export { CNI_BIN_DIR, containerdSkipReason } from './prerequisites';
export {
  containerdCacheDir,
  containerdReleaseMissing,
  CONTAINERD_RELEASES,
  ensureContainerdRelease,
  type ContainerdRelease,
} from './releases';

const execFileP = promisify(execFile);

export interface PrivateContainerd {
  /** Which containerd runs (its binaries' release). */
  release: ContainerdRelease;
  /** What its CRI Version says it is (`runtime_version`, e.g. 1.7.24~ds1). */
  version: string;
  /** The binaries of that release it runs: the daemon, the shim it starts, and ctr. */
  binaries: { containerd: string; shim: string; ctr: string };
  /** The temp dir that holds everything of this containerd. */
  dir: string;
  /** Absolute path of its gRPC socket. */
  socket: string;
  /** Its debug socket: HTTP with /debug/pprof/ (goroutine dumps). */
  debugSocket: string;
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

export interface StartContainerdOptions {
  /** Default '1.6', the machine's own containerd. */
  release?: ContainerdRelease;
}

export async function startContainerd(options: StartContainerdOptions = {}): Promise<PrivateContainerd> {
  const release = options.release ?? SYSTEM_RELEASE;
  await ensureContainerdRelease(release);
  const tools = checkPrerequisites(releaseBinaries(release));
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
  writeFileSync(join(dir, CNI_CONFLIST), cniConflist({ name: network, bridge, ipamDir: join(dir, 'cni', 'ipam') }));
  writeFileSync(configFile, configToml({ dir, socket, runc: tools.runc, cniConfDir }));

  let proc: ChildProcess = launchContainerd(tools, configFile, logFile);
  let stopping: Promise<void> | undefined;
  const handle: PrivateContainerd = {
    release,
    version: '',
    binaries: { containerd: tools.containerd, shim: tools.shim, ctr: tools.ctr },
    dir,
    socket,
    debugSocket: `${socket}.debug`,
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
      proc = launchContainerd(tools, configFile, logFile);
      handle.pid = proc.pid ?? -1;
      await waitReady(proc, socket, logFile);
    },
  };

  try {
    await waitReady(proc, socket, logFile);
    // The binaries must be the release the tests are named after (a moved Debian suite, or
    // a system containerd that is not 1.6, would otherwise test something else).
    handle.version = (await criVersion(address, 5_000)).runtime_version;
    if (!handle.version.replace(/^v/, '').startsWith(`${release}.`)) {
      throw new Error(`containerd harness: asked for containerd ${release}, ${tools.containerd} says it is ${handle.version}`);
    }
    try {
      await execFileP(tools.ctr, ['--address', socket, '-n', 'k8s.io', 'images', 'import', imageTar]);
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new Error(`ctr images import ${imageTar} failed: ${e.stderr || e.message}\n${logTail(logFile)}`);
    }
    // The CRI plugin learns of the import from an event; wait until it resolves the image,
    // or RunPodSandbox would try to pull it.
    await until(`containerd's CRI to see ${SANDBOX_IMAGE} after the import`, () => criHasImage(address, SANDBOX_IMAGE, 2_000), {
      timeoutMs: 10_000,
      intervalMs: 100,
    });
  } catch (err) {
    await handle.stop().catch(() => undefined);
    throw err;
  }
  return handle;
}
