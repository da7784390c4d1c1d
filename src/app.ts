// Wires one server together: sandbox store -> tokens -> streaming server -> CRI server.

import type { Config } from './config';
import { CriServer } from './cri/server';
import type { Logger } from './log';
import { createMetrics } from './metrics';
import { Forwarder } from './netns/forwarder';
import { EmbeddedSandboxStore } from './sandbox/embedded';
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
}

export async function startServer(config: Config, log: Logger): Promise<RunningServer> {
  const metrics = createMetrics();
  const store = await EmbeddedSandboxStore.open(config.stateDir, log.child({ component: 'sandbox' }));
  metrics.observeSandboxes(() => store.countByState());
  const tokens = new TokenCache({
    ttlMs: config.tokenTtlMs,
    maxInflight: config.maxInflightTokens,
    metrics,
  });
  const forwardDeps = {
    forwarder: new Forwarder(store),
    metrics,
    log: log.child({ component: 'portforward' }),
    halfCloseGraceMs: config.halfCloseGraceMs,
    refusedDial: config.refusedDial,
    idleTimeoutMs: config.streamIdleTimeoutMs,
    pingIntervalMs: config.websocketPingIntervalMs,
    streamCreationTimeoutMs: config.streamCreationTimeoutMs,
  };
  const streaming = await StreamingServer.listen({
    address: config.streamAddress,
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
  const cri = await CriServer.listen(config.criSocket, {
    store,
    tokens,
    streamBaseUrl: streaming.baseUrl,
    log: log.child({ component: 'cri' }),
  }).catch(async (err: unknown) => {
    await streaming.close();
    tokens.close();
    throw err;
  });
  return {
    criSocket: cri.address,
    streamBaseUrl: streaming.baseUrl,
    async close() {
      await Promise.all([cri.close(), streaming.close()]);
      tokens.close();
      await store.close();
    },
  };
}
