// PortForward, the one RPC we always answer ourselves (embedded and proxy mode alike):
// validate, resolve the sandbox, cache the request under a one-time token, return its URL.

import type { PortForwardRequestMsg } from '../cri-api';
import { clip, failedPrecondition, invalidArgument, notFound } from '../errors';
import type { SandboxResolver } from '../sandbox/types';
import { portForwardUrl } from '../streaming/portforward-url';
import type { TokenCache } from '../streaming/tokens';
import { checkId, PORTS_MAX } from './input-limits';

export interface PortForwardIssuer {
  resolver: SandboxResolver;
  tokens: TokenCache;
  /** e.g. http://127.0.0.1:35127 — URLs are <base>/portforward/<token>. */
  streamBaseUrl: string;
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
  const token = issuer.tokens.issue({ sandboxId: sandbox.id, ports: [...req.port] });
  return { url: portForwardUrl(issuer.streamBaseUrl, token) };
}
