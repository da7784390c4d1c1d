// Which containerd the harness runs: 1.6 is the machine's own (Debian 12's package, on
// PATH); 1.7 (Debian trixie) and 2.1 (Debian sid) are Debian packages that
// .ci/fetch-containerd-releases unpacks with `dpkg -x` under a cache dir, never installed.
// Each release runs with its own shim and ctr (those next to its containerd); runc and the
// CNI plugins are the system's.

import { execFile } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { lookPath } from './prerequisites';

export type ContainerdRelease = '1.6' | '1.7' | '2.1';
export const CONTAINERD_RELEASES: readonly ContainerdRelease[] = ['1.6', '1.7', '2.1'];
/** The machine's own containerd (Debian 12's package). */
export const SYSTEM_RELEASE: ContainerdRelease = '1.6';
/** Where the fetch script takes the others from (its table; here for the messages only). */
const DEBIAN_SUITE: Partial<Record<ContainerdRelease, string>> = { '1.7': 'trixie', '2.1': 'sid' };

/** Where the fetch script unpacks the releases; the same default and variable as the script. */
export function containerdCacheDir(): string {
  return process.env.CRI_PORTFORWARD_CONTAINERD_CACHE || '/var/cache/cri-portforward-test/containerd';
}

/** The binaries the harness runs of a release: the daemon, its shim, and ctr. */
const BINARIES = ['containerd', 'containerd-shim-runc-v2', 'ctr'] as const;

export interface ReleaseBinaries {
  containerd: string;
  shim: string;
  ctr: string;
  /** The dir to put first in containerd's PATH (so it starts its own shim), if not the system's. */
  binDir: string | undefined;
}

/** The repository's root (holds .ci/), found upward from this file (src or build/). */
function repoRoot(): string | undefined {
  for (let d = __dirname; ; d = dirname(d)) {
    if (existsSync(join(d, '.ci', 'fetch-containerd-releases'))) return d;
    if (dirname(d) === d) return undefined;
  }
}

/** The command that fetches a release, as a user would type it (from the repository's root). */
function fetchCommand(release: ContainerdRelease): string {
  const cache = process.env.CRI_PORTFORWARD_CONTAINERD_CACHE ? `CRI_PORTFORWARD_CONTAINERD_CACHE=${containerdCacheDir()} ` : '';
  return `\`${cache}.ci/fetch-containerd-releases ${release}\` (as root, from the repository's root)`;
}

function isExecutable(path: string): boolean {
  try {
    return statSync(path).isFile() && (statSync(path).mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

/** The release's binaries, or a message naming what is missing and how to get it. */
function locate(release: ContainerdRelease): ReleaseBinaries | string {
  if (release === SYSTEM_RELEASE) {
    const found = BINARIES.map((b) => lookPath(b));
    const missing = BINARIES.filter((_, i) => !found[i]);
    if (missing.length) {
      return `containerd ${release} (the system's): ${missing.join(', ')} not found on PATH (install the Debian package 'containerd')`;
    }
    return { containerd: found[0]!, shim: found[1]!, ctr: found[2]!, binDir: undefined };
  }
  const releaseDir = join(containerdCacheDir(), release);
  const binDir = join(releaseDir, 'usr', 'bin');
  const paths = BINARIES.map((b) => join(binDir, b));
  const missing = BINARIES.filter((_, i) => !isExecutable(paths[i]!));
  if (missing.length) {
    return (
      `containerd ${release} (Debian ${DEBIAN_SUITE[release]}'s package) is not unpacked in ${releaseDir}: ` +
      `usr/bin/{${missing.join(',')}} missing; fetch it with ${fetchCommand(release)}`
    );
  }
  return { containerd: paths[0]!, shim: paths[1]!, ctr: paths[2]!, binDir };
}

/** undefined when the release's binaries are there; else what is missing and the command that fetches it. */
export function containerdReleaseMissing(release: ContainerdRelease): string | undefined {
  const found = locate(release);
  return typeof found === 'string' ? found : undefined;
}

/** The binaries of a release that is there; throws the missing message otherwise. */
export function releaseBinaries(release: ContainerdRelease): ReleaseBinaries {
  const found = locate(release);
  if (typeof found === 'string') throw new Error(`containerd harness: ${found}`);
  return found;
}

/** One fetch at a time in this process (the script itself also locks across processes). */
const fetching = new Map<ContainerdRelease, Promise<void>>();

/**
 * Make sure a release's binaries are there: when missing, run the fetch script (root only:
 * it runs apt and dpkg -x). Rejects with the missing message and the script's output when
 * that does not bring them, so the tests of that release fail saying why. The system's 1.6
 * is never fetched (its message says which package to install).
 */
export function ensureContainerdRelease(release: ContainerdRelease): Promise<void> {
  const missing = containerdReleaseMissing(release);
  if (missing === undefined) return Promise.resolve();
  if (release === SYSTEM_RELEASE) return Promise.reject(new Error(`containerd harness: ${missing}`));
  let p = fetching.get(release);
  if (!p) {
    p = fetchRelease(release, missing).finally(() => fetching.delete(release));
    fetching.set(release, p);
  }
  return p;
}

async function fetchRelease(release: ContainerdRelease, missing: string): Promise<void> {
  const root = repoRoot();
  const fail = (why: string) => new Error(`containerd harness: ${missing}; fetching it here failed: ${why}`);
  if (!root) throw fail('.ci/fetch-containerd-releases not found above ' + __dirname);
  if (process.getuid?.() !== 0) throw fail('not root');
  const output = await new Promise<string | Error>((resolve) => {
    execFile(join(root, '.ci', 'fetch-containerd-releases'), [release], { cwd: root, timeout: 10 * 60_000 }, (err, stdout, stderr) => {
      const out = `${stdout}${stderr}`.trim();
      resolve(err ? new Error(`${err.message.split('\n')[0]}\n${out}`) : out);
    });
  });
  if (output instanceof Error) throw fail(output.message);
  const still = containerdReleaseMissing(release);
  if (still !== undefined) throw fail(`the script succeeded but ${still}\n${output}`);
}
