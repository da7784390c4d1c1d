// Every tunable of the server: its flag, its default, and how it is validated. The CLI
// parses flags into a Config once; nothing else reads argv or the environment.

import { isAbsolute } from 'node:path';
import { isIP } from 'node:net';
import { isLogLevel, LOG_LEVELS, type LogLevel } from './log';
import { PORT_FORWARD_ANNOTATION, PORT_POLICY_MODES, PORTS_ANNOTATION, type PortPolicyMode } from './policy/port-policy';

/** Where CRI clients (kubelet, crictl) reach us. */
export const DEFAULT_CRI_SOCKET = '/run/cri-portforward/cri.sock';
/** Sandbox records and the bind-mounted network namespaces of the embedded store. */
export const DEFAULT_STATE_DIR = '/var/lib/cri-portforward';
/** Loopback and a free port, as containerd's streaming server defaults. */
export const DEFAULT_STREAM_ADDRESS = '127.0.0.1:0';
/** How long a PortForward URL stays redeemable (upstream: 1 minute). */
export const DEFAULT_TOKEN_TTL_MS = 60_000;
/** Tokens issued but not yet redeemed or expired (upstream: 1000). */
export const DEFAULT_MAX_INFLIGHT_TOKENS = 1000;

export interface ListenAddress {
  host: string;
  port: number;
}

export interface Config {
  criSocket: string;
  /** Proxy mode: the upstream runtime's CRI endpoint (unix:///path or host:port). */
  upstream: string | undefined;
  stateDir: string;
  streamAddress: ListenAddress;
  tlsCert: string | undefined;
  tlsKey: string | undefined;
  tokenTtlMs: number;
  maxInflightTokens: number;
  logLevel: LogLevel;
  /** Time the second direction of a forward gets once the first has ended. */
  halfCloseGraceMs: number;
  /** A port-forward session with no frame for this long is ended (upstream: 4 h). */
  streamIdleTimeoutMs: number;
  /** Nothing listening on a forwarded port: reset that connection, or end the session as upstream. */
  refusedDial: 'reset' | 'error';
  /** An error and a data stream of one forwarded connection must both arrive within this. */
  streamCreationTimeoutMs: number;
  /** Ping an idle port-forward WebSocket this often (keeps proxies from dropping it). */
  websocketPingIntervalMs: number;
  /** A SPDY stream holding a full receive buffer without progress this long is reset. */
  streamStallTimeoutMs: number;
  /** Bytes all forwarded connections together may hold beyond their base buffers. */
  maxBufferMemory: number;
  /** Which ports of a pod port-forward may reach (policy/port-policy.ts). */
  portPolicy: PortPolicyMode;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export interface FlagSpec {
  name: string;
  value: string;
  default: string | undefined;
  help: string;
}

/** The flags of `serve`, in the order --help prints them. */
export const SERVE_FLAGS: readonly FlagSpec[] = [
  { name: 'cri-socket', value: 'path', default: DEFAULT_CRI_SOCKET, help: 'unix socket of the CRI gRPC RuntimeService' },
  { name: 'upstream', value: 'endpoint', default: undefined, help: 'proxy mode: pass every CRI call to this runtime (e.g. unix:///run/containerd/containerd.sock) and answer PortForward ourselves' },
  { name: 'state-dir', value: 'dir', default: DEFAULT_STATE_DIR, help: 'sandbox records and network namespaces of the embedded store' },
  { name: 'stream-address', value: 'host:port', default: DEFAULT_STREAM_ADDRESS, help: 'listen address of the streaming server (port 0: a free port)' },
  { name: 'tls-cert', value: 'file', default: undefined, help: 'PEM certificate: serve the streaming server over https (needs --tls-key)' },
  { name: 'tls-key', value: 'file', default: undefined, help: 'PEM private key for --tls-cert' },
  { name: 'token-ttl', value: 'duration', default: '1m', help: 'how long a PortForward URL stays redeemable (e.g. 30s, 1m, 1m30s)' },
  { name: 'max-inflight-tokens', value: 'n', default: String(DEFAULT_MAX_INFLIGHT_TOKENS), help: 'PortForward URLs issued and not yet redeemed; beyond it PortForward answers RESOURCE_EXHAUSTED' },
  { name: 'half-close-grace', value: 'duration', default: '1s', help: 'once one direction of a forwarded connection has ended, how long the other may stay idle (no byte moved) before both are ended with a FIN (containerd: 1s from the first end, busy or not)' },
  { name: 'stream-idle-timeout', value: 'duration', default: '4h', help: 'end a port-forward session that carried no frame for this long' },
  { name: 'port-policy', value: 'any|declared', default: 'any', help: `which ports of a pod port-forward may reach: any port, or only the pod's declared TCP container ports and those its annotation ${PORTS_ANNOTATION} lists (e.g. "8080,9000-9010" or "*"); under either, the annotation ${PORT_FORWARD_ANNOTATION}: deny closes the pod` },
  { name: 'refused-dial', value: 'reset|error', default: 'reset', help: 'nothing listens on a forwarded port: reset that connection only (the session lives on), or write the error as upstream does (kubectl then exits)' },
  { name: 'stream-creation-timeout', value: 'duration', default: '30s', help: 'a SPDY forwarded connection whose error and data streams have not both arrived by then is dropped (upstream: 30s)' },
  { name: 'max-buffer-memory', value: 'size', default: '64Mi', help: 'what all forwarded connections together may hold beyond their small base buffers (bulk read buffers, write queues, stream and channel receive buffers); past it they apply backpressure instead of growing (e.g. 64Mi, 512Ki, 1Gi)' },
  { name: 'stream-stall-timeout', value: 'duration', default: '2m', help: 'a SPDY stream whose app has not taken a byte of its full receive buffer for this long is reset, so that the other streams of its session flow again (SPDY has no per-stream flow control)' },
  { name: 'websocket-ping-interval', value: 'duration', default: '30s', help: 'ping an idle port-forward WebSocket this often, so proxies on the way keep it open' },
  { name: 'log-level', value: 'level', default: 'info', help: `one of ${LOG_LEVELS.join(', ')}` },
];

export type RawFlags = Record<string, string | undefined>;

export function buildConfig(flags: RawFlags): Config {
  const get = (name: string): string | undefined => {
    const value = flags[name];
    return value === undefined ? SERVE_FLAGS.find((f) => f.name === name)?.default : value;
  };
  const tlsCert = get('tls-cert');
  const tlsKey = get('tls-key');
  if ((tlsCert === undefined) !== (tlsKey === undefined)) {
    throw new ConfigError('--tls-cert and --tls-key must be given together');
  }
  const logLevel = get('log-level') ?? 'info';
  if (!isLogLevel(logLevel)) {
    throw new ConfigError(`--log-level must be one of ${LOG_LEVELS.join(', ')}, not "${logLevel}"`);
  }
  const criSocket = requirePath('cri-socket', get('cri-socket'));
  const tokenTtlMs = parseDuration('token-ttl', get('token-ttl') ?? '');
  if (tokenTtlMs < 1) throw new ConfigError('--token-ttl must be at least 1ms');
  return {
    criSocket,
    upstream: parseUpstream(get('upstream')),
    stateDir: requirePath('state-dir', get('state-dir')),
    streamAddress: parseListenAddress('stream-address', get('stream-address') ?? ''),
    tlsCert,
    tlsKey,
    tokenTtlMs,
    maxInflightTokens: parsePositiveInt('max-inflight-tokens', get('max-inflight-tokens') ?? ''),
    logLevel,
    halfCloseGraceMs: parseDuration('half-close-grace', get('half-close-grace') ?? ''),
    streamIdleTimeoutMs: positiveDuration('stream-idle-timeout', get('stream-idle-timeout') ?? ''),
    refusedDial: parseRefusedDial(get('refused-dial') ?? ''),
    streamCreationTimeoutMs: positiveDuration('stream-creation-timeout', get('stream-creation-timeout') ?? ''),
    websocketPingIntervalMs: positiveDuration('websocket-ping-interval', get('websocket-ping-interval') ?? ''),
    streamStallTimeoutMs: positiveDuration('stream-stall-timeout', get('stream-stall-timeout') ?? ''),
    maxBufferMemory: parseSize('max-buffer-memory', get('max-buffer-memory') ?? ''),
    portPolicy: parsePortPolicy(get('port-policy') ?? ''),
  };
}

function parseUpstream(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (/^unix:\/\/\/.+/.test(value) || /^(?:(?:tcp|dns):\/\/\/?)?[^\s/:]+:[0-9]{1,5}$/.test(value)) return value;
  throw new ConfigError(`--upstream must be unix:///path/to.sock or host:port, not "${value}"`);
}

function positiveDuration(flag: string, value: string): number {
  const ms = parseDuration(flag, value);
  if (ms < 1) throw new ConfigError(`--${flag} must be at least 1ms`);
  return ms;
}

function parseRefusedDial(value: string): 'reset' | 'error' {
  if (value !== 'reset' && value !== 'error') {
    throw new ConfigError(`--refused-dial must be reset or error, not "${value}"`);
  }
  return value;
}

function parsePortPolicy(value: string): PortPolicyMode {
  const mode = PORT_POLICY_MODES.find((m) => m === value);
  if (mode === undefined) throw new ConfigError(`--port-policy must be one of ${PORT_POLICY_MODES.join(', ')}, not "${value}"`);
  return mode;
}

function requirePath(flag: string, value: string | undefined): string {
  if (value === undefined || !isAbsolute(value)) {
    throw new ConfigError(`--${flag} must be an absolute path, not "${value ?? ''}"`);
  }
  return value;
}

const SIZE_UNITS: Record<string, number> = { '': 1, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3 };

/** A byte count as Kubernetes quantities write it: 67108864, 512Ki, 64Mi, 1Gi. */
function parseSize(flag: string, value: string): number {
  const m = /^([0-9]+)(Ki|Mi|Gi)?$/.exec(value);
  const bytes = m === null ? NaN : Number(m[1]) * SIZE_UNITS[m[2] ?? '']!;
  if (!(bytes >= 1) || !Number.isSafeInteger(bytes)) {
    throw new ConfigError(`--${flag} must be a byte count such as 67108864, 512Ki, 64Mi or 1Gi, not "${value}"`);
  }
  return bytes;
}

function parsePositiveInt(flag: string, value: string): number {
  if (!/^[0-9]+$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
    throw new ConfigError(`--${flag} must be a positive integer, not "${value}"`);
  }
  return Number(value);
}

const DURATION_UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Go-style durations ("500ms", "30s", "1m30s", "4h"), as containerd's config takes them. */
export function parseDuration(flag: string, value: string): number {
  const part = /([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)/y;
  let total = 0;
  let offset = 0;
  while (offset < value.length) {
    part.lastIndex = offset;
    const match = part.exec(value);
    if (match === null) break;
    total += Number(match[1]) * DURATION_UNIT_MS[match[2] as string]!;
    offset = part.lastIndex;
  }
  if (value.length === 0 || offset !== value.length) {
    throw new ConfigError(`--${flag} must be a duration such as 500ms, 30s, 1m30s or 4h, not "${value}"`);
  }
  return Math.round(total);
}

export function parseListenAddress(flag: string, value: string): ListenAddress {
  // host:port, with IPv6 hosts in brackets as Go's net.JoinHostPort writes them.
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):([0-9]{1,5})$/.exec(value);
  const port = match ? Number(match[3]) : NaN;
  const host = match ? (match[1] ?? match[2] ?? '') : '';
  if (!match || port > 65535 || host === '' || (match[1] !== undefined && isIP(host) !== 6)) {
    throw new ConfigError(`--${flag} must be host:port (IPv6 as [addr]:port), not "${value}"`);
  }
  return { host, port };
}
