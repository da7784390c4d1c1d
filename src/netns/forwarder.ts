// Forwarder: the only place that turns "a port of a sandbox" into a connected socket. It
// resolves the sandbox and lets the native addon dial localhost inside the sandbox's
// network namespace (127.0.0.1 first, then ::1, as containerd does). It hands back the fd:
// the pipe that will own the connection drives it with its own read buffer (PodSocket).
// Streaming code never sees a namespace.

import { getSystemErrorMap } from 'node:util';
import { errorMessage } from '../errors';
import type { ResolvedSandbox, SandboxResolver } from '../sandbox/types';
import { addon, type RawDialResult } from './addon';
import { namespaceDialled } from './handles';

/** How long one dial (both families together) may take before it fails as a timeout. */
export const DEFAULT_DIAL_TIMEOUT_MS = 5_000;

export type DialFailure = 'sandbox-gone' | 'netns-closed' | 'refused' | 'timeout';

/** A dial that failed, with the text upstream would write on the error stream. */
export class DialError extends Error {
  constructor(
    readonly failure: DialFailure,
    message: string,
  ) {
    super(message);
    this.name = 'DialError';
  }
}

export interface ForwarderOptions {
  dialTimeoutMs?: number;
}

export class Forwarder {
  readonly #resolver: SandboxResolver;
  readonly #dialTimeoutMs: number;

  constructor(resolver: SandboxResolver, options: ForwarderOptions = {}) {
    this.#resolver = resolver;
    this.#dialTimeoutMs = options.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
  }

  /**
   * The fd of a TCP socket connected to localhost:port inside the sandbox. The caller owns
   * it: the pipe drives it (Pipe, through a PodSocket), or closes it.
   */
  async open(sandboxId: string, port: number): Promise<number> {
    return this.connect(await this.resolve(sandboxId), port);
  }

  /** The same, for a sandbox already resolved (forward.ts judges the port policy in between). */
  async connect(sandbox: ResolvedSandbox, port: number): Promise<number> {
    try {
      return await this.dial(sandbox, port);
    } catch (err) {
      // What the resolver remembered is out of date (the sandbox was stopped, or its netns
      // replaced; or the namespace handle the dial kept is: native/netns_handles.c): ask
      // once more, then dial what it says now. A sandbox's config (its ports
      // and annotations) never changes, so the policy's verdict still holds.
      if (!(err instanceof DialError) || err.failure !== 'netns-closed') throw err;
      this.#resolver.forget?.(sandbox.id);
      return this.dial(await this.resolve(sandbox.id), port);
    }
  }

  /** The sandbox, if the resolver knows it ready right now (no await); else use resolve(). */
  peek(sandboxId: string): ResolvedSandbox | undefined {
    const sandbox = this.#resolver.peek?.(sandboxId);
    return sandbox?.ready === true ? sandbox : undefined;
  }

  /** The sandbox a forward dials into; a sandbox gone or stopped is a DialError. */
  async resolve(sandboxId: string): Promise<ResolvedSandbox> {
    let sandbox: ResolvedSandbox | undefined;
    try {
      sandbox = await this.#resolver.resolve(sandboxId);
    } catch (err) {
      // The runtime did not answer (proxy mode, upstream down): this connection fails, as a
      // refused dial would; the next one asks again.
      throw new DialError('refused', `dial failed: ${errorMessage(err)}`);
    }
    if (sandbox === undefined || !sandbox.ready) {
      // The sandbox went away (or stopped) after its URL was issued.
      throw new DialError('sandbox-gone', `network namespace for sandbox "${sandboxId}" is closed`);
    }
    return sandbox;
  }

  /** Dial localhost:port in the sandbox's namespace (127.0.0.1, then ::1); the fd is the caller's. */
  async dial(sandbox: ResolvedSandbox, port: number): Promise<number> {
    const path = sandbox.netnsPath;
    let result: number | RawDialResult;
    if (path === null) {
      result = await addon.dialInNetns(null, port, this.#dialTimeoutMs);
    } else {
      // Most dials into a pod take a spare socket an earlier dial made in its namespace
      // and connect it here, at once (loopback): no worker thread, no setns. The rest go
      // to a worker thread, which also makes the next spares.
      const spare = addon.dialSpare(path, port);
      namespaceDialled();
      if (typeof spare === 'number' && spare >= 0) return spare;
      result =
        typeof spare === 'number'
          ? await addon.dialInNetns(path, port, this.#dialTimeoutMs)
          : await addon.dialInNetns(path, port, this.#dialTimeoutMs, spare.connectingFd ?? -1, spare.errno4 ?? 0);
    }
    if (typeof result === 'number') return result;
    if (result.nsStage !== undefined) {
      throw new DialError(
        'netns-closed',
        `network namespace for sandbox "${sandbox.id}" is closed (${result.nsStage} ${sandbox.netnsPath}: ${errnoText(result.nsErrno)})`,
      );
    }
    const where = sandbox.netnsPath ?? 'host';
    const failure: DialFailure =
      result.errno4 === ETIMEDOUT && (result.errno6 === ETIMEDOUT || result.errno6 === 0) ? 'timeout' : 'refused';
    throw new DialError(
      failure,
      `failed to execute portforward in network namespace "${where}": ${connectFailureText(sandbox.id, port, result)}`,
    );
  }
}

const ERRNO_TEXT = getSystemErrorMap();
const ETIMEDOUT = 110;

function errnoText(errno: number): string {
  return ERRNO_TEXT.get(-errno)?.[1] ?? `errno ${errno}`;
}

/** Upstream's text (containerd sandbox_portforward_linux.go), with Go's dial error wording. */
function connectFailureText(sandboxId: string, port: number, r: RawDialResult): string {
  const v4 = `dial tcp4 127.0.0.1:${port}: connect: ${errnoText(r.errno4)}`;
  const v6 = r.errno6 === 0 ? 'not tried: no time left' : `dial tcp6 [::1]:${port}: connect: ${errnoText(r.errno6)}`;
  return `failed to connect to localhost:${port} inside namespace "${sandboxId}", IPv4: ${v4} IPv6 ${v6} `;
}
