// CRI inputs are bounded (issue 10): an id, name or other string over its limit is refused
// with INVALID_ARGUMENT naming the field and its length (never its content), an error
// message quotes at most 128 characters of client input, every such call is answered
// within a second, and the client's connection stays usable afterwards. Embedded mode, and
// the PortForward that proxy mode answers itself. Nothing here needs root: the one sandbox
// that is created uses the host's network.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { status, type ServiceError } from '@grpc/grpc-js';
import { MESSAGE_MAX_BYTES } from '../../src/cri/input-limits';
import { QUOTE_MAX_CHARS } from '../../src/errors';
import { criClient, grpcError, podConfig, type CriTestClient } from '../support/cri-client';
import { startProxy, stopProxy, type ProxiedCri } from '../support/proxy';
import { cleanUpAndAssertNothingLeft, startServer, type ServerProcess } from '../support/server-process';

const MIB = 1024 * 1024;
/** The requirement itself: an answer within a second, not a sleep. */
const ANSWER_WITHIN_MS = 1000;
/** A 1 MiB id of a character that appears in no message of ours. */
const HUGE = 'q'.repeat(MIB);

interface Refusal {
  /** The call and its request. */
  method: string;
  request: object;
  code: status;
  /** What the message must say: the field and its length. */
  message: RegExp;
}

/** The call fails with the refusal's code within a second; its error, for further checks. */
async function refusedInTime(cri: CriTestClient, r: Refusal): Promise<ServiceError> {
  const started = performance.now();
  const err = await grpcError(cri.call(r.method, r.request));
  const elapsedMs = performance.now() - started;
  assert.equal(err.code, r.code, `${r.method}: ${err.code} ${err.details}`);
  assert.ok(elapsedMs < ANSWER_WITHIN_MS, `${r.method} answered after ${Math.round(elapsedMs)} ms`);
  assert.match(err.details, r.message, r.method);
  return err;
}

/** The longest run of `char` in `text`: how much of a one-character input a message echoes. */
function longestRun(text: string, char: string): number {
  let longest = 0;
  for (const run of text.split(new RegExp(`[^${char}]`))) longest = Math.max(longest, run.length);
  return longest;
}

const hugeIdRefusals: Refusal[] = [
  ['PortForward', { pod_sandbox_id: HUGE, port: [80] }],
  ['PodSandboxStatus', { pod_sandbox_id: HUGE, verbose: true }],
  ['StopPodSandbox', { pod_sandbox_id: HUGE }],
  ['RemovePodSandbox', { pod_sandbox_id: HUGE }],
].map(([method, request]) => ({
  method: method as string,
  request: request as object,
  code: status.INVALID_ARGUMENT,
  message: /pod_sandbox_id is 1048576 bytes; ids are at most 256/,
}));

const otherRefusals: Refusal[] = [
  {
    method: 'ListPodSandbox',
    request: { filter: { id: HUGE } },
    code: status.INVALID_ARGUMENT,
    message: /filter\.id is 1048576 bytes; ids are at most 256/,
  },
  {
    method: 'ListPodSandbox',
    request: { filter: { label_selector: { app: HUGE } } },
    code: status.INVALID_ARGUMENT,
    message: /filter\.label_selector\["app"\] is 1048576 bytes; label values are at most 253/,
  },
  {
    method: 'RunPodSandbox',
    request: { config: podConfig(HUGE) },
    code: status.INVALID_ARGUMENT,
    message: /config\.metadata\.name is 1048576 bytes; names are at most 253/,
  },
  {
    method: 'RunPodSandbox',
    request: { config: podConfig('limits', { annotations: { big: HUGE } }) },
    code: status.INVALID_ARGUMENT,
    message: /config\.annotations are 1048579 bytes in all; at most 262144/,
  },
  {
    method: 'RunPodSandbox',
    request: { config: podConfig('limits', { labels: { [HUGE]: 'x' } }) },
    code: status.INVALID_ARGUMENT,
    message: /config\.labels has a key of 1048576 bytes; keys are at most 317/,
  },
  {
    method: 'RunPodSandbox',
    request: { config: podConfig('limits'), runtime_handler: HUGE },
    code: status.INVALID_ARGUMENT,
    message: /runtime_handler is 1048576 bytes; names are at most 253/,
  },
  {
    method: 'PodSandboxStatus',
    request: { pod_sandbox_id: 'q'.repeat(257) },
    code: status.INVALID_ARGUMENT,
    message: /pod_sandbox_id is 257 bytes; ids are at most 256/,
  },
];

/** Over the whole message's bound (16 MiB): RESOURCE_EXHAUSTED, before any field is looked at. */
const overMessageBound: Refusal = {
  method: 'PortForward',
  request: { pod_sandbox_id: 'q'.repeat(MESSAGE_MAX_BYTES + 1), port: [80] },
  code: status.RESOURCE_EXHAUSTED,
  message: /larger than max \(\d+ vs\.? 16777216\)/,
};

/** An id at the limit that names no sandbox: NOT_FOUND, quoting at most 128 characters of it. */
const unknownLongId: Refusal[] = ['PortForward', 'PodSandboxStatus', 'StopPodSandbox'].map((method) => ({
  method,
  request: { pod_sandbox_id: 'q'.repeat(256), port: [80] },
  code: status.NOT_FOUND,
  message: /^sandbox q+… not found$/,
}));

describe('CRI input limits, embedded mode', () => {
  let server: ServerProcess;
  let cri: CriTestClient;

  before(async () => {
    server = await startServer();
    cri = criClient(server.criAddress);
    await cri.call('Version', {});
  });

  after(async () => {
    cri?.close();
    if (!server) return;
    assert.equal(await server.stop(), 0);
    cleanUpAndAssertNothingLeft(server, server.dir);
  });

  it('refuses a 1 MiB sandbox id in every sandbox RPC within a second, naming the field and its length', async () => {
    for (const refusal of hugeIdRefusals) {
      const err = await refusedInTime(cri, refusal);
      assert.ok(!err.details.includes('qqqq'), `${refusal.method} echoes the id: ${err.details.slice(0, 200)}`);
    }
    assert.equal((await cri.call('Version', {})).runtime_name, 'cri-portforward', 'the same connection still answers');
  });

  it('refuses an oversized filter, name, label, annotation or runtime handler, and a 257-byte id', async () => {
    for (const refusal of otherRefusals) {
      const err = await refusedInTime(cri, refusal);
      assert.ok(!err.details.includes('qqqq'), `${refusal.method} echoes its input: ${err.details.slice(0, 200)}`);
    }
    assert.deepEqual((await cri.call('ListPodSandbox', {})).items, [], 'nothing was created');
    assert.equal((await cri.call('Version', {})).runtime_name, 'cri-portforward');
  });

  it('quotes at most 128 characters of an unknown id in NOT_FOUND', async () => {
    for (const refusal of unknownLongId) {
      const err = await refusedInTime(cri, refusal);
      assert.equal(longestRun(err.details, 'q'), QUOTE_MAX_CHARS, err.details);
    }
    assert.equal((await cri.call('Version', {})).runtime_name, 'cri-portforward');
  });

  it('refuses a message over 16 MiB within a second, and the connection stays usable', async () => {
    await refusedInTime(cri, overMessageBound);
    assert.equal((await cri.call('Version', {})).runtime_name, 'cri-portforward');
  });

  it('accepts inputs at the limits that a kubelet may send', async () => {
    // A 253-character pod name (kubelet also puts it in a label value), a 63-character
    // namespace, a 317-byte label key, a host-network sandbox so that no root is needed.
    const name = 'n'.repeat(253);
    const key = `${'k'.repeat(253)}/${'k'.repeat(63)}`;
    const config = {
      metadata: { name, namespace: 's'.repeat(63), uid: 'u'.repeat(36), attempt: 0 },
      labels: { 'io.kubernetes.pod.name': name, [key]: 'v'.repeat(63) },
      annotations: { big: 'a'.repeat(200 * 1024) },
      linux: { security_context: { namespace_options: { network: 'NODE' } } },
    };
    const { pod_sandbox_id: id } = await cri.call('RunPodSandbox', { config, runtime_handler: 'h'.repeat(253) });
    assert.deepEqual((await cri.call('ListPodSandbox', { filter: { label_selector: { [key]: 'v'.repeat(63) } } })).items.map((s: any) => s.id), [id]);
    // The same metadata again: ALREADY_EXISTS quotes at most 128 characters of it.
    const dup = await grpcError(cri.call('RunPodSandbox', { config }));
    assert.equal(dup.code, status.ALREADY_EXISTS);
    assert.equal(longestRun(dup.details, 'n'), QUOTE_MAX_CHARS, dup.details);
    assert.ok(dup.details.includes(id), dup.details);
    await cri.call('RemovePodSandbox', { pod_sandbox_id: id });
  });
});

describe('CRI input limits, the PortForward that proxy mode answers', () => {
  let upstream: ServerProcess;
  let p: ProxiedCri;

  before(async () => {
    upstream = await startServer();
    p = await startProxy(upstream.criAddress);
    await p.viaProxy.call('Version', {});
  });

  after(async () => {
    await stopProxy(p);
    if (!upstream) return;
    assert.equal(await upstream.stop(), 0);
    cleanUpAndAssertNothingLeft(upstream, upstream.dir);
  });

  it('refuses a 1 MiB sandbox id within a second, naming the field and its length', async () => {
    const err = await refusedInTime(p.viaProxy, hugeIdRefusals[0]!);
    assert.ok(!err.details.includes('qqqq'), err.details.slice(0, 200));
    assert.equal((await p.viaProxy.call('Version', {})).runtime_name, 'cri-portforward', 'the same connection still answers');
  });

  it('refuses a message over 16 MiB within a second, as the embedded mode does', async () => {
    await refusedInTime(p.viaProxy, overMessageBound);
    assert.equal((await p.viaProxy.call('Version', {})).runtime_name, 'cri-portforward');
  });

  it('quotes at most 128 characters of an unknown id in NOT_FOUND', async () => {
    const err = await refusedInTime(p.viaProxy, unknownLongId[0]!);
    assert.equal(longestRun(err.details, 'q'), QUOTE_MAX_CHARS, err.details);
    assert.equal((await p.viaProxy.call('Version', {})).runtime_name, 'cri-portforward');
  });
});
