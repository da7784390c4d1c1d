// Bounds on what a CRI client may send, checked before the input is used. Over a bound is
// INVALID_ARGUMENT naming the field and its length, never its content: a status message
// travels as the grpc-message header, and one that echoes a 1 MiB id is a header no HTTP/2
// peer accepts (the call then gets no answer at all). A message that does quote client
// input clips it (errors.ts). CRI itself sets no bounds; ours follow Kubernetes' own
// validation, generous enough that no request a kubelet makes is refused.

import type { PortMappingMsg } from '../cri-api';
import { clip, invalidArgument } from '../errors';
import { annotationProblem } from '../policy/port-policy';
import type { PortMapping } from '../sandbox/types';

/** A whole gRPC request message (both modes): kubelet's are far smaller; crictl's default is 16 MiB too. */
export const MESSAGE_MAX_BYTES = 16 * 1024 * 1024;
/** A sandbox or container id, full or a prefix: upstream ids are 64 hex digits, ours too. */
export const ID_MAX_BYTES = 256;
/** metadata name, namespace and uid, runtime_handler: Kubernetes names are DNS subdomains of at most 253. */
export const NAME_MAX_BYTES = 253;
/** A label or annotation key: a Kubernetes qualified name, a 253-byte DNS subdomain prefix, '/' and a 63-byte name. */
export const KEY_MAX_BYTES = 253 + 1 + 63;
/** A label value: Kubernetes allows 63, but kubelet labels a sandbox with its pod's name (up to 253). */
export const LABEL_VALUE_MAX_BYTES = 253;
/** All keys and values of one map (labels, annotations, a label selector): Kubernetes' annotation total, 256 KiB. */
export const MAP_MAX_BYTES = 256 * 1024;
/** PortForward's port list: one entry per TCP port is already more than any client asks for. */
export const PORTS_MAX = 65535;

/** A sandbox or container id (or prefix) of at most ID_MAX_BYTES. */
export function checkId(field: string, value: string): string {
  return checkBytes(field, value, ID_MAX_BYTES, 'ids');
}

/** A name (metadata, runtime handler) of at most NAME_MAX_BYTES. */
export function checkName(field: string, value: string): string {
  return checkBytes(field, value, NAME_MAX_BYTES, 'names');
}

/** Labels or a label selector: each key, each value and the whole map bounded. */
export function checkLabels(field: string, labels: Record<string, string>): Record<string, string> {
  return checkMap(field, labels, LABEL_VALUE_MAX_BYTES);
}

/** Annotations: each key and the whole map bounded (Kubernetes bounds no single value). */
export function checkAnnotations(field: string, annotations: Record<string, string>): Record<string, string> {
  return checkMap(field, annotations, undefined);
}

/** A pod's port-forward annotations (port-policy.ts): a malformed one is refused by name. */
export function checkPortAnnotations(annotations: Record<string, string>): Record<string, string> {
  const problem = annotationProblem(annotations);
  if (problem !== undefined) throw invalidArgument(`config.annotations: ${problem}`);
  return annotations;
}

/** Port mappings: at most PORTS_MAX, container ports in 1..65535, host ports in 0..65535. */
export function checkPortMappings(field: string, mappings: PortMappingMsg[]): PortMapping[] {
  if (mappings.length > PORTS_MAX) throw invalidArgument(`${field} has ${mappings.length} entries; at most ${PORTS_MAX}`);
  return mappings.map((m, i) => {
    if (!Number.isInteger(m.container_port) || m.container_port < 1 || m.container_port > 65535) {
      throw invalidArgument(`${field}[${i}].container_port ${m.container_port} is outside 1..65535`);
    }
    if (!Number.isInteger(m.host_port) || m.host_port < 0 || m.host_port > 65535) {
      throw invalidArgument(`${field}[${i}].host_port ${m.host_port} is outside 0..65535`);
    }
    const protocol = m.protocol === 'UDP' || m.protocol === 'SCTP' ? m.protocol : 'TCP';
    return { protocol, containerPort: m.container_port, hostPort: m.host_port, hostIp: checkName(`${field}[${i}].host_ip`, m.host_ip) };
  });
}

function checkMap(field: string, map: Record<string, string>, valueMaxBytes: number | undefined): Record<string, string> {
  let total = 0;
  for (const [key, value] of Object.entries(map)) {
    const keyBytes = Buffer.byteLength(key);
    if (keyBytes > KEY_MAX_BYTES) {
      throw invalidArgument(`${field} has a key of ${keyBytes} bytes; keys are at most ${KEY_MAX_BYTES}`);
    }
    if (valueMaxBytes !== undefined) checkBytes(`${field}[${JSON.stringify(clip(key))}]`, value, valueMaxBytes, 'label values');
    total += keyBytes + Buffer.byteLength(value);
  }
  if (total > MAP_MAX_BYTES) throw invalidArgument(`${field} are ${total} bytes in all; at most ${MAP_MAX_BYTES}`);
  return map;
}

function checkBytes(field: string, value: string, maxBytes: number, what: string): string {
  const bytes = Buffer.byteLength(value);
  if (bytes > maxBytes) throw invalidArgument(`${field} is ${bytes} bytes; ${what} are at most ${maxBytes}`);
  return value;
}
