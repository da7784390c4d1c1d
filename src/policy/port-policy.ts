// Which ports of a pod port-forward may reach (--port-policy). Kubernetes RBAC grants
// pods/portforward for every port of a pod at once, localhost-only admin endpoints and
// sidecar-guarded app ports included. The runtime sees what the pod declares (kubelet
// sends every container port of the spec in PodSandboxConfig.port_mappings) and its
// annotations, so it can narrow that:
// - any (default): every port, as upstream;
// - declared: the pod's TCP container ports, plus those its cri-portforward.io/ports
//   annotation lists ("8080,9000-9010", or "*" for all);
// - under either, cri-portforward.io/port-forward: deny closes the pod entirely.
// A malformed annotation closes the pod (fail closed) with a message naming it; embedded
// mode refuses it already at RunPodSandbox.

export type PortPolicyMode = 'any' | 'declared';
export const PORT_POLICY_MODES: readonly PortPolicyMode[] = ['any', 'declared'];

export const PORTS_ANNOTATION = 'cri-portforward.io/ports';
export const PORT_FORWARD_ANNOTATION = 'cri-portforward.io/port-forward';

/** Why a port (or the whole pod) is closed: the label of cri_portforward_policy_denied_total. */
export type PolicyRefusalReason = 'pod-denies' | 'not-declared' | 'bad-annotation';

/** Inclusive port ranges; 'all' for "*". */
export type PortRanges = 'all' | readonly (readonly [number, number])[];

/** What a pod says about port-forward, read once when its sandbox is resolved. */
export interface PodPorts {
  /** TCP container ports of the pod spec; undefined when the runtime did not tell us. */
  readonly declared: readonly number[] | undefined;
  /** cri-portforward.io/ports, parsed; undefined when absent. */
  readonly listed: PortRanges | undefined;
  /** cri-portforward.io/port-forward: deny. */
  readonly denied: boolean;
  /** A malformed annotation, as a sentence naming it and its value. */
  readonly malformed: string | undefined;
}

/** Who a sandbox belongs to, for messages and the audit trail. */
export interface PodIdentity {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
}

export class PolicyRefusal extends Error {
  constructor(
    readonly reason: PolicyRefusalReason,
    message: string,
  ) {
    super(message);
    this.name = 'PolicyRefusal';
  }
}

/** The annotation's ports, or what is wrong with it. */
export function parsePortList(value: string): PortRanges | { problem: string } {
  const text = value.trim();
  if (text === '*') return 'all';
  if (text === '') return { problem: 'it is empty' };
  const ranges: [number, number][] = [];
  for (const part of text.split(',')) {
    const m = /^\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?$/.exec(part);
    if (m === null) return { problem: `"${part.trim()}" is not a port or a range like 9000-9010` };
    const low = Number(m[1]);
    const high = m[2] === undefined ? low : Number(m[2]);
    if (low < 1 || high > 65535) return { problem: `${part.trim()} is outside 1-65535` };
    if (high < low) return { problem: `${part.trim()} ends before it starts` };
    ranges.push([low, high]);
  }
  return ranges;
}

/** The malformed annotation among these, as a sentence; undefined when both are well formed. */
export function annotationProblem(annotations: Readonly<Record<string, string>>): string | undefined {
  const access = annotations[PORT_FORWARD_ANNOTATION];
  if (access !== undefined && access !== 'deny' && access !== 'allow') {
    return `annotation ${PORT_FORWARD_ANNOTATION}="${clipValue(access)}" is malformed: it must be "deny" or "allow"`;
  }
  const ports = annotations[PORTS_ANNOTATION];
  if (ports !== undefined) {
    const parsed = parsePortList(ports);
    if (parsed !== 'all' && 'problem' in parsed) return `annotation ${PORTS_ANNOTATION}="${clipValue(ports)}" is malformed: ${parsed.problem}`;
  }
  return undefined;
}

/** What a pod's spec and annotations say about its ports. */
export function podPorts(declared: readonly number[] | undefined, annotations: Readonly<Record<string, string>>): PodPorts {
  const malformed = annotationProblem(annotations);
  const listedText = annotations[PORTS_ANNOTATION];
  const listed = listedText === undefined || malformed !== undefined ? undefined : (parsePortList(listedText) as PortRanges);
  return { declared, listed, denied: annotations[PORT_FORWARD_ANNOTATION] === 'deny', malformed };
}

/** The TCP container ports of CRI port_mappings (protocol as an enum name, or Go's 0 / absent for TCP). */
export function declaredTcpPorts(mappings: readonly { protocol?: unknown; container_port?: unknown }[]): number[] {
  const ports = new Set<number>();
  for (const m of mappings) {
    const tcp = m.protocol === undefined || m.protocol === null || m.protocol === 'TCP' || m.protocol === 0;
    const port = Number(m.container_port);
    if (tcp && Number.isInteger(port) && port >= 1 && port <= 65535) ports.add(port);
  }
  return [...ports].sort((a, b) => a - b);
}

export class PortPolicy {
  constructor(readonly mode: PortPolicyMode) {}

  /** Why the whole pod is closed to port-forward, or undefined. */
  podRefusal(pod: PodIdentity, ports: PodPorts): PolicyRefusal | undefined {
    if (ports.malformed !== undefined && (this.mode === 'declared' || !ports.malformed.includes(PORTS_ANNOTATION))) {
      return new PolicyRefusal('bad-annotation', `pod ${podName(pod)} is closed to port-forward: its ${ports.malformed}; fix the annotation to open it`);
    }
    if (ports.denied) {
      return new PolicyRefusal(
        'pod-denies',
        `pod ${podName(pod)} is closed to port-forward by its annotation ${PORT_FORWARD_ANNOTATION}=deny; remove the annotation to open it`,
      );
    }
    return undefined;
  }

  /** Why this port of the pod is closed to port-forward, or undefined when it is open. */
  refusal(pod: PodIdentity, ports: PodPorts, port: number): PolicyRefusal | undefined {
    const closed = this.podRefusal(pod, ports);
    if (closed !== undefined || this.mode === 'any') return closed;
    if (ports.listed === 'all' || ports.declared?.includes(port) || (ports.listed !== undefined && inRanges(ports.listed, port))) return undefined;
    const declared = ports.declared === undefined ? 'the runtime does not report its declared ports' : `it declares ${ports.declared.length === 0 ? 'no TCP ports' : `TCP ${ports.declared.join(', ')}`}`;
    return new PolicyRefusal(
      'not-declared',
      `port ${port} of pod ${podName(pod)} is closed to port-forward: --port-policy=declared opens only the ports a pod declares (${declared}); ` +
        `declare it as a containerPort in the pod spec or list it in the annotation ${PORTS_ANNOTATION}`,
    );
  }
}

function inRanges(ranges: readonly (readonly [number, number])[], port: number): boolean {
  for (const [low, high] of ranges) if (port >= low && port <= high) return true;
  return false;
}

function podName(pod: PodIdentity): string {
  return pod.namespace === '' && pod.name === '' ? '(unknown)' : `${pod.namespace}/${pod.name}`;
}

/** Annotation values are client input: quote at most 64 characters of one. */
function clipValue(value: string): string {
  return value.length <= 64 ? value : `${value.slice(0, 64)}…`;
}
