// JSON-lines logger on stdout: one object per line, so that operators can ship it as is
// and tests can wait for the "ready" line. Never used on the per-chunk data path.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFields = Record<string, unknown>;

const LEVEL_RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** An info line written at every level: the "ready" line scripts wait for. */
  announce(msg: string, fields?: LogFields): void;
  /** A logger that adds `fields` to every line it writes. */
  child(fields: LogFields): Logger;
}

export function isLogLevel(value: string): value is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(value);
}

export function createLogger(
  level: LogLevel,
  write: (line: string) => void = (line) => process.stdout.write(line),
  base: LogFields = {},
): Logger {
  const threshold = LEVEL_RANK[level];
  const emit = (lvl: LogLevel, msg: string, fields?: LogFields, always = false): void => {
    if (!always && LEVEL_RANK[lvl] < threshold) return;
    const entry: LogFields = { time: new Date().toISOString(), level: lvl, msg, ...base, ...fields };
    write(JSON.stringify(entry, errorReplacer) + '\n');
  };
  return {
    debug: (msg, fields) => emit('debug', msg, fields),
    info: (msg, fields) => emit('info', msg, fields),
    warn: (msg, fields) => emit('warn', msg, fields),
    error: (msg, fields) => emit('error', msg, fields),
    announce: (msg, fields) => emit('info', msg, fields, true),
    child: (fields) => createLogger(level, write, { ...base, ...fields }),
  };
}

// Error objects have no enumerable properties; log their message (and code) instead of {}.
function errorReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as NodeJS.ErrnoException).code;
    return code === undefined ? value.message : `${value.message} (${code})`;
  }
  if (typeof value === 'bigint') return value.toString();
  return value;
}
