// Upgrading in place (SIGUSR2): the running process starts the same command again (the
// binary and dist/ as they are on disk now) and hands it the listeners and the unredeemed
// tokens; the sessions it serves stay with it until they end, then it exits 0. Never both
// dead, never both accepting:
//
//   old                                   new (CRI_PORTFORWARD_TAKEOVER=1, fd 3, IPC)
//   keep a spare dup of the listener
//   spawn ------------------------------> start, CRI socket bound at <socket>.<its pid>
//                   <-------------------- "prepared"
//   stop accepting (the kernel queues),
//   take the tokens out ----------------> import them, accept on fd 3
//                   <-------------------- "took-over" {pid}
//   rename <socket>.<new pid> -> <socket>,
//   release the CRI socket (GOAWAY: clients reconnect by path, to the new process;
//   calls in flight finish) ----------> "released": reread the sandbox records (what
//                                       the old process changed since this one started)
//   drain the sessions, exit 0
//
// Anything else (the new process exits, throws, or says nothing for TAKEOVER_TIMEOUT_MS)
// and the old one kills it, accepts on its spare listener again, takes its tokens back and
// logs why: an upgrade can fail, a forward must not.

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, promises as fs } from 'node:fs';
import type { Handover, RunningServer, Takeover } from './app';
import type { Logger } from './log';
import { addon } from './netns/addon';
import { bindPathFor } from './cri/socket-file';
import type { ExportedToken } from './streaming/tokens';

/** The new process has this long, from its start, to take over. */
export const TAKEOVER_TIMEOUT_MS = 10_000;
/** The environment variable that tells a process it is an upgrade's new process. */
export const TAKEOVER_ENV = 'CRI_PORTFORWARD_TAKEOVER';
/** The old process's URL base, kept by the new one. */
const BASE_URL_ENV = 'CRI_PORTFORWARD_TAKEOVER_BASE_URL';
/** The inherited streaming listener. */
const LISTENER_FD = 3;
/** How often a draining old process looks for its last session's end. */
const DRAIN_POLL_MS = 500;

type ToNew = { type: 'tokens'; tokens: ExportedToken[] } | { type: 'released' };
type ToOld = { type: 'prepared' } | { type: 'took-over'; pid: number };

/** The old side: one upgrade at a time; a second SIGUSR2 during one is ignored. */
export class Upgrader {
  readonly #server: RunningServer;
  readonly #criSocket: string;
  readonly #log: Logger;
  #child: ChildProcess | undefined;
  #handedOver = false;

  constructor(server: RunningServer, criSocket: string, log: Logger) {
    this.#server = server;
    this.#criSocket = criSocket;
    this.#log = log;
  }

  /** Start an upgrade. `done` is called once this process has handed over and drained. */
  start(done: () => void): void {
    if (this.#child !== undefined || this.#handedOver) {
      this.#log.warn(this.#handedOver ? 'SIGUSR2 ignored: this process has handed over and only serves its open sessions' : 'SIGUSR2 ignored: an upgrade is already under way');
      return;
    }
    const h = this.#server.handover;
    let spareFd: number;
    try {
      spareFd = addon.dupFd(h.streaming.listenerFd);
    } catch (err) {
      this.#log.error('upgrade not started: cannot keep the streaming listener', { err });
      h.metrics.handovers.inc({ result: 'failed' });
      return;
    }
    const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
      env: { ...process.env, [TAKEOVER_ENV]: '1', [BASE_URL_ENV]: this.#server.streamBaseUrl },
      stdio: ['ignore', 'inherit', 'inherit', h.streaming.listenerFd, 'ipc'],
    });
    this.#child = child;
    const bindPath = bindPathFor(this.#criSocket, child.pid);
    this.#log.info('upgrade: starting the new process', { pid: child.pid, command: process.execPath });
    let tokens: ExportedToken[] | undefined;
    let settled = false;
    /** When this process stopped accepting: new connections waited in the kernel from then. */
    let stoppedAt = 0;
    const fail = (why: string, err?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      this.#child = undefined;
      const resume = tokens === undefined ? Promise.resolve() : h.streaming.acceptOn(spareFd);
      void resume.then(
        () => {
          if (tokens !== undefined) h.tokens.importAll(tokens);
          this.#log.error('upgrade failed; this process goes on serving', { why, ...(err ? { err } : {}) });
          h.metrics.handovers.inc({ result: 'failed' });
          void fs.rm(bindPath, { force: true });
        },
        (listenErr: unknown) => this.#log.error('upgrade failed and the streaming listener could not be resumed', { why, err: listenErr }),
      );
    };
    const timer = setTimeout(() => fail(`the new process did not take over within ${TAKEOVER_TIMEOUT_MS} ms`), TAKEOVER_TIMEOUT_MS);
    child.once('error', (err) => fail('the new process could not be started', err));
    child.once('exit', (code, signal) => fail(`the new process exited (${signal ?? code}) before taking over`));
    child.on('message', (message: ToOld) => {
      if (settled) return;
      if (message.type === 'prepared') {
        // From here the kernel queues new streaming connections until the new process accepts.
        void h.streaming.stopAccepting();
        stoppedAt = performance.now();
        tokens = h.tokens.exportAll();
        if (process.env.CRI_PORTFORWARD_TEST_UPGRADE_DIE === '1') process.kill(process.pid, 'SIGKILL'); // injected (test): the old process dies mid-handover
        child.send({ type: 'tokens', tokens } satisfies ToNew);
      } else if (message.type === 'took-over') {
        void fs.rename(bindPath, this.#criSocket).then(
          () => this.#handOver(child, message.pid, spareFd, timer, done, () => (settled = true), performance.now() - stoppedAt),
          (err: unknown) => fail('the new CRI socket could not be moved into place', err),
        );
      }
    });
  }

  #handOver(child: ChildProcess, pid: number, spareFd: number, timer: NodeJS.Timeout, done: () => void, settle: () => void, acceptGapMs: number): void {
    settle();
    clearTimeout(timer);
    this.#handedOver = true;
    closeSync(spareFd);
    child.removeAllListeners('exit');
    child.unref();
    const h: Handover = this.#server.handover;
    h.metrics.handovers.inc({ result: 'ok' });
    this.#log.info('upgrade: handed over; serving the open sessions until they end', {
      newPid: pid,
      sessions: h.streaming.openSessions,
      // New streaming connections waited in the kernel's queue this long (none was refused).
      acceptGapMs: Math.round(acceptGapMs * 10) / 10,
    });
    void h
      .releaseCri()
      .catch((err: unknown) => this.#log.warn('releasing the CRI socket failed', { err }))
      .finally(() => {
        if (child.connected) child.send({ type: 'released' } satisfies ToNew, () => child.disconnect());
      });
    const drain = setInterval(() => {
      if (h.streaming.openSessions > 0) return;
      clearInterval(drain);
      this.#log.info('upgrade: the last session ended; exiting');
      done();
    }, DRAIN_POLL_MS);
  }
}

/** The new side: where to bind and what URL base to keep, if this process is an upgrade's new one. */
export function takeoverFromEnv(): Takeover | undefined {
  const baseUrl = process.env[BASE_URL_ENV];
  if (process.env[TAKEOVER_ENV] !== '1' || !baseUrl || process.send === undefined) return undefined;
  delete process.env[TAKEOVER_ENV];
  delete process.env[BASE_URL_ENV];
  return { baseUrl };
}

/**
 * The new side, once started: take the tokens, accept on the inherited listener, tell the
 * old one. Should the old process die on the way (its IPC channel closes before it has
 * released the CRI socket), this one takes over alone: it accepts on the listener, without
 * the tokens if they never came, and moves its CRI socket over the path itself, so that
 * the node is never left without a server.
 */
export function takeOver(server: RunningServer, criSocket: string, log: Logger): Promise<void> {
  return new Promise((resolve, reject) => {
    const h = server.handover;
    let accepting: Promise<void> | undefined;
    let released = false;
    const accept = (tokens: ExportedToken[]): Promise<void> => {
      if (accepting !== undefined) return accepting;
      h.tokens.importAll(tokens);
      accepting = h.streaming.acceptOn(LISTENER_FD);
      accepting.then(() => log.info('upgrade: took over', { tokens: tokens.length }), reject);
      return accepting;
    };
    process.on('message', (message: ToNew) => {
      if (message.type === 'tokens') {
        if (process.env.CRI_PORTFORWARD_TEST_TAKEOVER_CRASH === '1') throw new Error('injected: crash during takeover (test)');
        void accept(message.tokens).then(() => {
          process.send!({ type: 'took-over', pid: process.pid } satisfies ToOld);
          resolve();
        });
      } else if (message.type === 'released') {
        // The old process has stopped serving the CRI socket: what it changed is on disk.
        released = true;
        reloadSandboxes();
      }
    });
    const reloadSandboxes = (): void => {
      void h.reloadSandboxes().catch((err: unknown) => log.error('rereading the sandbox records after the upgrade failed', { err }));
    };
    process.once('disconnect', () => {
      if (released) return;
      log.warn('upgrade: the old process went away before it released the CRI socket; taking over alone');
      void accept([])
        .then(() => fs.rename(bindPathFor(criSocket), criSocket))
        .catch((err: unknown) => {
          // ENOENT: the old process had already moved our socket into place.
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        })
        .then(() => {
          reloadSandboxes();
          resolve();
        }, reject);
    });
    process.send!({ type: 'prepared' } satisfies ToOld);
  });
}
