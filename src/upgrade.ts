// Upgrading in place (SIGUSR2): the running process starts the same command again (the
// binary and dist/ as they are on disk now) and hands it the listeners, the unredeemed
// tokens and every live session with its sockets. Never both dead, never both serving:
//
//   old                                   new (CRI_PORTFORWARD_TAKEOVER=1, fd 3 the listener,
//   keep a spare dup of the listener           fd 4 IPC, fd 5 the fd channel)
//   spawn ------------------------------> start, CRI socket bound at <socket>.<its pid>
//                   <-------------------- "prepared"
//   stop accepting (the kernel queues),
//   pass the tokens and the counters ---> keep them; later tokens follow one by one
//   for each batch of SESSIONS_PER_BATCH:
//     freeze it until quiet (handover/
//     freeze.ts), pass its sockets (fd 5)
//     and its state --------------------> rebuild the sessions, paused (handover/adopt.ts)
//                   <-------------------- "adopted"
//     let go of their sockets ----------> "sessions-yours": start them (read, timers)
//   "take-listener" --------------------> import the tokens, accept on fd 3
//                   <-------------------- "took-over" {pid}
//   rename <socket>.<new pid> -> <socket>,
//   release the CRI socket (GOAWAY: clients reconnect by path, to the new process;
//   calls in flight finish) ----------> "released": reread the sandbox records (what
//                                       the old process changed since this one started)
//   exit 0 once the sessions it kept (TLS, or not quiet within QUIET_DEADLINE_MS) end
//
// Anything else before "took-over" (the new process exits, fails to adopt, or reports no
// progress for TAKEOVER_TIMEOUT_MS) and the old one thaws the batch under way where it
// stopped, accepts on its spare listener again and logs why: an upgrade can fail, a
// forward must not. Batches the new process already runs stay with it ("abandon": it
// serves them until they end, and takes nothing else). Should the old process die
// half-way, the new one takes over alone (see takeOver).

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, promises as fs } from 'node:fs';
import type { Handover, RunningServer, Takeover } from './app';
import { freezeSessions, type FrozenSessions } from './handover/freeze';
import type { AdoptedSession, MovableSession, MovedSession } from './handover/movable';
import { exportCounters, importCounters, type CounterValues } from './metrics';
import type { Logger } from './log';
import { addon } from './netns/addon';
import { bindPathFor } from './cri/socket-file';
import type { ExportedToken } from './streaming/tokens';

/** The new process has this long, from its start or its last batch adopted, to report progress. */
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
/**
 * Sessions moved together. Each batch is paused from its freeze until the new process
 * starts it; adopting a session costs the new process 100-200 us, so a batch of this size
 * is paused some 20-40 ms on 2 cores, however many sessions there are in all.
 */
const SESSIONS_PER_BATCH = 128;
/** How often a draining process looks for its last session's end. */
const DRAIN_POLL_MS = 500;

type ToNew =
  | { type: 'tokens'; tokens: ExportedToken[]; counters: CounterValues }
  /** A token issued after the others were taken out (this process answers PortForward until it releases the CRI socket). */
  | { type: 'token'; token: ExportedToken }
  | { type: 'sessions'; sessions: MovedSession[]; fdMessages: number }
  | { type: 'sessions-yours' }
  | { type: 'take-listener' }
  | { type: 'released' }
  | { type: 'abandon' };
type ToOld = { type: 'prepared' } | { type: 'adopted'; count: number } | { type: 'adopt-failed'; why: string } | { type: 'took-over'; pid: number };

/** The old side: one upgrade at a time; a second SIGUSR2 during one is ignored. */
export class Upgrader {
  readonly #server: RunningServer;
  readonly #criSocket: string;
  readonly #log: Logger;
  #attempt: UpgradeAttempt | undefined;
  #handedOver = false;

  constructor(server: RunningServer, criSocket: string, log: Logger) {
    this.#server = server;
    this.#criSocket = criSocket;
    this.#log = log;
  }

  /** Start an upgrade. `done` is called once this process has handed over and drained. */
  start(done: () => void): void {
    if (this.#attempt !== undefined || this.#handedOver) {
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
    this.#attempt = new UpgradeAttempt(this.#server, this.#criSocket, this.#log, spareFd, (handedOver) => {
      this.#attempt = undefined;
      if (!handedOver) return;
      this.#handedOver = true;
      drainThenExit(h, this.#log, done);
    });
  }
}

/** One upgrade, from the spawn to "handed over" or to a failure that leaves this process serving. */
class UpgradeAttempt {
  readonly #h: Handover;
  readonly #child: ChildProcess;
  /** Our end of the fd channel. */
  readonly #channel: number;
  readonly #bindPath: string;
  #timer: NodeJS.Timeout;
  #settled = false;
  #tokens: ExportedToken[] | undefined;
  /** The batch frozen and passed, not yet the new process's. */
  #batch: FrozenSessions | undefined;
  #onAdopted: (() => void) | undefined;
  /** Sessions the new process owns (and runs) already. */
  #moved = 0;
  #kept = 0;
  /** When this process stopped accepting: new connections waited in the kernel from then. */
  #stoppedAt = 0;

  constructor(
    server: RunningServer,
    private readonly criSocket: string,
    private readonly log: Logger,
    private readonly spareFd: number,
    private readonly finished: (handedOver: boolean) => void,
  ) {
    const h = (this.#h = server.handover);
    const [channel, childChannel] = addon.fdChannel();
    this.#channel = channel;
    this.#child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
      env: { ...process.env, [TAKEOVER_ENV]: '1', [BASE_URL_ENV]: server.streamBaseUrl },
      stdio: ['ignore', 'inherit', 'inherit', h.streaming.listenerFd, 'ipc', childChannel],
    });
    closeSync(childChannel);
    this.#bindPath = bindPathFor(criSocket, this.#child.pid);
    log.info('upgrade: starting the new process', { pid: this.#child.pid, command: process.execPath });
    this.#timer = this.#deadline();
    this.#child.once('error', (err) => this.#fail('the new process could not be started', err));
    this.#child.once('exit', (code, signal) => this.#fail(`the new process exited (${signal ?? code}) before taking over`));
    this.#child.on('message', (message: ToOld) => this.#onMessage(message));
  }

  #deadline(): NodeJS.Timeout {
    return setTimeout(() => this.#fail(`the new process did not take over within ${TAKEOVER_TIMEOUT_MS} ms`), TAKEOVER_TIMEOUT_MS);
  }

  #onMessage(message: ToOld): void {
    if (this.#settled) return;
    switch (message.type) {
      case 'prepared':
        void this.#handOver().catch((err: unknown) => this.#fail('the sessions could not be handed over', err));
        return;
      case 'adopted':
        this.#onAdopted?.();
        return;
      case 'adopt-failed':
        this.#fail(`the new process could not adopt the sessions: ${message.why}`);
        return;
      case 'took-over':
        void fs.rename(this.#bindPath, this.criSocket).then(
          () => this.#tookOver(message.pid),
          (err: unknown) => this.#fail('the new CRI socket could not be moved into place', err),
        );
    }
  }

  /**
   * The new process is ready: stop accepting, pass the tokens, then the sessions batch by
   * batch (each paused only while it crosses), then the listener.
   */
  async #handOver(): Promise<void> {
    const h = this.#h;
    const counters = await exportCounters(h.metrics); // before anything is paused
    if (this.#settled) return;
    // From here the kernel queues new streaming connections until the new process accepts.
    void h.streaming.stopAccepting();
    this.#stoppedAt = performance.now();
    this.#tokens = h.tokens.exportAll();
    if (process.env.CRI_PORTFORWARD_TEST_UPGRADE_DIE === '1') process.kill(process.pid, 'SIGKILL'); // injected (test): the old process dies mid-handover
    this.#send({ type: 'tokens', tokens: this.#tokens, counters });
    h.tokens.forwardIssued((token) => this.#send({ type: 'token', token }));
    const sessions: MovableSession[] = [...h.sessions];
    for (let i = 0; i < sessions.length && !this.#settled; i += SESSIONS_PER_BATCH) {
      await this.#moveBatch(sessions.slice(i, i + SESSIONS_PER_BATCH));
    }
    if (!this.#settled) this.#send({ type: 'take-listener' });
  }

  async #moveBatch(sessions: MovableSession[]): Promise<void> {
    const h = this.#h;
    const batch = await freezeSessions(sessions, h.sessions);
    this.#kept += batch.kept;
    if (this.#settled) {
      for (const s of batch.moving) s.thaw(); // the upgrade failed meanwhile
      return;
    }
    if (batch.moving.length === 0) return;
    this.#batch = batch;
    let fdMessages = 0;
    for (let i = 0; i < batch.fds.length; i += FDS_PER_MESSAGE, fdMessages++) addon.sendFds(this.#channel, batch.fds.slice(i, i + FDS_PER_MESSAGE));
    const adopted = new Promise<void>((resolve) => (this.#onAdopted = resolve));
    this.#send({ type: 'sessions', sessions: batch.states, fdMessages });
    await adopted;
    if (this.#settled) return; // #fail thawed the batch
    // From here the new process owns these sessions: let go of their sockets, silently.
    this.#batch = undefined;
    for (const session of batch.moving) {
      session.release();
      h.streaming.forget(session.socket);
    }
    this.#moved += batch.moving.length;
    this.#send({ type: 'sessions-yours' });
    clearTimeout(this.#timer);
    this.#timer = this.#deadline();
  }

  #send(message: ToNew): void {
    if (this.#child.connected) this.#child.send(message);
  }

  #tookOver(newPid: number): void {
    const h = this.#h;
    this.#settled = true;
    clearTimeout(this.#timer);
    closeSync(this.spareFd);
    closeSync(this.#channel);
    this.#child.removeAllListeners('exit');
    this.#child.unref();
    h.metrics.handovers.inc({ result: 'ok' });
    h.tokens.dropAll();
    this.log.info('upgrade: handed over', {
      newPid,
      sessionsMoved: this.#moved,
      // TLS sessions, and those not quiet in time: they stay here until they end.
      sessionsKept: h.streaming.openSessions,
      // New streaming connections waited in the kernel's queue this long (none was refused).
      acceptGapMs: Math.round((performance.now() - this.#stoppedAt) * 10) / 10,
    });
    void h
      .releaseCri()
      .catch((err: unknown) => this.log.warn('releasing the CRI socket failed', { err }))
      .finally(() => {
        if (this.#child.connected) this.#child.send({ type: 'released' } satisfies ToNew, () => this.#child.disconnect());
      });
    this.finished(true);
  }

  /**
   * Before the new process has taken the listener, anything that goes wrong leaves this
   * process serving: the batch under way thaws where it stopped, the listener and the
   * tokens come back. Sessions the new process already runs stay with it: told to abandon
   * the upgrade, it serves them until they end, then exits (if it died, they died with it).
   */
  #fail(why: string, err?: unknown): void {
    if (this.#settled) return;
    this.#settled = true;
    clearTimeout(this.#timer);
    const h = this.#h;
    h.tokens.forwardIssued(undefined); // those issued meanwhile never left this process
    const childAlive = this.#child.exitCode === null && this.#child.signalCode === null;
    if (this.#moved > 0 && childAlive) this.#send({ type: 'abandon' });
    else this.#child.kill('SIGKILL');
    closeSync(this.#channel);
    for (const session of this.#batch?.moving ?? []) session.thaw();
    this.#onAdopted?.();
    const tokens = this.#tokens;
    // Still accepting on the original listener if it never stopped: the spare goes.
    if (tokens === undefined) closeSync(this.spareFd);
    const resume = tokens === undefined ? Promise.resolve() : h.streaming.acceptOn(this.spareFd);
    void resume.then(
      () => {
        this.log.error('upgrade failed; this process goes on serving', {
          why,
          ...(err ? { err } : {}),
          ...(this.#moved > 0 ? { sessionsLeftWithNewProcess: this.#moved, newProcessAlive: childAlive } : {}),
        });
        h.metrics.handovers.inc({ result: 'failed' });
        void fs.rm(this.#bindPath, { force: true });
      },
      (listenErr: unknown) => this.log.error('upgrade failed and the streaming listener could not be resumed', { why, err: listenErr }),
    );
    this.finished(false);
  }
}

/** A process that has handed over (or an abandoned new one): exit 0 once its last session has ended. */
function drainThenExit(h: Handover, log: Logger, done: () => void): void {
  const drain = setInterval(() => {
    if (h.streaming.openSessions > 0) return;
    clearInterval(drain);
    log.info('upgrade: the last session ended; exiting');
    done();
  }, DRAIN_POLL_MS);
}

/** The new side: where to bind and what URL base to keep, if this process is an upgrade's new one. */
export function takeoverFromEnv(): Takeover | undefined {
  const baseUrl = process.env[BASE_URL_ENV];
  if (process.env[TAKEOVER_ENV] !== '1' || !baseUrl || process.send === undefined) return undefined;
  delete process.env[TAKEOVER_ENV];
  delete process.env[BASE_URL_ENV];
  return { baseUrl };
}

/** How a new process's takeover ended: it serves everything, or the old one abandoned the upgrade. */
export type TakeoverResult = 'took-over' | 'abandoned';

/**
 * The new side, once started: take the tokens, adopt the sessions batch by batch (each
 * paused until the old process lets go of it), accept on the inherited listener, tell the
 * old one. Should the old process die on the way (its IPC channel closes before it has
 * released the CRI socket), this one takes over alone: it starts what it adopted, accepts
 * on the listener, without the tokens if they never came, and moves its CRI socket over
 * the path itself, so that the node is never left without a server. Should the old one
 * abandon the upgrade after some sessions are running here, this process serves them until
 * they end and takes nothing else.
 */
export function takeOver(server: RunningServer, criSocket: string, log: Logger): Promise<TakeoverResult> {
  return new Promise((resolve, reject) => {
    const h = server.handover;
    let tokens: ExportedToken[] = [];
    let accepting: Promise<void> | undefined;
    let released = false;
    let abandoned = false;
    let sessionsCame = false;
    /** The batch adopted and paused, until the old process lets go of it. */
    let batch: AdoptedSession[] = [];
    let adopted = 0;
    const accept = (): Promise<void> => {
      if (accepting !== undefined) return accepting;
      h.tokens.importAll(tokens);
      accepting = h.streaming.acceptOn(LISTENER_FD);
      accepting.then(() => log.info('upgrade: took over', { tokens: tokens.length, sessions: adopted }), reject);
      return accepting;
    };
    const startBatch = (): void => {
      adopted += batch.length;
      startAdopted(h, batch, log);
      batch = [];
    };
    const abandon = (why: string): void => {
      if (abandoned) return;
      abandoned = true;
      log.warn('upgrade abandoned: serving the sessions already taken over until they end', { why, sessions: adopted });
      resolve('abandoned');
    };
    const crashInjected = process.env.CRI_PORTFORWARD_TEST_TAKEOVER_CRASH === '1';
    process.on('message', (message: ToNew) => {
      if (abandoned) return;
      switch (message.type) {
        case 'tokens':
          tokens = message.tokens;
          importCounters(h.metrics, message.counters);
          return;
        case 'token':
          h.tokens.importAll([message.token]);
          return;
        case 'sessions': {
          sessionsCame = true;
          if (crashInjected) throw new Error('injected: crash while adopting the sessions (test)');
          try {
            const fds: number[] = [];
            for (let i = 0; i < message.fdMessages; i++) fds.push(...addon.recvFds(SESSION_FDS_FD));
            batch = h.adoptSessions(message.sessions, fds);
          } catch (err) {
            log.error('upgrade: adopting the sessions failed', { err });
            process.send!({ type: 'adopt-failed', why: String((err as Error)?.message ?? err) } satisfies ToOld);
            abandon('adopting the sessions failed');
            return;
          }
          process.send!({ type: 'adopted', count: batch.length } satisfies ToOld);
          return;
        }
        case 'sessions-yours':
          startBatch();
          return;
        case 'take-listener':
          if (crashInjected && !sessionsCame) throw new Error('injected: crash while taking over (test)');
          void accept().then(() => {
            closeSync(SESSION_FDS_FD); // every batch has come
            h.metrics.handovers.inc({ result: 'ok' }); // counted on from the old process's count
            process.send!({ type: 'took-over', pid: process.pid } satisfies ToOld);
            resolve('took-over');
          });
          return;
        case 'released':
          // The old process has stopped serving the CRI socket: what it changed is on disk.
          released = true;
          reloadSandboxes();
          return;
        case 'abandon':
          abandon('the old process abandoned the upgrade');
      }
    });
    const reloadSandboxes = (): void => {
      void h.reloadSandboxes().catch((err: unknown) => log.error('rereading the sandbox records after the upgrade failed', { err }));
    };
    process.once('disconnect', () => {
      if (released || abandoned) return;
      // Whatever the old process passed is ours alone now: it is gone.
      startBatch();
      log.warn('upgrade: the old process went away before it released the CRI socket; taking over alone');
      void accept()
        .then(() => fs.rename(bindPathFor(criSocket), criSocket))
        .catch((err: unknown) => {
          // ENOENT: the old process had already moved our socket into place.
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        })
        .then(() => {
          reloadSandboxes();
          resolve('took-over');
        }, reject);
    });
    process.send!({ type: 'prepared' } satisfies ToOld);
  });
}

/** Start adopted sessions; count them and the pause each saw (frozen in the old process to reading here). */
function startAdopted(h: Handover, adopted: AdoptedSession[], log: Logger): void {
  if (adopted.length === 0) return;
  let maxPauseMs = 0;
  for (const session of adopted) {
    session.start();
    const pauseMs = Number(process.hrtime.bigint() - session.frozenAt) / 1e6;
    maxPauseMs = Math.max(maxPauseMs, pauseMs);
    h.metrics.handoverPause.observe(pauseMs / 1000);
    h.metrics.sessionsHandedOver.inc({ protocol: session.protocol });
  }
  log.info('upgrade: sessions resumed', { sessions: adopted.length, maxPauseMs: Math.round(maxPauseMs * 10) / 10 });
}

/** An abandoned new process: serve the sessions it runs until they end, then exit 0. */
export function serveAbandoned(server: RunningServer, log: Logger): void {
  drainThenExit(server.handover, log, () => process.exit(0));
}
