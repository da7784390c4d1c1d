// Our server in proxy mode in front of an upstream CRI runtime (a second cri-portforward,
// a private containerd), with a CRI client of each socket, so a test can ask both the same
// question. For the proxy tests and bench/proxy.ts.

import assert from 'node:assert/strict';
import { criClient, type CriTestClient } from './cri-client';
import { cleanUpAndAssertNothingLeft, startServer, type ServerProcess } from './server-process';

export interface ProxiedCri {
  /** Our server, with --upstream. */
  proxy: ServerProcess;
  /** A client of the proxy's CRI socket. */
  viaProxy: CriTestClient;
  /** A client of the upstream's own CRI socket. */
  direct: CriTestClient;
}

export async function startProxy(upstreamAddress: string, args: string[] = []): Promise<ProxiedCri> {
  const proxy = await startServer({ args: ['--upstream', upstreamAddress, ...args] });
  return { proxy, viaProxy: criClient(proxy.criAddress), direct: criClient(upstreamAddress) };
}

/** Close both clients, stop the proxy (it must exit 0) and check that it left nothing behind. */
export async function stopProxy(p: ProxiedCri | undefined): Promise<void> {
  if (!p) return;
  p.viaProxy.close();
  p.direct.close();
  assert.equal(await p.proxy.stop(), 0);
  cleanUpAndAssertNothingLeft(p.proxy, p.proxy.dir);
}
