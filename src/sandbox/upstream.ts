// Sandboxes of an upstream runtime (containerd, CRI-O) in proxy mode: PortForward and the
// streaming server resolve a sandbox through upstream PodSandboxStatus(verbose=true).
// Network mode from status.linux.namespaces.options.network (NODE = host network); the
// netns path from the verbose info (PROTOCOL.md section 2): containerd 2.x
// `sandboxMetadata.Metadata.NetNSPath`; containerd 1.6 and CRI-O the OCI spec's
// `runtimeSpec.linux.namespaces[type=network].path`.
// For --port-policy: the pod's metadata and annotations from the status, its declared ports
// from the verbose info's `config.port_mappings` (containerd 1.6 and 2.x keep the sandbox's
// config there; Go writes the protocol as a number, TCP = 0, and omits it when 0).

import * as grpc from '@grpc/grpc-js';
import { RuntimeServiceClient } from '../cri-api';
import { clip, CriError } from '../errors';
import type { Logger } from '../log';
import { declaredTcpPorts, podPorts } from '../policy/port-policy';
import type { ResolvedSandbox, SandboxResolver } from './types';

/** One status call may not hang a PortForward or a dial for longer than this. */
const UPSTREAM_CALL_TIMEOUT_MS = 5_000;

interface StatusResponse {
  status: {
    id: string;
    state: string;
    metadata: { name: string; uid: string; namespace: string } | null;
    annotations: Record<string, string>;
    linux: { namespaces: { options: { network: string } | null } | null } | null;
  } | null;
  info: Record<string, string>;
}

export class UpstreamSandboxResolver implements SandboxResolver {
  readonly #client: grpc.Client & Record<string, Function>;
  readonly #target: string;
  readonly #log: Logger | undefined;
  /** Said once: this runtime's verbose info has no port_mappings. */
  #toldNoPorts = false;

  constructor(target: string, log?: Logger) {
    this.#target = target;
    this.#log = log;
    this.#client = new RuntimeServiceClient(target, grpc.credentials.createInsecure()) as grpc.Client & Record<string, Function>;
  }

  async resolve(id: string): Promise<ResolvedSandbox | undefined> {
    let res: StatusResponse;
    this.#log?.debug('asking upstream for a sandbox', { sandboxId: id });
    try {
      res = await new Promise<StatusResponse>((resolve, reject) =>
        this.#client.PodSandboxStatus!(
          { pod_sandbox_id: id, verbose: true },
          { deadline: Date.now() + UPSTREAM_CALL_TIMEOUT_MS },
          (err: grpc.ServiceError | null, value: StatusResponse) => (err ? reject(err) : resolve(value)),
        ),
      );
    } catch (err) {
      const e = err as grpc.ServiceError;
      if (e.code === grpc.status.NOT_FOUND) return undefined;
      throw new CriError('unavailable', `upstream CRI runtime ${this.#target}: PodSandboxStatus: ${e.details ?? e.message}`);
    }
    const status = res.status;
    if (status === null) return undefined;
    const doc = parseInfo(res.info['info']);
    const hostNetwork = status.linux?.namespaces?.options?.network === 'NODE';
    const netnsPath = hostNetwork ? null : netnsPathOf(doc);
    if (!hostNetwork && netnsPath === null) {
      throw new CriError('failed-precondition', `upstream CRI runtime ${this.#target} reports no network namespace for sandbox ${clip(id)}`);
    }
    const mappings: unknown = doc?.config?.port_mappings ?? (doc?.config !== undefined ? [] : undefined);
    if (!Array.isArray(mappings) && !this.#toldNoPorts) {
      this.#toldNoPorts = true;
      this.#log?.warn("upstream's verbose sandbox status has no config.port_mappings: --port-policy=declared opens only the ports of the cri-portforward.io/ports annotation", {
        upstream: this.#target,
      });
    }
    const metadata = status.metadata ?? { name: '', uid: '', namespace: '' };
    return {
      id: status.id || id,
      ready: status.state === 'SANDBOX_READY',
      netnsPath,
      pod: { namespace: metadata.namespace, name: metadata.name, uid: metadata.uid },
      ports: podPorts(Array.isArray(mappings) ? declaredTcpPorts(mappings) : undefined, status.annotations ?? {}),
    };
  }

  close(): void {
    this.#client.close();
  }
}

/** A verbose PodSandboxStatus info["info"] document, or undefined when there is none. */
function parseInfo(info: string | undefined): any {
  if (info === undefined || info === '') return undefined;
  try {
    return JSON.parse(info);
  } catch {
    return undefined;
  }
}

/** The netns path in a verbose PodSandboxStatus info["info"] document, or null. */
export function netnsPathFromInfo(info: string | undefined): string | null {
  return netnsPathOf(parseInfo(info));
}

function netnsPathOf(doc: any): string | null {
  const fromMetadata = doc?.sandboxMetadata?.Metadata?.NetNSPath ?? doc?.sandboxMetadata?.NetNSPath;
  if (typeof fromMetadata === 'string' && fromMetadata !== '') return fromMetadata;
  const namespaces: unknown = doc?.runtimeSpec?.linux?.namespaces;
  if (Array.isArray(namespaces)) {
    const net = namespaces.find((n) => n?.type === 'network');
    if (typeof net?.path === 'string' && net.path !== '') return net.path;
  }
  if (typeof doc?.netnsPath === 'string' && doc.netnsPath !== '') return doc.netnsPath; // an embedded cri-portforward
  return null;
}
