// runtime.v1.RuntimeService handlers of the embedded mode. RPCs that are not declared here
// (containers, exec, images, ...) are answered by grpc-js itself with UNIMPLEMENTED and
// "The server does not implement the method /runtime.v1.<Service>/<Method>".

import type * as grpc from '@grpc/grpc-js';
import type {
  ListPodSandboxRequestMsg,
  PodSandboxIdRequestMsg,
  PodSandboxStatusRequestMsg,
  PortForwardRequestMsg,
  RunPodSandboxRequestMsg,
  StatusRequestMsg,
} from '../cri-api';
import { clip, invalidArgument, notFound } from '../errors';
import type { Logger } from '../log';
import { PACKAGE_VERSION } from '../package-info';
import type { EmbeddedSandboxStore } from '../sandbox/embedded';
import type { SandboxRecord, SandboxState } from '../sandbox/types';
import { toServiceError } from './grpc-status';
import { checkAnnotations, checkId, checkLabels, checkName, checkPortAnnotations, checkPortMappings } from './input-limits';

export const RUNTIME_NAME = 'cri-portforward';
/** The CRI API version we speak (Version.runtime_api_version). */
export const RUNTIME_API_VERSION = 'v1';
/** VersionResponse.version: the kubelet runtime API version, "0.1.0" for all CRI runtimes. */
const KUBELET_API_VERSION = '0.1.0';

export interface RuntimeServiceDeps {
  store: EmbeddedSandboxStore;
  /** PortForward, answered the same way in both modes (portforward.ts). */
  portForward: (req: PortForwardRequestMsg) => Promise<{ url: string }>;
  log: Logger;
}

type Handler<Req> = (request: Req) => Promise<object> | object;

/** Wrap a handler: errors become statuses (one mapping), failures are logged with the RPC. */
function unary<Req>(method: string, log: Logger, handler: Handler<Req>): grpc.handleUnaryCall<Req, object> {
  return (call, callback) => {
    Promise.resolve()
      .then(() => handler(call.request))
      .then(
        (response) => callback(null, response),
        (err: unknown) => {
          const serviceError = toServiceError(err);
          log.debug('CRI call failed', { method, code: serviceError.code, err });
          callback(serviceError, null);
        },
      );
  };
}

export function runtimeServiceHandlers(deps: RuntimeServiceDeps): grpc.UntypedServiceImplementation {
  const { store, log } = deps;
  return {
    Version: unary('Version', log, () => ({
      version: KUBELET_API_VERSION,
      runtime_name: RUNTIME_NAME,
      runtime_version: PACKAGE_VERSION,
      runtime_api_version: RUNTIME_API_VERSION,
    })),

    Status: unary<StatusRequestMsg>('Status', log, (req) => ({
      status: {
        conditions: [
          { type: 'RuntimeReady', status: true, reason: '', message: '' },
          { type: 'NetworkReady', status: true, reason: '', message: '' },
        ],
      },
      info: req.verbose ? { mode: JSON.stringify('embedded') } : {},
      runtime_handlers: [{ name: '', features: { recursive_read_only_mounts: false, user_namespaces: false } }],
    })),

    RunPodSandbox: unary<RunPodSandboxRequestMsg>('RunPodSandbox', log, async (req) => {
      const config = req.config;
      if (config === null || config.metadata === null) {
        throw invalidArgument('RunPodSandbox: config.metadata is required');
      }
      checkName('config.metadata.name', config.metadata.name);
      checkName('config.metadata.namespace', config.metadata.namespace);
      checkName('config.metadata.uid', config.metadata.uid);
      const network = config.linux?.security_context?.namespace_options?.network ?? 'POD';
      const record = await store.run({
        metadata: { ...config.metadata },
        labels: checkLabels('config.labels', config.labels),
        annotations: checkPortAnnotations(checkAnnotations('config.annotations', config.annotations)),
        portMappings: checkPortMappings('config.port_mappings', config.port_mappings),
        runtimeHandler: checkName('runtime_handler', req.runtime_handler),
        networkMode: network === 'NODE' ? 'NODE' : 'POD',
      });
      return { pod_sandbox_id: record.id };
    }),

    StopPodSandbox: unary<PodSandboxIdRequestMsg>('StopPodSandbox', log, async (req) => {
      await store.stop(requireSandboxId(req.pod_sandbox_id));
      return {};
    }),

    RemovePodSandbox: unary<PodSandboxIdRequestMsg>('RemovePodSandbox', log, async (req) => {
      await store.remove(requireSandboxId(req.pod_sandbox_id));
      return {};
    }),

    PodSandboxStatus: unary<PodSandboxStatusRequestMsg>('PodSandboxStatus', log, (req) => {
      const record = store.get(requireSandboxId(req.pod_sandbox_id));
      if (record === undefined) throw notFound(`sandbox ${clip(req.pod_sandbox_id)} not found`);
      return {
        status: sandboxStatus(record),
        info: req.verbose ? { info: verboseInfo(record) } : {},
        containers_statuses: [],
        timestamp: (BigInt(Date.now()) * 1_000_000n).toString(),
      };
    }),

    ListPodSandbox: unary<ListPodSandboxRequestMsg>('ListPodSandbox', log, (req) => {
      const filter = req.filter;
      if (filter !== null) {
        checkId('filter.id', filter.id);
        checkLabels('filter.label_selector', filter.label_selector);
      }
      const items = store.list({
        id: filter?.id || undefined,
        state: (filter?.state?.state as SandboxState | undefined) ?? undefined,
        labelSelector: filter?.label_selector,
      });
      return { items: items.map(listItem) };
    }),

    PortForward: unary<PortForwardRequestMsg>('PortForward', log, (req) => deps.portForward(req)),
  };
}

function requireSandboxId(id: string): string {
  if (checkId('pod_sandbox_id', id) === '') throw invalidArgument('pod_sandbox_id must not be empty');
  return id;
}

function metadataMsg(record: SandboxRecord): object {
  return { ...record.metadata };
}

function sandboxStatus(record: SandboxRecord): object {
  return {
    id: record.id,
    metadata: metadataMsg(record),
    state: record.state,
    created_at: record.createdAt,
    network: { ip: '', additional_ips: [] },
    linux: {
      namespaces: {
        options: { network: record.networkMode, pid: 'POD', ipc: 'POD' },
      },
    },
    labels: record.labels,
    annotations: record.annotations,
    runtime_handler: record.runtimeHandler,
  };
}

/**
 * Like containerd's verbose info: a JSON document; ours names the netns path plainly, and
 * carries the sandbox's config as containerd's does (metadata, labels, annotations,
 * port_mappings in the CRI's JSON field names).
 */
function verboseInfo(record: SandboxRecord): string {
  return JSON.stringify({
    id: record.id,
    netnsPath: record.netnsPath ?? '',
    networkMode: record.networkMode,
    hostNetwork: record.networkMode === 'NODE',
    runtimeHandler: record.runtimeHandler,
    config: {
      metadata: record.metadata,
      labels: record.labels,
      annotations: record.annotations,
      port_mappings: record.portMappings.map((m) => ({ protocol: m.protocol, container_port: m.containerPort, host_port: m.hostPort, host_ip: m.hostIp })),
    },
  });
}

function listItem(record: SandboxRecord): object {
  return {
    id: record.id,
    metadata: metadataMsg(record),
    state: record.state,
    created_at: record.createdAt,
    labels: record.labels,
    annotations: record.annotations,
    runtime_handler: record.runtimeHandler,
  };
}
