// The bounds on CRI input (src/cri/input-limits.ts) and the clip of quoted client input
// (src/errors.ts): lengths are UTF-8 bytes, messages name the field and the length only.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  checkAnnotations,
  checkId,
  checkLabels,
  checkName,
  ID_MAX_BYTES,
  KEY_MAX_BYTES,
  LABEL_VALUE_MAX_BYTES,
  MAP_MAX_BYTES,
  NAME_MAX_BYTES,
} from '../../src/cri/input-limits';
import { clip, CriError, QUOTE_MAX_CHARS } from '../../src/errors';

/** The CriError a check throws: its kind and message. */
function refusal(check: () => unknown): { kind: string; message: string } {
  try {
    check();
  } catch (err) {
    assert.ok(err instanceof CriError, String(err));
    return { kind: err.kind, message: err.message };
  }
  assert.fail('expected the check to refuse');
}

describe('clip', () => {
  it('leaves text of at most 128 characters alone', () => {
    assert.equal(clip(''), '');
    assert.equal(clip('x'.repeat(QUOTE_MAX_CHARS)), 'x'.repeat(QUOTE_MAX_CHARS));
  });

  it('cuts longer text to 128 characters and an ellipsis', () => {
    assert.equal(clip('x'.repeat(QUOTE_MAX_CHARS + 1)), `${'x'.repeat(QUOTE_MAX_CHARS)}…`);
    assert.equal(clip('x'.repeat(1 << 20)).length, QUOTE_MAX_CHARS + 1);
  });

  it('never cuts a surrogate pair in half', () => {
    const text = `${'x'.repeat(QUOTE_MAX_CHARS - 1)}😀tail`;
    assert.equal(clip(text), `${'x'.repeat(QUOTE_MAX_CHARS - 1)}…`);
  });

  it('takes another bound when given one', () => {
    assert.equal(clip('abcdef', 3), 'abc…');
  });
});

describe('input limits', () => {
  it('takes an id of 256 bytes and refuses 257, naming the field and its length only', () => {
    assert.equal(checkId('pod_sandbox_id', 'a'.repeat(ID_MAX_BYTES)), 'a'.repeat(ID_MAX_BYTES));
    assert.deepEqual(refusal(() => checkId('pod_sandbox_id', 'a'.repeat(ID_MAX_BYTES + 1))), {
      kind: 'invalid-argument',
      message: 'pod_sandbox_id is 257 bytes; ids are at most 256',
    });
  });

  it('counts UTF-8 bytes, not characters', () => {
    // 129 characters of two bytes each: under 256 characters, over 256 bytes.
    assert.equal(refusal(() => checkId('filter.id', 'é'.repeat(129))).message, 'filter.id is 258 bytes; ids are at most 256');
    assert.equal(refusal(() => checkName('config.metadata.name', '😀'.repeat(64))).message, 'config.metadata.name is 256 bytes; names are at most 253');
  });

  it('takes names of 253 bytes (a Kubernetes DNS subdomain)', () => {
    assert.equal(checkName('config.metadata.name', 'n'.repeat(NAME_MAX_BYTES)).length, NAME_MAX_BYTES);
    assert.match(refusal(() => checkName('runtime_handler', 'n'.repeat(NAME_MAX_BYTES + 1))).message, /^runtime_handler is 254 bytes/);
  });

  it('bounds label keys and values, quoting at most 128 characters of the key', () => {
    const key = `${'p'.repeat(253)}/${'k'.repeat(63)}`;
    assert.equal(KEY_MAX_BYTES, key.length);
    checkLabels('config.labels', { [key]: 'v'.repeat(LABEL_VALUE_MAX_BYTES) });
    assert.equal(
      refusal(() => checkLabels('config.labels', { [`${key}x`]: '' })).message,
      'config.labels has a key of 318 bytes; keys are at most 317',
    );
    const value = refusal(() => checkLabels('config.labels', { [key]: 'v'.repeat(LABEL_VALUE_MAX_BYTES + 1) })).message;
    assert.equal(value, `config.labels["${'p'.repeat(QUOTE_MAX_CHARS)}…"] is 254 bytes; label values are at most 253`);
  });

  it('bounds annotations by their total, not each value', () => {
    checkAnnotations('config.annotations', { a: 'v'.repeat(MAP_MAX_BYTES - 1) });
    assert.equal(
      refusal(() => checkAnnotations('config.annotations', { a: 'v'.repeat(MAP_MAX_BYTES - 1), b: '' })).message,
      'config.annotations are 262145 bytes in all; at most 262144',
    );
  });
});
