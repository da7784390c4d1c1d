// The embedded sandbox store (the default mode): every sandbox is a real network namespace
// pinned under <state-dir>/netns/<id>, and its record lives in <state-dir>/sandboxes/<id>.json.
// No container runtime is involved; this is enough for kubelet-less use with crictl, for
// tests, and for anything that only needs "a pod network namespace with a port in it".

import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { alreadyExists, clip, invalidArgument, notFound, permissionDenied } from '../errors';
import type { Logger } from '../log';
import { hasSysAdmin } from '../capabilities';
import { declaredTcpPorts, podPorts, type PodPorts } from '../policy/port-policy';
import { createNetns, isNetnsMounted, removeNetns } from './namespaces';
import { RecordDir } from './records';
import type {
  NetworkMode,
  PortMapping,
  ResolvedSandbox,
  SandboxMetadata,
  SandboxRecord,
  SandboxResolver,
  SandboxState,
} from './types';

export interface NewSandbox {
  metadata: SandboxMetadata;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  runtimeHandler: string;
  networkMode: NetworkMode;
  portMappings: PortMapping[];
}

export interface SandboxFilter {
  /** The full id or a unique prefix of it, as crictl accepts. */
  id?: string;
  state?: SandboxState;
  labelSelector?: Record<string, string>;
}

export interface EmbeddedStoreOptions {
  /** A sandbox's namespace is about to be removed: whoever keeps it open lets go (the dialer's handles). */
  namespaceRemoving?(netnsPath: string): void;
}

export class EmbeddedSandboxStore implements SandboxResolver {
  readonly #records: RecordDir;
  readonly #netnsDir: string;
  readonly #log: Logger;
  readonly #sandboxes = new Map<string, SandboxRecord>();
  /** Per-id operation chains: Run, Stop and Remove of one sandbox never interleave. */
  readonly #busy = new Map<string, Promise<unknown>>();
  /** Each record's ports as the policy reads them, worked out once (a record's ports never change). */
  readonly #ports = new WeakMap<SandboxRecord, PodPorts>();
  readonly #options: EmbeddedStoreOptions;

  private constructor(stateDir: string, log: Logger, options: EmbeddedStoreOptions) {
    this.#records = new RecordDir(join(stateDir, 'sandboxes'));
    this.#netnsDir = join(stateDir, 'netns');
    this.#log = log;
    this.#options = options;
  }

  /** Open the state dir and reload every sandbox; a vanished namespace comes back NOTREADY. */
  static async open(stateDir: string, log: Logger, options: EmbeddedStoreOptions = {}): Promise<EmbeddedSandboxStore> {
    const store = new EmbeddedSandboxStore(stateDir, log, options);
    await fs.mkdir(store.#records.dir, { recursive: true, mode: 0o700 });
    await fs.mkdir(store.#netnsDir, { recursive: true, mode: 0o755 });
    for (const record of await store.#records.readAll(log)) {
      if (record.netnsPath !== null && record.state === 'SANDBOX_READY' && !isNetnsMounted(record.netnsPath)) {
        log.warn('sandbox network namespace vanished; marking sandbox NOTREADY', {
          sandboxId: record.id,
          netnsPath: record.netnsPath,
        });
        record.state = 'SANDBOX_NOTREADY';
        await store.#records.write(record);
      }
      store.#sandboxes.set(record.id, record);
    }
    log.info('sandbox store loaded', { stateDir, sandboxes: store.#sandboxes.size });
    return store;
  }

  /**
   * Read the records again and take what another process changed: after an upgrade, what
   * the old process did between this one's start and its release of the CRI socket.
   */
  async reload(): Promise<void> {
    const onDisk = new Map((await this.#records.readAll(this.#log)).map((r) => [r.id, r]));
    for (const id of this.#sandboxes.keys()) if (!onDisk.has(id)) this.#sandboxes.delete(id);
    for (const [id, record] of onDisk) {
      const known = this.#sandboxes.get(id);
      if (known === undefined) this.#sandboxes.set(id, record);
      else known.state = record.state;
    }
  }

  async run(spec: NewSandbox): Promise<SandboxRecord> {
    const { metadata } = spec;
    if (metadata.name === '' || metadata.namespace === '') {
      throw invalidArgument('sandbox config must include metadata with a name and a namespace');
    }
    const existing = [...this.#sandboxes.values()].find((s) => sameMetadata(s.metadata, metadata));
    if (existing !== undefined) {
      throw alreadyExists(
        `sandbox name ${clip(metadataKey(metadata))} is reserved by sandbox ${existing.id}; remove it first`,
      );
    }
    const id = randomBytes(32).toString('hex');
    let netnsPath: string | null = null;
    if (spec.networkMode === 'POD') {
      if (!(await hasSysAdmin())) {
        throw permissionDenied(
          'cannot create a network namespace for the sandbox: cri-portforward runs without CAP_SYS_ADMIN (run it as root)',
        );
      }
      netnsPath = join(this.#netnsDir, id);
    }
    const record: SandboxRecord = {
      id,
      metadata: { ...metadata },
      labels: { ...spec.labels },
      annotations: { ...spec.annotations },
      runtimeHandler: spec.runtimeHandler,
      createdAt: (BigInt(Date.now()) * 1_000_000n).toString(),
      state: 'SANDBOX_READY',
      networkMode: spec.networkMode,
      netnsPath,
      portMappings: spec.portMappings.map((m) => ({ ...m })),
    };
    return this.#exclusive(id, async () => {
      if (netnsPath !== null) await createNetns(netnsPath);
      try {
        await this.#records.write(record);
      } catch (err) {
        if (netnsPath !== null) await removeNetns(netnsPath).catch(() => undefined);
        throw err;
      }
      this.#sandboxes.set(id, record);
      this.#log.info('sandbox created', { sandboxId: id, pod: metadataKey(metadata), netnsPath });
      return record;
    });
  }

  /** Idempotent; the namespace stays until Remove, as in containerd. */
  async stop(id: string): Promise<void> {
    const record = this.#lookup(id);
    if (record === undefined) throw notFound(`sandbox ${clip(id)} not found`);
    await this.#exclusive(record.id, async () => {
      if (record.state === 'SANDBOX_NOTREADY') return;
      record.state = 'SANDBOX_NOTREADY';
      await this.#records.write(record);
      this.#log.info('sandbox stopped', { sandboxId: record.id });
    });
  }

  /** Deletes the namespace and the record; an unknown id is not an error (CRI requires it). */
  async remove(id: string): Promise<void> {
    const record = this.#lookup(id);
    if (record === undefined) return;
    await this.#exclusive(record.id, async () => {
      if (!this.#sandboxes.has(record.id)) return;
      if (record.netnsPath !== null) {
        this.#options.namespaceRemoving?.(record.netnsPath);
        await removeNetns(record.netnsPath);
      }
      await this.#records.delete(record.id);
      this.#sandboxes.delete(record.id);
      this.#log.info('sandbox removed', { sandboxId: record.id });
    });
  }

  get(id: string): SandboxRecord | undefined {
    return this.#lookup(id);
  }

  list(filter: SandboxFilter = {}): SandboxRecord[] {
    const selector = Object.entries(filter.labelSelector ?? {});
    return [...this.#sandboxes.values()].filter(
      (s) =>
        (filter.id === undefined || s.id.startsWith(filter.id)) &&
        (filter.state === undefined || s.state === filter.state) &&
        selector.every(([key, value]) => s.labels[key] === value),
    );
  }

  async resolve(id: string): Promise<ResolvedSandbox | undefined> {
    return this.peek(id);
  }

  /** The store is in memory: always known now. */
  peek(id: string): ResolvedSandbox | undefined {
    const record = this.#lookup(id);
    if (record === undefined) return undefined;
    let ports = this.#ports.get(record);
    if (ports === undefined) {
      ports = podPorts(declaredTcpPorts(record.portMappings.map((m) => ({ protocol: m.protocol, container_port: m.containerPort }))), record.annotations);
      this.#ports.set(record, ports);
    }
    return { id: record.id, ready: record.state === 'SANDBOX_READY', netnsPath: record.netnsPath, pod: record.metadata, ports };
  }

  countByState(): Record<SandboxState, number> {
    const counts: Record<SandboxState, number> = { SANDBOX_READY: 0, SANDBOX_NOTREADY: 0 };
    for (const s of this.#sandboxes.values()) counts[s.state]++;
    return counts;
  }

  /** Waits for operations in flight, so that a shutdown never leaves a torn record. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.#busy.values()]);
  }

  /** Full id, or a prefix that names exactly one sandbox. */
  #lookup(id: string): SandboxRecord | undefined {
    if (id === '') return undefined;
    const exact = this.#sandboxes.get(id);
    if (exact !== undefined) return exact;
    const matches = this.list({ id });
    return matches.length === 1 ? matches[0] : undefined;
  }

  #exclusive<T>(id: string, op: () => Promise<T>): Promise<T> {
    const previous = this.#busy.get(id) ?? Promise.resolve();
    const next = previous.then(op, op);
    const settled = next.then(
      () => undefined,
      () => undefined,
    );
    this.#busy.set(id, settled);
    void settled.then(() => {
      if (this.#busy.get(id) === settled) this.#busy.delete(id);
    });
    return next;
  }
}

function sameMetadata(a: SandboxMetadata, b: SandboxMetadata): boolean {
  return a.name === b.name && a.namespace === b.namespace && a.uid === b.uid && a.attempt === b.attempt;
}

function metadataKey(m: SandboxMetadata): string {
  return `${m.name}_${m.namespace}_${m.uid}_${m.attempt}`;
}
