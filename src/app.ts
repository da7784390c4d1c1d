// Wires one server together: sandbox store -> tokens -> streaming server -> CRI server.

import { BufferBudget } from './buffer-budget';
import { adoptSessions } from './handover/adopt';
import { MovableSessions, type AdoptedSession, type MovedSession } from './handover/movable';
import { hasSysAdmin } from './capabilities';
import type { Config } from './config';
import type { PortForwardRequestMsg } from './cri-api';
import { issuePortForward } from './cri/portforward';
import { CriProxyServer } from './cri/proxy';
import { CriServer } from './cri/server';
import type { Logger } from './log';
import { createMetrics, type Metrics } from './metrics';
import { Forwarder } from './netns/forwarder';
import { forgetAllNamespaces, forgetNamespace } from './netns/handles';
import { PortPolicy } from './policy/port-policy';
import { EmbeddedSandboxStore } from './sandbox/embedded';
import { CachingSandboxResolver } from './sandbox/resolve-cache';
import type { SandboxResolver } from './sandbox/types';
import { UpstreamSandboxResolver } from './sandbox/upstream';
import { SpdyPortForwardProtocol } from './streaming/portforward/spdy';
import { SpdyTunnelProtocol } from './streaming/portforward/tunnel';
import { WebSocketPortForwardProtocol } from './streaming/portforward/websocket';
import { StreamingServer } from './streaming/server';
import { TokenCache } from './streaming/tokens';

export interface RunningServer {
  readonly criSocket: string;
  readonly streamBaseUrl: string;
  /** Stop accepting, end both servers, remove the socket file. */
  close(): Promise<void>;
  /** What an upgrade hands over and takes back (upgrade.ts). */
  readonly handover: Handover;
}

/** The parts of a running server an upgrade moves between processes. */
export interface Handover {
  readonly streaming: StreamingServer;
  readonly tokens: TokenCache;
  /** Stop serving the CRI socket, leaving its file to the new process. */
  releaseCri(): Promise<void>;
  /** Embedded mode: take what the old process changed in the sandbox records (after it released the CRI socket). */
  reloadSandboxes(): Promise<void>;
  readonly metrics: Metrics;
  /** The sessions that can move to the new process. */
  readonly sessions: MovableSessions;
  /** The new process: rebuild handed-over sessions, paused (handover/adopt.ts). */
  adoptSessions(moved: MovedSession[], fds: number[]): AdoptedSession[];
}

/** An upgrade's new process: where the old one's URLs point (the CRI socket is renamed into place by the old one). */
export interface Takeover {
  baseUrl: string;
}

export async function startServer(config: Config, log: Logger, takeover?: Takeover): Promise<RunningServer> {
  await warnWithoutSysAdmin(config, log);
  const metrics = createMetrics();
  // Embedded mode: our own namespaces. Proxy mode: the upstream runtime's sandboxes.
  const store =
    config.upstream === undefined
      ? await EmbeddedSandboxStore.open(config.stateDir, log.child({ component: 'sandbox' }), { namespaceRemoving: forgetNamespace })
      : undefined;
  const upstreamSandboxes = store ? undefined : new CachingSandboxResolver(new UpstreamSandboxResolver(config.upstream!, log.child({ component: 'sandbox' })));
  const resolver: SandboxResolver & { close?(): void } = store ?? upstreamSandboxes!;
  if (store) metrics.observeSandboxes(() => store.countByState());
  const tokens = new TokenCache({
    ttlMs: config.tokenTtlMs,
    maxInflight: config.maxInflightTokens,
    metrics,
  });
  const budget = new BufferBudget(config.maxBufferMemory);
  metrics.observeBudget(budget);
  const policy = new PortPolicy(config.portPolicy);
  const forwardDeps = {
    forwarder: new Forwarder(resolver),
    policy,
    metrics,
    log: log.child({ component: 'portforward' }),
    halfCloseGraceMs: config.halfCloseGraceMs,
    refusedDial: config.refusedDial,
    idleTimeoutMs: config.streamIdleTimeoutMs,
    pingIntervalMs: config.websocketPingIntervalMs,
    streamCreationTimeoutMs: config.streamCreationTimeoutMs,
    streamStallTimeoutMs: config.streamStallTimeoutMs,
    budget,
    sessions: new MovableSessions(),
  };
  const streaming = await StreamingServer.listen({
    address: config.streamAddress,
    ...(takeover ? { takeover: { baseUrl: takeover.baseUrl } } : {}),
    tls: config.tlsCert && config.tlsKey ? { cert: config.tlsCert, key: config.tlsKey } : undefined,
    tokens,
    metrics,
    protocols: [
      new SpdyPortForwardProtocol(forwardDeps),
      new SpdyTunnelProtocol(forwardDeps),
      new WebSocketPortForwardProtocol(forwardDeps),
    ],
    log: log.child({ component: 'streaming' }),
  }).catch((err: unknown) => {
    tokens.close();
    throw err;
  });
  const criLog = log.child({ component: 'cri' });
  const issuer = { resolver, tokens, streamBaseUrl: streaming.baseUrl, policy, metrics, log: criLog };
  const portForward = (req: PortForwardRequestMsg): Promise<{ url: string }> => issuePortForward(issuer, req);
  const isTakeover = takeover !== undefined;
  const cri: { address: string; close(): Promise<void>; release(): Promise<void> } = await (store
    ? CriServer.listen(config.criSocket, { store, portForward, log: criLog }, isTakeover)
    : CriProxyServer.listen(
        config.criSocket,
        {
          upstream: config.upstream!,
          portForward,
          onSandboxesChanged: () => {
            upstreamSandboxes!.forgetAll();
            forgetAllNamespaces();
          },
          log: criLog,
        },
        isTakeover,
      )
  ).catch(async (err: unknown) => {
    await streaming.close();
    tokens.close();
    throw err;
  });
  let criReleased = false;
  return {
    criSocket: cri.address,
    streamBaseUrl: streaming.baseUrl,
    async close() {
      // Once released to an upgrade's new process, the socket file is that process's: a
      // signal to this (draining) process must not remove it.
      await Promise.all([criReleased ? Promise.resolve() : cri.close(), streaming.close()]);
      tokens.close();
      await store?.close();
      resolver.close?.();
    },
    handover: {
      streaming,
      tokens,
      metrics,
      releaseCri: () => {
        criReleased = true;
        return cri.release();
      },
      reloadSandboxes: async () => store?.reload(),
      sessions: forwardDeps.sessions,
      adoptSessions: (moved, fds) => adoptSessions(moved, fds, forwardDeps, streaming),
    },
  };
}

/** Said once at start, so an operator does not learn it from the first failed forward. */
async function warnWithoutSysAdmin(config: Config, log: Logger): Promise<void> {
  if (await hasSysAdmin()) return;
  const what =
    config.upstream === undefined
      ? 'RunPodSandbox cannot create sandboxes with their own network namespace (PERMISSION_DENIED), and forwards into pod namespaces fail'
      : 'forwards into pod network namespaces fail';
  log.warn(`running without CAP_SYS_ADMIN: ${what}; host-network sandboxes still work. Run as root for namespaced sandboxes.`);
}
