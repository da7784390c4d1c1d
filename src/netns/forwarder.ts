// Forwarder.open(sandboxId, port): the only place that turns "a port of a sandbox" into a
// connected socket. It resolves the sandbox, lets the native addon dial localhost inside
// the sandbox's network namespace (127.0.0.1 first, then ::1, as containerd does), and
// wraps the fd in a net.Socket. Streaming code never sees a namespace.

import { Socket, type OnReadOpts, type SocketConstructorOpts } from 'node:net';
import { getSystemErrorMap } from 'node:util';
import { CriError } from '../errors';
import type { SandboxResolver } from '../sandbox/types';
import { addon, type RawDialResult } from './addon';

/** How long one dial (both families together) may take before it fails as a timeout. */
export const DEFAULT_DIAL_TIMEOUT_MS = 5_000;

export type DialFailure = 'sandbox-gone' | 'netns-closed' | 'refused' | 'timeout';

/** A dial that failed, with the text upstream would write on the error stream. */
export class DialError extends CriError {
  constructor(
    readonly failure: DialFailure,
    message: string,
  ) {
    super(failure === 'refused' || failure === 'timeout' ? 'unavailable' : 'not-found', message);
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
   * A socket connected to localhost:port inside the sandbox. `socketOptions` lets the
   * caller (the pipe) set onread and allowHalfOpen on the socket it will own.
   */
  async open(sandboxId: string, port: number, socketOptions: SocketConstructorOpts & { onread?: OnReadOpts; writableHighWaterMark?: number } = {}): Promise<Socket> {
    const sandbox = await this.#resolver.resolve(sandboxId);
    if (sandbox === undefined || !sandbox.ready) {
      // The sandbox went away (or stopped) after its URL was issued.
      throw new DialError('sandbox-gone', `network namespace for sandbox "${sandboxId}" is closed`);
    }
    const result = await addon.dialInNetns(sandbox.netnsPath, port, this.#dialTimeoutMs);
    if (result.fd >= 0) {
      return new Socket({ ...socketOptions, fd: result.fd, readable: true, writable: true });
    }
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
