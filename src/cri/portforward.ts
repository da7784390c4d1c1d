// PortForward, the one RPC we always answer ourselves (embedded and proxy mode alike):
// validate, resolve the sandbox, apply the port policy to the ports the request names,
// cache the request under a one-time token, return its URL. A request that names no ports
// (kubelet's SPDY path) is judged port by port when the client opens a stream.

import type { PortForwardRequestMsg } from '../cri-api';
import { clip, CriError, failedPrecondition, invalidArgument, notFound, permissionDenied } from '../errors';
import type { Logger } from '../log';
import type { Metrics } from '../metrics';
import type { PolicyRefusal, PortPolicy } from '../policy/port-policy';
import type { SandboxResolver } from '../sandbox/types';
import { portForwardUrl } from '../streaming/portforward-url';
import { tokenTag, type TokenCache } from '../streaming/tokens';
import { checkId, PORTS_MAX } from './input-limits';

export interface PortForwardIssuer {
  resolver: SandboxResolver;
  tokens: TokenCache;
  /** e.g. http://127.0.0.1:35127 — URLs are <base>/portforward/<token>. */
  streamBaseUrl: string;
  policy: PortPolicy;
  metrics: Metrics;
  log: Logger;
}

export async function issuePortForward(issuer: PortForwardIssuer, req: PortForwardRequestMsg): Promise<{ url: string }> {
  const sandboxId = checkId('pod_sandbox_id', req.pod_sandbox_id);
  if (sandboxId === '') throw invalidArgument('pod_sandbox_id must not be empty');
  if (req.port.length > PORTS_MAX) throw invalidArgument(`port has ${req.port.length} entries; at most ${PORTS_MAX}`);
  for (const port of req.port) {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw invalidArgument(`invalid port ${port}: ports must be in 1..65535`);
    }
  }
  const sandbox = await issuer.resolver.resolve(sandboxId);
  if (sandbox === undefined) throw notFound(`sandbox ${clip(sandboxId)} not found`);
  if (!sandbox.ready) {
    throw failedPrecondition(`sandbox ${clip(sandbox.id)} is not ready (sandbox container is not running)`);
  }
  const audit = { sandboxId: sandbox.id, podNamespace: sandbox.pod.namespace, podName: sandbox.pod.name, podUid: sandbox.pod.uid, ports: req.port };
  const refusal =
    issuer.policy.podRefusal(sandbox.pod, sandbox.ports) ??
    req.port.map((port) => issuer.policy.refusal(sandbox.pod, sandbox.ports, port)).find((r) => r !== undefined);
  if (refusal !== undefined) {
    issuer.metrics.policyDenied.inc({ reason: refusal.reason });
    issuer.log.warn('port-forward refused: port policy', { ...audit, reason: refusal.reason, err: refusal.message });
    throw refusalError(refusal);
  }
  const token = issuer.tokens.issue({ sandboxId: sandbox.id, ports: [...req.port] });
  issuer.log.info('port-forward issued', { ...audit, token: tokenTag(token) });
  return { url: portForwardUrl(issuer.streamBaseUrl, token) };
}

/** A pod's malformed annotation is its owner's to fix (FAILED_PRECONDITION); a closed port is a refusal. */
function refusalError(refusal: PolicyRefusal): CriError {
  return refusal.reason === 'bad-annotation' ? failedPrecondition(refusal.message) : permissionDenied(refusal.message);
}
