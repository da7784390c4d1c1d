// The JSON-lines logger: what a line holds, how context and fields combine, and that lines
// reach stdout once per turn and on exit.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createLogger } from '../../src/log';

function capture(level: Parameters<typeof createLogger>[0], base?: Record<string, unknown>) {
  const lines: Record<string, unknown>[] = [];
  const raw: string[] = [];
  const log = createLogger(
    level,
    (line) => {
      raw.push(line);
      lines.push(JSON.parse(line) as Record<string, unknown>);
    },
    base,
  );
  return { log, lines, raw };
}

describe('logger', () => {
  it('writes one JSON object per line: time, level, msg, context, then fields', () => {
    const { log, lines, raw } = capture('info', { component: 'portforward' });
    log.child({ sandboxId: 'abc', port: 80 }).info('forward started', { bytes: 12, ok: true, none: null });
    assert.equal(raw.length, 1);
    assert.ok(raw[0]!.endsWith('}\n') && !raw[0]!.slice(0, -1).includes('\n'));
    const line = lines[0]!;
    assert.match(String(line['time']), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.deepEqual(
      { ...line, time: 'x' },
      { time: 'x', level: 'info', msg: 'forward started', component: 'portforward', sandboxId: 'abc', port: 80, bytes: 12, ok: true, none: null },
    );
  });

  it('lets a field replace a context field of the same name, once', () => {
    const { log, raw, lines } = capture('debug', { sandboxId: 'old' });
    log.child({ port: 1 }).debug('m', { sandboxId: 'new' });
    log.child({ port: 1 }).child({ port: 2 }).debug('m');
    assert.equal(lines[0]!['sandboxId'], 'new');
    assert.equal(raw[0]!.match(/sandboxId/g)!.length, 1);
    assert.equal(lines[1]!['port'], 2);
    assert.equal(raw[1]!.match(/"port"/g)!.length, 1);
  });

  it('writes errors as their message and code, bigints as decimals, and escapes text', () => {
    const { log, lines } = capture('info');
    const err: NodeJS.ErrnoException = new Error('read ECONNRESET');
    err.code = 'ECONNRESET';
    log.warn('forward failed: "dial"\n', { err, plain: new Error('plain'), n: 12345678901234567890n, nested: { a: [1] } });
    assert.deepEqual(
      { ...lines[0]!, time: 'x' },
      { time: 'x', level: 'warn', msg: 'forward failed: "dial"\n', err: 'read ECONNRESET (ECONNRESET)', plain: 'plain', n: '12345678901234567890', nested: { a: [1] } },
    );
  });

  it('drops lines under its level; announce writes at every level', () => {
    const { log, lines } = capture('warn');
    log.debug('d');
    log.info('i');
    log.announce('ready');
    log.warn('w');
    log.error('e');
    assert.deepEqual(lines.map((l) => [l['level'], l['msg']]), [['info', 'ready'], ['warn', 'w'], ['error', 'e']]);
  });

  it('reaches stdout: a turn of lines in one write, and what is pending when the process exits', () => {
    const logModule = join(__dirname, '..', '..', 'src', 'log.js');
    const script = `
      const writes = [];
      const real = process.stdout.write.bind(process.stdout);
      process.stdout.write = (s) => { writes.push(s.split('\\n').length - 1); return real(s); };
      const log = require(${JSON.stringify(logModule)}).createLogger('info');
      log.info('a'); log.info('b'); log.info('c');
      setImmediate(() => setImmediate(() => {
        log.info('writes ' + JSON.stringify(writes));
        log.info('last words');
        process.exit(3);
      }));`;
    let out = '';
    try {
      execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    } catch (err) {
      out = (err as { stdout: string }).stdout;
    }
    const msgs = out.trim().split('\n').map((l) => (JSON.parse(l) as { msg: string }).msg);
    assert.deepEqual(msgs, ['a', 'b', 'c', 'writes [3]', 'last words']);
  });
});
