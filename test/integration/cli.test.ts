// The command line as an operator meets it: help, bad flags, start-up, signals.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { status } from '@grpc/grpc-js';
import { SERVE_FLAGS } from '../../src/config';
import { criClient, grpcError, podConfig } from '../support/cri-client';
import { rootSkipReason } from '../support/root';
import { CLI_PATH, makeTempDir, startServer } from '../support/server-process';

function cli(...args: string[]) {
  return spawnSync(process.execPath, [CLI_PATH, ...args], { encoding: 'utf8', timeout: 10_000 });
}

describe('cli', () => {
  const dirs: string[] = [];
  const tempDir = (): string => {
    const dir = makeTempDir();
    dirs.push(dir);
    return dir;
  };
  after(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  it('--help lists every flag with its default', () => {
    const res = cli('serve', '--help');
    assert.equal(res.status, 0);
    for (const flag of SERVE_FLAGS) {
      const line = res.stdout.split('\n').find((l) => l.trimStart().startsWith(`--${flag.name} `));
      assert.ok(line, `--${flag.name} missing from help`);
      if (flag.default !== undefined) assert.ok(line.includes(`(default ${flag.default})`), line);
    }
  });

  it('exits 2 with one line on stderr for bad flags', () => {
    for (const args of [
      ['serve', '--no-such-flag'],
      ['serve', '--token-ttl', 'soon'],
      ['serve', '--stream-address', 'localhost'],
      ['serve', 'extra-positional'],
      ['frobnicate'],
    ]) {
      const res = cli(...args);
      assert.equal(res.status, 2, args.join(' '));
      assert.equal(res.stderr.trim().split('\n').length, 1, res.stderr);
      assert.match(res.stderr, /^cri-portforward: /);
    }
  });

  it('prints one ready line, then ends on SIGTERM within 5 s, exit 0, socket removed', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const server = await startServer({ dir: tempDir() });
      const ready = server.logs.filter((l) => l.msg === 'ready');
      assert.equal(ready.length, 1);
      assert.match(String(ready[0]!.criSocket), /^unix:\/\/\//);
      assert.match(String(ready[0]!.streamBaseUrl), /^http:\/\/127\.0\.0\.1:\d+$/);
      if (process.getuid?.() === 0) assert.ok(!server.logs.some((l) => /CAP_SYS_ADMIN/.test(String(l.msg))), 'root has CAP_SYS_ADMIN: no warning');
      assert.ok(existsSync(server.criSocket));
      const started = Date.now();
      server.proc.kill(signal);
      assert.equal(await server.stop(), 0);
      assert.ok(Date.now() - started < 5000);
      assert.equal(existsSync(server.criSocket), false, 'socket file removed');
    }
  });

  it('replaces a stale socket file but refuses a socket a live server answers on', async () => {
    const dir = tempDir();
    const socketPath = join(dir, 'cri.sock');
    // A live listener on the path: start-up must fail and leave it alone.
    const live = createServer();
    await new Promise<void>((resolve) => live.listen(socketPath, resolve));
    try {
      await assert.rejects(startServer({ dir }), /another server is already listening on CRI socket/);
      assert.ok(existsSync(socketPath));
    } finally {
      await new Promise<void>((resolve) => live.close(() => resolve()));
    }
    // A stale socket file, as a killed server leaves it behind.
    spawnSync(process.execPath, [
      '-e',
      `require('net').createServer().listen(${JSON.stringify(socketPath)}, () => process.kill(process.pid, 'SIGKILL'))`,
    ]);
    assert.ok(existsSync(socketPath), 'the killed listener left its socket file');
    const server = await startServer({ dir });
    const cri = criClient(server.criAddress);
    assert.equal((await cri.call('Version', {})).runtime_name, 'cri-portforward');
    cri.close();
    assert.equal(await server.stop(), 0);
  });

  it('says once at start what will not work without CAP_SYS_ADMIN, then refuses RunPodSandbox with PERMISSION_DENIED', { skip: rootSkipReason() }, async () => {
    const dir = tempDir();
    chownSync(dir, 65534, 65534);
    chmodSync(dir, 0o755);
    const server = await startServer({ dir, spawn: { uid: 65534, gid: 65534 } });
    const warnings = server.logs.filter((l) => l.level === 'warn' && /CAP_SYS_ADMIN/.test(String(l.msg)));
    assert.equal(warnings.length, 1, JSON.stringify(server.logs));
    assert.match(String(warnings[0]!.msg), /RunPodSandbox .* forwards into pod namespaces fail/);
    const cri = criClient(server.criAddress);
    const err = await grpcError(cri.call('RunPodSandbox', { config: podConfig('nonroot') }));
    assert.equal(err.code, status.PERMISSION_DENIED);
    assert.match(err.details, /CAP_SYS_ADMIN/);
    cri.close();
    assert.equal(await server.stop(), 0);
  });
});
