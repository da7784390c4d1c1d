// One forwarded connection, whatever the protocol, top to bottom: is the port open to this
// grant, resolve the sandbox, is the port open under the port policy, dial inside its
// namespace, pipe the client side to the pod until both directions end. The start and end
// lines (and every refusal) are the audit trail: the pod's namespace, name and uid, the
// port, the streaming client's address and the token's fingerprint (never the token). Every protocol front end comes through here, so the error
// policy, metrics and logs are the same for SPDY and WebSocket; the front end only carries
// the verdict out.

import type { BufferBudget } from '../../buffer-budget';
import type { MovableSessions } from '../../handover/movable';
import type { LogFields, Logger } from '../../log';
import type { Metrics } from '../../metrics';
import { DialError, type Forwarder } from '../../netns/forwarder';
import { Pipe } from '../../pipe';
import type { PipeClient } from '../../pipe-client';
import type { PortPolicy } from '../../policy/port-policy';
import type { PodIdentity } from '../../policy/port-policy';
import type { ResolvedSandbox } from '../../sandbox/types';
import type { SessionGrant } from '../tokens';
import { PIPED, verdictFor, type ForwardVerdict, type RefusedDialPolicy } from './verdict';

/** What every protocol front end needs to forward connections. */
export interface ForwardDeps {
  forwarder: Forwarder;
  /** Which ports of a pod are open (--port-policy and the pod's annotations). */
  policy: PortPolicy;
  metrics: Metrics;
  log: Logger;
  halfCloseGraceMs: number;
  /** Nothing listening on the port: reset that connection only, or report it as upstream. */
  refusedDial: RefusedDialPolicy;
  idleTimeoutMs: number;
  /** SPDY: an error and a data stream must both arrive within this (upstream: 30 s). */
  streamCreationTimeoutMs: number;
  /** SPDY: a stream holding a full receive buffer without progress this long is reset. */
  streamStallTimeoutMs: number;
  /** What connections may hold beyond their base buffers, all together (--max-buffer-memory). */
  budget: BufferBudget;
  /** WebSocket keepalive: ping an idle WebSocket this often. */
  pingIntervalMs: number;
  /** Sessions an upgrade may move to the new process (every front end registers its own). */
  sessions: MovableSessions;
}

export interface ForwardRequest {
  grant: SessionGrant;
  port: number;
  /** The client side of this connection: a SPDY data stream or a WebSocket data channel. */
  client: PipeClient;
  /** Label for logs and metrics, e.g. "spdy". */
  protocol: string;
  /** The session ended while the pod was being dialled: nothing is piped. */
  isAborted(): boolean;
  /** The pod is dialled and the pipe runs (an upgrade hands over running pipes). */
  onPiped?: ((pipe: Pipe, pod: PodIdentity) => void) | undefined;
}

export async function forwardConnection(deps: ForwardDeps, request: ForwardRequest): Promise<ForwardVerdict> {
  const { grant, port, client } = request;
  const sandboxId = grant.sandboxId;
  const started = Date.now();
  deps.metrics.forwardsTotal.inc();

  // Upstream forwards any port; a token whose request named ports forwards only those.
  if (grant.ports.length > 0 && !grant.ports.includes(port)) {
    const message = `port ${port} is not among the ports of this port-forward request (${grant.ports.join(', ')})`;
    deps.metrics.dialErrors.inc({ reason: 'port-not-allowed' });
    auditLog(deps, request, undefined).warn('forward refused: port not in the request', { port, ports: grant.ports });
    return verdictFor('port-not-allowed', deps.refusedDial, { port, sandboxId, message });
  }

  let sandbox: ResolvedSandbox | undefined;
  let podFd: number;
  try {
    sandbox = deps.forwarder.peek(sandboxId) ?? (await deps.forwarder.resolve(sandboxId));
    const refusal = deps.policy.refusal(sandbox.pod, sandbox.ports, port);
    if (refusal !== undefined) {
      deps.metrics.policyDenied.inc({ reason: refusal.reason });
      auditLog(deps, request, sandbox.pod).warn('forward refused: port policy', { port, reason: refusal.reason, err: refusal.message });
      return verdictFor('port-closed', deps.refusedDial, { port, sandboxId, message: refusal.message });
    }
    podFd = await deps.forwarder.connect(sandbox, port);
  } catch (err) {
    const error = err instanceof DialError ? err : new DialError('refused', `dial failed: ${String(err)}`);
    deps.metrics.dialErrors.inc({ reason: error.failure });
    auditLog(deps, request, sandbox?.pod).warn('forward failed: dial', { port, reason: error.failure, err: error.message });
    return verdictFor(error.failure, deps.refusedDial, { port, sandboxId, message: error.message });
  }

  // The pipe owns the pod socket from here, even when it only has to close it.
  const pipe = new Pipe(client, podFd, { graceMs: deps.halfCloseGraceMs, budget: deps.budget });
  if (request.isAborted()) {
    pipe.close();
    return PIPED;
  }
  request.onPiped?.(pipe, sandbox.pod);
  auditLog(deps, request, sandbox.pod).info('forward started', { port });
  return pipeForward(deps, request, sandbox.pod, pipe, started);
}

/**
 * A running pipe, to its end: the metrics and the end of the audit trail. Also where an
 * upgrade's new process takes a handed-over connection on (`started`: when the forward
 * started, in the old process).
 */
export async function pipeForward(deps: ForwardDeps, request: ForwardRequest, pod: PodIdentity, pipe: Pipe, started: number): Promise<ForwardVerdict> {
  deps.metrics.forwardsActive.inc();
  const result = await pipe.done;
  deps.metrics.forwardsActive.dec();
  deps.metrics.bytesToPod.inc(result.bytesToPod);
  deps.metrics.bytesToClient.inc(result.bytesToClient);
  // One shape whether or not there is an error: a conditional spread here went through
  // V8's slow path on every connection.
  const fields: LogFields = {
    port: request.port,
    reason: result.outcome,
    bytesToPod: result.bytesToPod,
    bytesToClient: result.bytesToClient,
    durationMs: Date.now() - started,
  };
  if (result.error !== undefined) fields.err = result.error.message;
  auditLog(deps, request, pod).info('forward ended', fields);
  // The pipe already ended or reset the client side as the pod side ended.
  return PIPED;
}

/**
 * A session's audit loggers: the context of its lines (sandbox, protocol, client, token,
 * and the pod's identity once known) serialised once per session, not per line. A child
 * logger per line merged and serialised that context on every line: the start and end
 * lines of each connection were 12% of the server's CPU in a kubectl churn at the default
 * --log-level info (perf), more than the rest of the forward. The port goes with each line.
 */
interface AuditLoggers {
  bare: Logger;
  pod: PodIdentity | undefined;
  withPod: Logger | undefined;
}

/** By the session's grant (one per redeemed token), so they go with the session. */
const auditLoggers = new WeakMap<SessionGrant, AuditLoggers>();

/** The logger of a session's audit lines, with the pod's identity when it is known. */
function auditLog(deps: ForwardDeps, request: ForwardRequest, pod: PodIdentity | undefined): Logger {
  const { grant } = request;
  let loggers = auditLoggers.get(grant);
  if (loggers === undefined) {
    const bare = deps.log.child({ sandboxId: grant.sandboxId, protocol: request.protocol, peer: grant.peer, token: grant.tag });
    loggers = { bare, pod: undefined, withPod: undefined };
    auditLoggers.set(grant, loggers);
  }
  if (pod === undefined) return loggers.bare;
  const known = loggers.pod;
  if (loggers.withPod === undefined || known === undefined || known.uid !== pod.uid || known.name !== pod.name || known.namespace !== pod.namespace) {
    loggers.pod = pod;
    loggers.withPod = loggers.bare.child({ podNamespace: pod.namespace, podName: pod.name, podUid: pod.uid });
  }
  return loggers.withPod;
}
