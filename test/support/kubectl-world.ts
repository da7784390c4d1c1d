// A small world for kubectl end-to-end tests: our server, a FakeApiServer in front of it,
// sandboxes, apps and kubectl port-forward processes, all torn down by endWorld, which also
// checks that the server's fds are back to their count at start.

import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { startPodApp, type PodApp, type PodAppMode } from './apps';
import { criClient, HOST_NETWORK, podConfig, type CriTestClient } from './cri-client';
import { FakeApiServer } from './fake-apiserver';
import { startPortForward, type KubectlPortForward } from './kubectl';
import { cleanUpAndAssertNothingLeft, startServer, type ServerProcess } from './server-process';
import { collect, dial, roundTrip } from './tcp-client';

export interface World {
  server: ServerProcess;
  /** Open fds of the server process once it was ready. */
  fdsAtStart: number;
  cri: CriTestClient;
  api: FakeApiServer;
  kubeconfig: string;
  apps: PodApp[];
  forwards: KubectlPortForward[];
  /** kubectl's default transport (SPDY tunnelled in WebSocket) instead of plain SPDY. */
  websocket: boolean;
}

export async function world(args: string[] = [], websocket = false): Promise<World> {
  const server = await startServer({ args });
  const cri = criClient(server.criAddress);
  const api = await FakeApiServer.start({ criAddress: server.criAddress, namespace: 'test', refuseWebSocket: !websocket });
  await cri.call('Version', {}); // the CRI connection's fd is part of the baseline
  const fdsAtStart = serverFds(server);
  return { server, fdsAtStart, cri, api, kubeconfig: api.kubeconfig(server.dir), apps: [], forwards: [], websocket };
}

function serverFds(server: ServerProcess): number {
  return readdirSync(`/proc/${server.proc.pid}/fd`).length;
}

/** Every session, stream and pod socket of the server is gone once the clients are. */
async function assertServerFdsBack(w: World): Promise<void> {
  for (let i = 0; i < 50 && serverFds(w.server) > w.fdsAtStart; i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal(serverFds(w.server), w.fdsAtStart, 'server fds back to their count at start');
}

export async function endWorld(w: World | undefined): Promise<void> {
  if (!w) return;
  for (const f of w.forwards) await f.stop();
  for (const a of w.apps) await a.stop();
  await w.api.close();
  await assertServerFdsBack(w);
  for (const s of (await w.cri.call('ListPodSandbox', {})).items) await w.cri.call('RemovePodSandbox', { pod_sandbox_id: s.id });
  w.cri.close();
  assert.equal(await w.server.stop(), 0);
  cleanUpAndAssertNothingLeft(w.server, w.server.dir);
}

export async function sandbox(w: World, name: string, hostNetwork = false): Promise<{ id: string; netns: string | null }> {
  const id = (await w.cri.call('RunPodSandbox', { config: podConfig(name, hostNetwork ? HOST_NETWORK : {}) })).pod_sandbox_id;
  const info = JSON.parse((await w.cri.call('PodSandboxStatus', { pod_sandbox_id: id, verbose: true })).info.info);
  return { id, netns: info.netnsPath || null };
}

export async function app(w: World, netns: string | null, mode: PodAppMode, host = '127.0.0.1'): Promise<PodApp> {
  const started = await startPodApp(netns, mode, host);
  w.apps.push(started);
  return started;
}

export async function kubectl(w: World, pod: string, remotePorts: number[]): Promise<KubectlPortForward> {
  const forward = await startPortForward({
    kubeconfig: w.kubeconfig,
    pod,
    ports: remotePorts.map((p) => `0:${p}`),
    transport: w.websocket ? 'default' : 'spdy',
  });
  w.forwards.push(forward);
  return forward;
}

export async function metric(w: World, name: string): Promise<number> {
  const res = await fetch(`${w.server.streamBaseUrl}/metrics`);
  const line = (await res.text()).split('\n').find((l) => l.startsWith(name + ' ') || l.startsWith(name + '{'));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

export function exitsWithin(forward: KubectlPortForward, ms: number): Promise<number | null | 'still running'> {
  return Promise.race([forward.exited, new Promise<'still running'>((r) => setTimeout(() => r('still running'), ms))]);
}


/**
 * Remove a forwarded sandbox mid-session and open one more connection: kubectl must print
 * our error-stream text (its quotes escaped) and exit non-zero, whatever the transport.
 */
export async function assertSandboxRemovalEndsKubectl(w: World, name: string): Promise<void> {
  const pod = await sandbox(w, name);
  const echo = await app(w, pod.netns, 'echo');
  const forward = await kubectl(w, pod.id, [echo.port]);
  assert.equal((await roundTrip(forward.localPorts[0]!, Buffer.from('alive'))).toString(), 'alive');
  await w.cri.call('RemovePodSandbox', { pod_sandbox_id: pod.id });
  const socket = await dial(forward.localPorts[0]!);
  void collect(socket);
  const code = await exitsWithin(forward, 10_000);
  socket.destroy();
  assert.notEqual(code, 'still running');
  assert.notEqual(code, 0);
  assert.match(forward.stderr(), new RegExp(`error forwarding port \\d+ to pod ${pod.id}, uid : network namespace for sandbox \\\\?"${pod.id}`));
}
