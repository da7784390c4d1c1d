// The port policy's own rules: the ports annotation's grammar, and which ports each policy
// opens for what a pod declares (the end-to-end cases are in integration/port-policy).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { declaredTcpPorts, parsePortList, podPorts, PortPolicy } from '../../src/policy/port-policy';

const POD = { namespace: 'shop', name: 'cart', uid: 'u1' };

describe('port policy', () => {
  it('parses ports, ranges and "*", with spaces; names what is wrong otherwise', () => {
    assert.deepEqual(parsePortList(' 8080, 9000-9010 ,1'), [[8080, 8080], [9000, 9010], [1, 1]]);
    assert.equal(parsePortList('*'), 'all');
    for (const [bad, why] of [['', /empty/], ['80,', /"" is not a port/], ['0', /outside 1-65535/], ['a-b', /not a port/], ['5-4', /ends before/], ['65536', /outside/]] as const) {
      const result = parsePortList(bad);
      assert.ok(typeof result === 'object' && 'problem' in result, bad);
      assert.match(result.problem, why);
    }
  });

  it('reads TCP container ports from CRI port_mappings, enum names or Go numbers', () => {
    assert.deepEqual(declaredTcpPorts([{ protocol: 'TCP', container_port: 80 }, { protocol: 'UDP', container_port: 53 }, { container_port: 8080 }, { protocol: 0, container_port: 80 }, { protocol: 1, container_port: 5353 }]), [80, 8080]);
  });

  it('declared: opens declared and listed ports only; any: opens every port; deny and a bad annotation close the pod', () => {
    const declared = new PortPolicy('declared');
    const any = new PortPolicy('any');
    const ports = podPorts([8080], { 'cri-portforward.io/ports': '9000-9001' });
    assert.equal(declared.refusal(POD, ports, 8080), undefined);
    assert.equal(declared.refusal(POD, ports, 9001), undefined);
    assert.equal(declared.refusal(POD, ports, 9002)?.reason, 'not-declared');
    assert.equal(any.refusal(POD, ports, 9002), undefined);
    const unknown = declared.refusal(POD, podPorts(undefined, {}), 80);
    assert.match(unknown!.message, /the runtime does not report its declared ports/);
    assert.equal(declared.refusal(POD, podPorts([], { 'cri-portforward.io/ports': '*' }), 1), undefined);
    const denied = podPorts([8080], { 'cri-portforward.io/port-forward': 'deny' });
    assert.equal(any.refusal(POD, denied, 8080)?.reason, 'pod-denies');
    const badList = podPorts([8080], { 'cri-portforward.io/ports': '80-' });
    assert.equal(declared.refusal(POD, badList, 8080)?.reason, 'bad-annotation', 'declared fails closed');
    assert.equal(any.refusal(POD, badList, 8080), undefined, 'any does not read the ports list');
    assert.equal(any.refusal(POD, podPorts([], { 'cri-portforward.io/port-forward': 'maybe' }), 1)?.reason, 'bad-annotation');
  });
});
