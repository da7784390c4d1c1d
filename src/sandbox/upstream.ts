// Sandboxes of an upstream runtime (containerd, CRI-O) in proxy mode: PortForward and the
// streaming server resolve a sandbox through upstream PodSandboxStatus(verbose=true).
// Network mode from status.linux.namespaces.options.network (NODE = host network); the
// netns path from the verbose info (PROTOCOL.md section 2): containerd 2.x
// `sandboxMetadata.Metadata.NetNSPath`; containerd 1.6 and CRI-O the OCI spec's
// `runtimeSpec.linux.namespaces[type=network].path`.

import * as grpc from '@grpc/grpc-js';
import { RuntimeServiceClient } from '../cri-api';
import { clip, CriError } from '../errors';
import type { Logger } from '../log';
import type { ResolvedSandbox, SandboxResolver } from './types';

/** One status call may not hang a PortForward or a dial for longer than this. */
const UPSTREAM_CALL_TIMEOUT_MS = 5_000;

interface StatusResponse {
  status: { id: string; state: string; linux: { namespaces: { options: { network: string } | null } | null } | null } | null;
  info: Record<string, string>;
}

export class UpstreamSandboxResolver implements SandboxResolver {
  readonly #client: grpc.Client & Record<string, Function>;
  readonly #target: string;
  readonly #log: Logger | undefined;

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
    const hostNetwork = status.linux?.namespaces?.options?.network === 'NODE';
    const netnsPath = hostNetwork ? null : netnsPathFromInfo(res.info['info']);
    if (!hostNetwork && netnsPath === null) {
      throw new CriError('failed-precondition', `upstream CRI runtime ${this.#target} reports no network namespace for sandbox ${clip(id)}`);
    }
    return { id: status.id || id, ready: status.state === 'SANDBOX_READY', netnsPath };
  }

  close(): void {
    this.#client.close();
  }
}

/** The netns path in a verbose PodSandboxStatus info["info"] document, or null. */
export function netnsPathFromInfo(info: string | undefined): string | null {
  if (info === undefined || info === '') return null;
  let doc: any;
  try {
    doc = JSON.parse(info);
  } catch {
    return null;
  }
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
