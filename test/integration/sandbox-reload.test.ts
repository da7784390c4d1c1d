// Two stores on one state dir, as the two processes of an upgrade are for a moment: what
// the old one does before it releases the CRI socket, the new one takes with reload().

import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { createLogger } from '../../src/log';
import { EmbeddedSandboxStore } from '../../src/sandbox/embedded';
import { runEmbeddedSandbox } from '../support/embedded';
import { mountsUnder } from '../support/mounts';
import { rootSkipReason } from '../support/root';
import { makeTempDir } from '../support/server-process';

const log = createLogger('error');

describe('sandbox store reload', { skip: rootSkipReason() }, () => {
  const dir = makeTempDir();

  after(() => {
    assert.deepEqual(mountsUnder(dir), []);
    rmSync(dir, { recursive: true, force: true });
  });

  it("takes the sandboxes another store made, stopped and removed on the same dir", async () => {
    const old = await EmbeddedSandboxStore.open(`${dir}/state`, log);
    const kept = await runEmbeddedSandbox(old, 'kept');
    const taking = await EmbeddedSandboxStore.open(`${dir}/state`, log);
    const made = await runEmbeddedSandbox(old, 'made-meanwhile');
    await old.stop(kept.id);
    assert.equal(taking.get(made.id), undefined, 'not seen before the reload');
    await taking.reload();
    assert.equal(taking.get(made.id)?.netnsPath, made.netnsPath);
    assert.equal(taking.get(kept.id)?.state, 'SANDBOX_NOTREADY');
    await old.remove(made.id);
    await taking.reload();
    assert.equal(taking.get(made.id), undefined, 'removed by the other store');
    await taking.remove(kept.id);
    await old.close();
    await taking.close();
  });
});
