// A private containerd 1.6 (Debian's `containerd` package) with its CRI plugin, for
// integration tests and the bench: everything it owns (root, state, sockets, runc root,
// CNI config and IPAM data, netns mounts, log) lives under one temp dir, its CNI bridge
// has a name of its own, and its sandbox image is a static pause binary we build and
// import (no registry). Shims outlive containerd: call removeAllSandboxes() before
// stop(); stop() then kills and unmounts whatever is still left and removes the dir.
//
// One concern a file: prerequisites (root, binaries), pause-image (the OCI tar), config
// (config.toml, CNI conflist), process (launch, ready, stop), cri-raw (the harness's own
// CRI calls), cleanup (what a stopped containerd leaves, and removing it).

import { execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { until } from '../until';
import { cleanUpContainerdDir, linkExists } from './cleanup';
import { CNI_CONFLIST, cniConflist, configToml } from './config';
import { criHasImage } from './cri-raw';
import { pauseImageTar, SANDBOX_IMAGE } from './pause-image';
import { checkPrerequisites } from './prerequisites';
import { launchContainerd, logTail, stopProcess, waitReady } from './process';

export { cleanUpContainerdDir, leftoversOf, linkExists, shimsOf } from './cleanup';
export { POD_SUBNET } from './config';
export { containerdPodConfig, removeAllSandboxes } from './cri-raw';
export { pauseImageTar, SANDBOX_IMAGE } from './pause-image';
export { CNI_BIN_DIR, containerdSkipReason } from './prerequisites';

const execFileP = promisify(execFile);

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
  writeFileSync(join(dir, CNI_CONFLIST), cniConflist({ name: network, bridge, ipamDir: join(dir, 'cni', 'ipam') }));
  writeFileSync(configFile, configToml({ dir, socket, runc: tools.runc, cniConfDir }));

  let proc: ChildProcess = launchContainerd(tools.containerd, configFile, logFile);
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
      proc = launchContainerd(tools.containerd, configFile, logFile);
      handle.pid = proc.pid ?? -1;
      await waitReady(proc, socket, logFile);
    },
  };

  try {
    await waitReady(proc, socket, logFile);
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
