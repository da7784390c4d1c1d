// Runs the real `kubectl port-forward` against a kubeconfig (e.g. FakeApiServer's) and waits
// until it forwards every requested port. Every caller stops it.

import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';

const READY_TIMEOUT_MS = 20_000;
const KILL_AFTER_MS = 3_000;

export interface PortForwardOptions {
  kubeconfig: string;
  /** Pod name: our CRI sandbox id when the FakeApiServer answers. */
  pod: string;
  /** kubectl's port arguments, e.g. ["0:8080"] or [":8080"]. */
  ports: string[];
  /** Extra environment; KUBECTL_PORT_FORWARD_WEBSOCKETS is "false" unless set here. */
  env?: Record<string, string>;
  /** --address; default 127.0.0.1. */
  address?: string;
  /** 'spdy' (default): KUBECTL_PORT_FORWARD_WEBSOCKETS=false; 'default': kubectl's own choice, the SPDY-in-WebSocket tunnel. */
  transport?: 'spdy' | 'default';
  /** kubectl binary; default "kubectl" on PATH. */
  kubectl?: string;
}

export interface KubectlPortForward {
  /** The local port of each requested port, in order. */
  localPorts: number[];
  proc: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves to the exit code (null when killed by a signal). */
  exited: Promise<number | null>;
  /** SIGTERM, then SIGKILL after 3 s; resolves to the exit code. */
  stop(): Promise<number | null>;
}

const FORWARDING = /^Forwarding from (\S+):(\d+) -> (\d+)\s*$/;

export function startPortForward(options: PortForwardOptions): Promise<KubectlPortForward> {
  const args = [
    'port-forward',
    '--kubeconfig',
    options.kubeconfig,
    // Keep kubectl's discovery cache next to the kubeconfig, not in $HOME.
    '--cache-dir',
    join(dirname(options.kubeconfig), 'kubectl-cache'),
    '--address',
    options.address ?? '127.0.0.1',
    `pod/${options.pod}`,
    ...options.ports,
  ];
  const env: NodeJS.ProcessEnv = { ...process.env, KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false', ...options.env };
  if (options.transport === 'default') delete env.KUBECTL_PORT_FORWARD_WEBSOCKETS;
  const proc = spawn(options.kubectl ?? 'kubectl', args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => {
    proc.once('exit', (code) => resolve(code));
    proc.once('error', (err) => {
      stderr += `spawn failed: ${err.message}\n`;
      resolve(null);
    });
  });
  const running = (): boolean => proc.exitCode === null && proc.signalCode === null && proc.pid !== undefined;
  const stop = async (): Promise<number | null> => {
    if (running()) {
      proc.kill('SIGTERM');
      const timer = setTimeout(() => {
        if (running()) proc.kill('SIGKILL');
      }, KILL_AFTER_MS);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    }
    return exited;
  };

  return new Promise<KubectlPortForward>((resolve, reject) => {
    const localPorts: number[] = [];
    let firstAddress: string | undefined;
    let settled = false;
    const fail = (why: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      void stop().then((code) =>
        reject(new Error(`kubectl port-forward ${why} (exit ${code}); stdout: ${stdout}; stderr: ${stderr}`)),
      );
    };
    const timer = setTimeout(() => fail(`printed no "Forwarding from" line for every port in ${READY_TIMEOUT_MS} ms`), READY_TIMEOUT_MS);
    void exited.then((code) => fail(`exited with ${code} before forwarding`));
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      const m = FORWARDING.exec(line);
      if (!m || settled) return;
      // One line per port and listen address; count the first address's lines.
      firstAddress ??= m[1];
      if (m[1] !== firstAddress) return;
      localPorts.push(Number(m[2]));
      if (localPorts.length < options.ports.length) return;
      settled = true;
      clearTimeout(timer);
      resolve({ localPorts, proc, stdout: () => stdout, stderr: () => stderr, exited, stop });
    });
  });
}
