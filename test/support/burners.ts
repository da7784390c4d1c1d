// CPU burners around a test: `yes` processes writing to /dev/null (a busy loop in node
// where there is no `yes`), so that the code under test runs on a machine as busy as a
// loaded node. They are always stopped, and awaited, whatever the test does; a test
// process that dies on its way kills them from its exit handler.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';

const YES = ['/usr/bin/yes', '/bin/yes'].find((path) => existsSync(path));

function startBurner(): ChildProcess {
  // stdio 'ignore' opens /dev/null: the same as `yes > /dev/null`, with no shell between.
  const [cmd, ...args] = YES !== undefined ? [YES] : [process.execPath, '-e', 'for (;;) {}'];
  const burner = spawn(cmd!, args, { stdio: 'ignore' });
  burner.on('error', () => undefined); // reported by the exit check below
  return burner;
}

async function stopBurner(burner: ChildProcess): Promise<void> {
  if (burner.exitCode !== null || burner.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => burner.once('exit', () => resolve()));
  burner.kill('SIGKILL');
  await exited;
}

/** Run `fn` with `n` CPU burners running beside it; they are stopped before this resolves. */
export async function withCpuBurners<T>(n: number, fn: () => Promise<T>): Promise<T> {
  const burners: ChildProcess[] = [];
  const killAll = (): void => {
    for (const b of burners) b.kill('SIGKILL');
  };
  process.once('exit', killAll);
  try {
    for (let i = 0; i < n; i++) burners.push(startBurner());
    for (const b of burners) {
      if (b.pid === undefined) throw new Error('a CPU burner did not start');
    }
    return await fn();
  } finally {
    await Promise.all(burners.map(stopBurner));
    process.removeListener('exit', killAll);
  }
}
