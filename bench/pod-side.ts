// Pod-side benchmarks: dials per second into one namespace, and CPU per GiB through one
// pipe next to a direct loopback transfer and one socat -b1048576 relay hop, all measured
// in the same run (absolute figures differ 2x between machines; the ratios travel).

import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { createLogger } from '../src/log';
import { Forwarder } from '../src/netns/forwarder';
import { EmbeddedSandboxStore } from '../src/sandbox/embedded';
import { startPodApp } from '../test/support/apps';
import { dialMany, runEmbeddedSandbox } from '../test/support/embedded';
import { makeTempDir } from '../test/support/server-process';
import { until } from '../test/support/until';

const DIALS = 20_000;
const DIALS_IN_FLIGHT = 8;

export async function dialRate(): Promise<number> {
  const dir = makeTempDir('cripf-bench-');
  const store = await EmbeddedSandboxStore.open(join(dir, 'state'), createLogger('error'));
  const sandbox = await runEmbeddedSandbox(store, 'bench', 'POD', 'bench');
  const app = await startPodApp(sandbox.netnsPath, 'sink');
  try {
    const forwarder = new Forwarder(store);
    const started = process.hrtime.bigint();
    await dialMany(forwarder, sandbox.id, app.port, DIALS, DIALS_IN_FLIGHT);
    return DIALS / (Number(process.hrtime.bigint() - started) / 1e9);
  } finally {
    await app.stop();
    await store.remove(sandbox.id);
    rmSync(dir, { recursive: true, force: true });
  }
}

export type Hop = 'direct' | 'socat' | 'pipe';
export type Direction = 'download' | 'upload';

export interface Transfer {
  mbPerSecond: number;
  /** CPU seconds of the relay process per GiB moved (undefined for direct). */
  cpuPerGiB?: number;
}

const BENCH_DIR = __dirname;

function firstJsonLine(proc: ReturnType<typeof spawn>): Promise<Record<string, number | string>> {
  return new Promise((resolve, reject) => {
    createInterface({ input: proc.stdout! }).once('line', (line) => resolve(JSON.parse(line)));
    proc.once('exit', (code) => reject(new Error(`${proc.spawnfile} exited with ${code} before printing`)));
  });
}

/** Run load.js against 127.0.0.1:<port>: what it moved and how long it took. */
export async function runLoad(direction: Direction, port: number, bytes: number): Promise<{ bytes: number; seconds: number }> {
  const load = spawn(process.execPath, [join(BENCH_DIR, 'load.js'), direction, String(port), String(bytes)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const done = await firstJsonLine(load);
  return { bytes: Number(done.bytes), seconds: Number(done.seconds) };
}

function socatAvailable(): boolean {
  try {
    execFileSync('socat', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export async function transfer(hop: Hop, direction: Direction, bytes: number): Promise<Transfer | undefined> {
  if (hop === 'socat' && !socatAvailable()) return undefined;
  const app = await startPodApp(null, direction === 'download' ? `source:${bytes}` : 'sink');
  try {
    let port = app.port;
    let relayCpu: Promise<number> | undefined;
    if (hop === 'pipe') {
      const relay = spawn(process.execPath, [join(BENCH_DIR, 'relay.js'), '-', String(app.port)], { stdio: ['ignore', 'pipe', 'inherit'] });
      const lines = createInterface({ input: relay.stdout! });
      const iter = lines[Symbol.asyncIterator]();
      port = JSON.parse((await iter.next()).value as string).port;
      relayCpu = iter.next().then((r) => JSON.parse(r.value as string).cpuSeconds as number);
    } else if (hop === 'socat') {
      ({ port, relayCpu } = await startSocat(app.port));
    }
    const done = await runLoad(direction, port, bytes);
    if (done.bytes !== bytes) throw new Error(`${hop} ${direction}: moved ${done.bytes} of ${bytes} bytes`);
    const result: Transfer = { mbPerSecond: bytes / 1e6 / done.seconds };
    if (relayCpu !== undefined) result.cpuPerGiB = (await relayCpu) / (bytes / 2 ** 30);
    return result;
  } finally {
    await app.stop();
  }
}

/**
 * A socat relay hop to `target`, listening on a port of its own: one below the kernel's
 * ephemeral range (32768 up), and another one if socat could not bind it (a run's earlier
 * connections hold ports too). Resolves once it listens; relayCpu once it has exited.
 */
async function startSocat(target: number): Promise<{ port: number; relayCpu: Promise<number> }> {
  for (let attempt = 1; ; attempt++) {
    const port = 10000 + Math.floor(Math.random() * 20000);
    // bash's `times` prints the CPU of its finished children: socat's own user+sys.
    const relay = spawn('bash', ['-c', `socat -b1048576 TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr TCP:127.0.0.1:${target}; times`], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    relay.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = once(relay, 'exit');
    let gone = false;
    void exited.then(() => (gone = true));
    // Probe with ss rather than a connection: socat without fork serves one connection only.
    const listening = (): boolean => execFileSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8' }).trim() !== '';
    await until(`socat to listen on ${port} (or to exit)`, () => gone || listening(), { timeoutMs: 2_000 });
    if (gone) {
      if (attempt === 5) throw new Error(`socat could not listen on 5 ports in a row (last ${port})`);
      continue;
    }
    const relayCpu = exited.then(() => {
      const children = out.trim().split('\n')[1] ?? '';
      const [user, system] = [...children.matchAll(/(\d+)m([\d.]+)s/g)].map((m) => Number(m[1]) * 60 + Number(m[2]));
      return (user ?? NaN) + (system ?? NaN);
    });
    return { port, relayCpu };
  }
}
