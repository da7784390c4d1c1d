// Upgrading in place (SIGUSR2): the running process starts the same command again (the
// binary and dist/ as they are on disk now) and hands it the listeners, the unredeemed
// tokens and every live session with its sockets. Never both dead, never both serving:
//
//   old                                   new (CRI_PORTFORWARD_TAKEOVER=1, fd 3 the listener,
//   keep a spare dup of the listener           fd 4 IPC, fd 5 the fd channel)
//   spawn ------------------------------> start, CRI socket bound at <socket>.<its pid>
//                   <-------------------- "prepared"
//   stop accepting (the kernel queues),
//   take the tokens out, freeze the
//   sessions until each is quiet (handover/
//   freeze.ts), pass their sockets (fd 5),
//   their state, the counters ----------> rebuild the sessions, paused (handover/adopt.ts);
//                                         import the tokens, accept on fd 3
//                   <-------------------- "took-over" {pid}
//   rename <socket>.<new pid> -> <socket>,
//   let go of the sessions' sockets ----> "sessions-yours": start them (read, timers)
//   release the CRI socket (GOAWAY: clients reconnect by path, to the new process;
//   calls in flight finish) ----------> "released": reread the sandbox records (what
//                                       the old process changed since this one started)
//   exit 0 once the sessions it kept (TLS, or not quiet within QUIET_DEADLINE_MS) end
//
// Anything else before "took-over" (the new process exits, throws while adopting, or says
// nothing for TAKEOVER_TIMEOUT_MS) and the old one kills it, thaws every session where it
// stopped, accepts on its spare listener again, takes its tokens back and logs why: an
// upgrade can fail, a forward must not. Should the old process die half-way, the new one
// takes over alone (see takeOver).

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, promises as fs } from 'node:fs';
import type { Handover, RunningServer, Takeover } from './app';
import { freezeSessions, type FrozenSessions } from './handover/freeze';
import type { AdoptedSession, MovedSession } from './handover/movable';
import { exportCounters, importCounters, type CounterValues } from './metrics';
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
/** The new process's end of the fd channel that brings the sessions' sockets. */
const SESSION_FDS_FD = 5;
/** Sockets per message on the fd channel (SCM_RIGHTS carries at most 253). */
const FDS_PER_MESSAGE = 250;
/** How often a draining old process looks for its last session's end. */
const DRAIN_POLL_MS = 500;

type ToNew =
  | { type: 'tokens'; tokens: ExportedToken[]; sessions: MovedSession[]; fdMessages: number; counters: CounterValues }
  | { type: 'sessions-yours' }
  | { type: 'released' };
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
    const [channel, childChannel] = addon.fdChannel();
    const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
      env: { ...process.env, [TAKEOVER_ENV]: '1', [BASE_URL_ENV]: this.#server.streamBaseUrl },
      stdio: ['ignore', 'inherit', 'inherit', h.streaming.listenerFd, 'ipc', childChannel],
    });
    closeSync(childChannel);
    this.#child = child;
    const bindPath = bindPathFor(this.#criSocket, child.pid);
    this.#log.info('upgrade: starting the new process', { pid: child.pid, command: process.execPath });
    let tokens: ExportedToken[] | undefined;
    let frozen: FrozenSessions | undefined;
    let settled = false;
    /** When this process stopped accepting: new connections waited in the kernel from then. */
    let stoppedAt = 0;
    const fail = (why: string, err?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      this.#child = undefined;
      closeSync(channel);
      // Every session goes on where it stopped; the new process's copies of their sockets died with it.
      for (const session of frozen?.moving ?? []) session.thaw();
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
        void this.#handOverState(child, channel, (t) => (tokens = t), (f) => (frozen = f), () => settled, () => (stoppedAt = performance.now())).catch((err: unknown) =>
          fail('the sessions could not be handed over', err),
        );
      } else if (message.type === 'took-over') {
        void fs.rename(bindPath, this.#criSocket).then(
          () => {
            // From here the new process owns the sessions: let go of their sockets, silently.
            for (const session of frozen?.moving ?? []) {
              session.release();
              h.streaming.forget(session.socket);
            }
            closeSync(channel);
            child.send({ type: 'sessions-yours' } satisfies ToNew);
            this.#handOver(child, message.pid, spareFd, timer, done, () => (settled = true), performance.now() - stoppedAt, frozen);
          },
          (err: unknown) => fail('the new CRI socket could not be moved into place', err),
        );
      }
    });
  }

  /**
   * The new process is ready: stop accepting, take the tokens and the sessions out, pass
   * them. The counters are read first (an await), so that the sessions are frozen for as
   * short a time as possible.
   */
  async #handOverState(
    child: ChildProcess,
    channel: number,
    setTokens: (tokens: ExportedToken[]) => void,
    setFrozen: (frozen: FrozenSessions) => void,
    settled: () => boolean,
    markStopped: () => void,
  ): Promise<void> {
    const h = this.#server.handover;
    const counters = await exportCounters(h.metrics);
    if (settled()) return;
    // From here the kernel queues new streaming connections until the new process accepts.
    void h.streaming.stopAccepting();
    markStopped();
    const tokens = h.tokens.exportAll();
    setTokens(tokens);
    const frozen = await freezeSessions(h.sessions);
    if (settled()) {
      for (const session of frozen.moving) session.thaw(); // the upgrade failed meanwhile
      return;
    }
    setFrozen(frozen);
    if (process.env.CRI_PORTFORWARD_TEST_UPGRADE_DIE === '1') process.kill(process.pid, 'SIGKILL'); // injected (test): the old process dies mid-handover
    let fdMessages = 0;
    for (let i = 0; i < frozen.fds.length; i += FDS_PER_MESSAGE, fdMessages++) addon.sendFds(channel, frozen.fds.slice(i, i + FDS_PER_MESSAGE));
    child.send({ type: 'tokens', tokens, sessions: frozen.states, fdMessages, counters } satisfies ToNew);
  }

  #handOver(child: ChildProcess, pid: number, spareFd: number, timer: NodeJS.Timeout, done: () => void, settle: () => void, acceptGapMs: number, frozen: FrozenSessions | undefined): void {
    settle();
    clearTimeout(timer);
    this.#handedOver = true;
    closeSync(spareFd);
    child.removeAllListeners('exit');
    child.unref();
    const h: Handover = this.#server.handover;
    h.metrics.handovers.inc({ result: 'ok' });
    this.#log.info('upgrade: handed over', {
      newPid: pid,
      sessionsMoved: frozen?.moving.length ?? 0,
      // TLS sessions, and those not quiet in time: they stay here until they end.
      sessionsKept: h.streaming.openSessions,
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
    let adopted: AdoptedSession[] = [];
    const accept = (tokens: ExportedToken[]): Promise<void> => {
      if (accepting !== undefined) return accepting;
      h.tokens.importAll(tokens);
      accepting = h.streaming.acceptOn(LISTENER_FD);
      accepting.then(() => log.info('upgrade: took over', { tokens: tokens.length, sessions: adopted.length }), reject);
      return accepting;
    };
    // Once the old process has let go of them (or is gone): the sessions read again.
    let started = false;
    const startSessions = (): void => {
      if (started) return;
      started = true;
      startAdopted(h, adopted, log);
      adopted = [];
    };
    process.on('message', (message: ToNew) => {
      if (message.type === 'tokens') {
        importCounters(h.metrics, message.counters);
        const fds: number[] = [];
        for (let i = 0; i < message.fdMessages; i++) fds.push(...addon.recvFds(SESSION_FDS_FD));
        adopted = h.adoptSessions(message.sessions, fds);
        if (process.env.CRI_PORTFORWARD_TEST_TAKEOVER_CRASH === '1') throw new Error('injected: crash while adopting the sessions (test)');
        void accept(message.tokens).then(() => {
          process.send!({ type: 'took-over', pid: process.pid } satisfies ToOld);
          resolve();
        });
      } else if (message.type === 'sessions-yours') {
        startSessions();
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
      // Whatever the old process passed is ours alone now: it is gone.
      startSessions();
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

/** Start the adopted sessions; count them and the pause each saw (frozen in the old process to reading here). */
function startAdopted(h: Handover, adopted: AdoptedSession[], log: Logger): void {
  try {
    closeSync(SESSION_FDS_FD);
  } catch {
    // the old process passed no channel (nothing to close)
  }
  let maxPauseMs = 0;
  for (const session of adopted) {
    session.start();
    const pauseMs = Number(process.hrtime.bigint() - session.frozenAt) / 1e6;
    maxPauseMs = Math.max(maxPauseMs, pauseMs);
    h.metrics.handoverPause.observe(pauseMs / 1000);
    h.metrics.sessionsHandedOver.inc({ protocol: session.protocol });
  }
  h.metrics.handovers.inc({ result: 'ok' });
  if (adopted.length > 0) log.info('upgrade: sessions resumed', { sessions: adopted.length, maxPauseMs: Math.round(maxPauseMs * 10) / 10 });
}
