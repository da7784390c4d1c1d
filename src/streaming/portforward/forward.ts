// One forwarded connection, whatever the protocol: dial the pod (Forwarder) and pipe the
// client-side duplex to it. Every protocol front end goes through here, so metrics, logs
// and the error policy's inputs are the same for SPDY and WebSocket.

import type { Duplex } from 'node:stream';
import type { Logger } from '../../log';
import type { Metrics } from '../../metrics';
import { DialError, type Forwarder } from '../../netns/forwarder';
import { Pipe, type PipeResult } from '../../pipe';

/** What every protocol front end needs to forward connections. */
export interface ForwardDeps {
  forwarder: Forwarder;
  metrics: Metrics;
  log: Logger;
  halfCloseGraceMs: number;
  /** Nothing listening on the port: reset that connection only, or report it as upstream. */
  refusedDial: RefusedDialPolicy;
  idleTimeoutMs: number;
  /** SPDY: an error and a data stream must both arrive within this (upstream: 30 s). */
  streamCreationTimeoutMs: number;
  /** WebSocket keepalive: ping an idle WebSocket this often. */
  pingIntervalMs: number;
}

export type RefusedDialPolicy = 'reset' | 'error';

export type ForwardResult =
  | { kind: 'piped'; pipe: PipeResult }
  | { kind: 'dial-failed'; error: DialError }
  | { kind: 'aborted' };

export interface ForwardRequest {
  sandboxId: string;
  port: number;
  client: Duplex;
  /** Label for logs and metrics, e.g. "spdy". */
  protocol: string;
  /** The session ended before the dial completed. */
  isAborted(): boolean;
}

export async function forwardConnection(deps: ForwardDeps, request: ForwardRequest): Promise<ForwardResult> {
  const { sandboxId, port, client } = request;
  const started = Date.now();
  const log = deps.log.child({ sandboxId, port, protocol: request.protocol });
  deps.metrics.forwardsTotal.inc();
  const pipe = new Pipe(client, { graceMs: deps.halfCloseGraceMs });
  let pod;
  try {
    pod = await deps.forwarder.open(sandboxId, port, pipe.podSocketOptions());
  } catch (err) {
    const error =
      err instanceof DialError ? err : new DialError('refused', `dial failed: ${(err as Error).message ?? String(err)}`);
    deps.metrics.dialErrors.inc({ reason: error.failure });
    log.warn('forward failed: dial', { reason: error.failure, err: error.message });
    pipe.close();
    return { kind: 'dial-failed', error };
  }
  if (request.isAborted()) {
    pipe.close();
    pod.destroy();
    return { kind: 'aborted' };
  }
  deps.metrics.forwardsActive.inc();
  log.info('forward started');
  pipe.start(pod);
  const result = await pipe.done;
  deps.metrics.forwardsActive.dec();
  deps.metrics.forwardedBytes.inc({ direction: 'to_pod' }, result.bytesToPod);
  deps.metrics.forwardedBytes.inc({ direction: 'to_client' }, result.bytesToClient);
  log.info('forward ended', {
    reason: result.outcome,
    bytesToPod: result.bytesToPod,
    bytesToClient: result.bytesToClient,
    durationMs: Date.now() - started,
    ...(result.error ? { err: result.error.message } : {}),
  });
  return { kind: 'piped', pipe: result };
}

/** Upstream's error-stream text: "error forwarding port %d to pod %s, uid %v: %v". */
export function forwardErrorText(port: number, sandboxId: string, message: string): string {
  return `error forwarding port ${port} to pod ${sandboxId}, uid : ${message}`;
}
