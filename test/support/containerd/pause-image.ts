// The pause image: a static C binary in an OCI image tar, built once per machine (cached
// under os.tmpdir(), rebuilt when missing), which the private containerd runs sandboxes from.

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { sha256 } from '../tcp-client';
import { lookPath } from './prerequisites';

const execFileP = promisify(execFile);

export const SANDBOX_IMAGE = 'localhost/cripf-pause:1';

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
