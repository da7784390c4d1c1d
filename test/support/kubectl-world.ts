// A small world for kubectl end-to-end tests: our server, a FakeApiServer in front of it,
// sandboxes, apps and kubectl port-forward processes, all torn down by endWorld, which also
// checks that the server's fds are back to their count at start.

import assert from 'node:assert/strict';
import { startPodApp, type PodApp, type PodAppMode } from './apps';
import { criClient, runSandbox, type CriTestClient } from './cri-client';
import { FakeApiServer } from './fake-apiserver';
import { startPortForward, type KubectlPortForward } from './kubectl';
import { cleanUpAndAssertNothingLeft, serverFds, serverFdsSettled, serverMetric, startServer, type ServerProcess } from './server-process';
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

/** Every session, stream and pod socket of the server is gone once the clients are. */
async function assertServerFdsBack(w: World): Promise<void> {
  assert.equal(await serverFdsSettled(w.server, w.fdsAtStart), w.fdsAtStart, 'server fds back to their count at start');
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

export function sandbox(w: World, name: string, hostNetwork = false): Promise<{ id: string; netns: string | null }> {
  return runSandbox(w.cri, name, hostNetwork);
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

export function metric(w: World, name: string): Promise<number> {
  return serverMetric(w.server, name);
}

/**
 * kubectl's exit code, or 'still running' after `ms`. Not a sleep: with a short `ms` the
 * time itself is the test ("kubectl does not exit"); with a long one it bounds a wait for
 * the exit event.
 */
export function exitsWithin(forward: KubectlPortForward, ms: number): Promise<number | null | 'still running'> {
  let timer: NodeJS.Timeout | undefined;
  const running = new Promise<'still running'>((r) => (timer = setTimeout(() => r('still running'), ms)));
  return Promise.race([forward.exited, running]).finally(() => clearTimeout(timer));
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
  await assertNextConnectionEndsKubectl(
    forward,
    new RegExp(`error forwarding port \\d+ to pod ${pod.id}, uid : network namespace for sandbox \\\\?"${pod.id}`),
  );
}

/** Open one more connection through kubectl: kubectl must exit non-zero within 10 s, saying `stderr`. */
export async function assertNextConnectionEndsKubectl(forward: KubectlPortForward, stderr: RegExp): Promise<void> {
  const socket = await dial(forward.localPorts[0]!);
  void collect(socket);
  const code = await exitsWithin(forward, 10_000);
  socket.destroy();
  assert.notEqual(code, 'still running');
  assert.notEqual(code, 0);
  assert.match(forward.stderr(), stderr);
}
