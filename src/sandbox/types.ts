import type { PodIdentity, PodPorts } from '../policy/port-policy';

// What the rest of the server knows about a sandbox. Streaming code needs only
// SandboxResolver; the CRI handlers of the embedded mode use the full record.

export type SandboxState = 'SANDBOX_READY' | 'SANDBOX_NOTREADY';

/** POD: the sandbox has its own network namespace; NODE: it uses the host's network. */
export type NetworkMode = 'POD' | 'NODE';

export interface SandboxMetadata {
  name: string;
  uid: string;
  namespace: string;
  attempt: number;
}

/** The persisted record of one embedded sandbox. */
export interface SandboxRecord {
  id: string;
  metadata: SandboxMetadata;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  runtimeHandler: string;
  /** Nanoseconds since the epoch, as a decimal string (it does not fit a double). */
  createdAt: string;
  state: SandboxState;
  networkMode: NetworkMode;
  /** Bind-mounted netns file; null for host network. */
  netnsPath: string | null;
  /** The TCP/UDP/SCTP container ports of the pod spec, as RunPodSandbox got them. */
  portMappings: PortMapping[];
}

export interface PortMapping {
  protocol: 'TCP' | 'UDP' | 'SCTP';
  containerPort: number;
  hostPort: number;
  hostIp: string;
}

/** The part of a sandbox that a port-forward needs. */
export interface ResolvedSandbox {
  id: string;
  ready: boolean;
  /** Namespace to dial in; null means the host's own network namespace. */
  netnsPath: string | null;
  /** Whose pod it is (audit trail, messages). */
  pod: PodIdentity;
  /** What the pod declares about its ports (--port-policy). */
  ports: PodPorts;
}

export interface SandboxResolver {
  /** undefined when no such sandbox exists. */
  resolve(id: string): Promise<ResolvedSandbox | undefined>;
  /**
   * What is known of it right now, without asking anyone: a fresh remembered answer, or
   * undefined (then resolve() decides). Saves a forwarded connection a promise and an await.
   */
  peek?(id: string): ResolvedSandbox | undefined;
  /** A resolver that remembers sandboxes drops what it knows of this one (its netns went away). */
  forget?(id: string): void;
}
