// The CRI runtime.v1 API, loaded once from proto/runtime/v1/api.proto. Messages are plain
// objects with the proto's snake_case field names, int64 as decimal strings (nanosecond
// timestamps exceed 2^53) and enums as their names.

import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { PACKAGE_ROOT } from './package-info';

const CRI_PROTO_PATH = join(PACKAGE_ROOT, 'proto', 'runtime', 'v1', 'api.proto');

const CRI_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

const packageDefinition = protoLoader.loadSync(CRI_PROTO_PATH, CRI_LOADER_OPTIONS);
const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as {
  runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor } };
};

/** Service definition of runtime.v1.RuntimeService (the RPCs we decode). */
export const RuntimeServiceDefinition: grpc.ServiceDefinition = loaded.runtime.v1.RuntimeService.service;
/** Client constructor, for tests and for the upstream resolver of proxy mode. */
export const RuntimeServiceClient: grpc.ServiceClientConstructor = loaded.runtime.v1.RuntimeService;

// The message shapes our handlers read and write (only the fields we use).

export interface PodSandboxMetadataMsg {
  name: string;
  uid: string;
  namespace: string;
  attempt: number;
}

export interface PortMappingMsg {
  protocol: string;
  container_port: number;
  host_port: number;
  host_ip: string;
}

export interface PodSandboxConfigMsg {
  metadata: PodSandboxMetadataMsg | null;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  port_mappings: PortMappingMsg[];
  linux: {
    security_context: { namespace_options: { network: string } | null } | null;
  } | null;
}

export interface RunPodSandboxRequestMsg {
  config: PodSandboxConfigMsg | null;
  runtime_handler: string;
}

export interface PodSandboxIdRequestMsg {
  pod_sandbox_id: string;
}

export interface PodSandboxStatusRequestMsg extends PodSandboxIdRequestMsg {
  verbose: boolean;
}

export interface ListPodSandboxRequestMsg {
  filter: {
    id: string;
    state: { state: string } | null;
    label_selector: Record<string, string>;
  } | null;
}

export interface PortForwardRequestMsg {
  pod_sandbox_id: string;
  port: number[];
}

export interface StatusRequestMsg {
  verbose: boolean;
}
