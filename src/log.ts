// JSON-lines logger on stdout: one object per line, so that operators can ship it as is
// and tests can wait for the "ready" line. Never used on the per-chunk data path.
//
// It is on the per-connection path (a line as a forward starts and one as it ends, at
// info), so a line is made cheaply: a logger keeps its context fields already serialised,
// fields without an Error in them are serialised without a replacer, and the lines of one
// event-loop turn are written to stdout together (one write per turn instead of one per
// line; flushed synchronously on exit, so an exiting process loses none).

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

/** Where lines go: by default stdout, a turn's lines at a time. */
export type LineWriter = (line: string) => void;

export function createLogger(level: LogLevel, write: LineWriter = writeToStdout, base: LogFields = {}): Logger {
  return new JsonLogger(LEVEL_RANK[level], write, base);
}

class JsonLogger implements Logger {
  /**
   * The context fields serialised as `,"k":v,...` (or ''), made at the first line: a
   * connection's logger at --log-level warn usually writes none.
   */
  #baseMembers: string | undefined;
  /** The context fields, the parent's and the child's own merged at the first use. */
  #base: LogFields | undefined;

  constructor(
    private readonly threshold: number,
    private readonly write: LineWriter,
    /** The parent's context fields (a root logger's own). */
    private readonly parentBase: LogFields,
    /**
     * A child's own fields. Merging them waits for a line: a connection's loggers usually
     * write none, and the merge (an object spread) took V8's slow path on every connection.
     */
    private readonly own?: LogFields,
  ) {}

  debug(msg: string, fields?: LogFields): void {
    if (LEVEL_RANK.debug >= this.threshold) this.#emit('debug', msg, fields);
  }

  info(msg: string, fields?: LogFields): void {
    if (LEVEL_RANK.info >= this.threshold) this.#emit('info', msg, fields);
  }

  warn(msg: string, fields?: LogFields): void {
    if (LEVEL_RANK.warn >= this.threshold) this.#emit('warn', msg, fields);
  }

  error(msg: string, fields?: LogFields): void {
    if (LEVEL_RANK.error >= this.threshold) this.#emit('error', msg, fields);
  }

  announce(msg: string, fields?: LogFields): void {
    this.#emit('info', msg, fields);
  }

  child(fields: LogFields): Logger {
    return new JsonLogger(this.threshold, this.write, this.#context(), fields);
  }

  #context(): LogFields {
    return (this.#base ??= this.own === undefined ? this.parentBase : { ...this.parentBase, ...this.own });
  }

  #emit(level: LogLevel, msg: string, fields: LogFields | undefined): void {
    const base = this.#context();
    let rest = (this.#baseMembers ??= members(base));
    if (fields !== undefined) {
      // A field named as a context field replaces it (rare): the slow path keeps one of each.
      rest = overridesAny(fields, base) ? members({ ...base, ...fields }) : rest + members(fields);
    }
    this.write(`{"time":"${isoNow()}","level":"${level}","msg":${JSON.stringify(msg)}${rest}}\n`);
  }
}

// The time of a line, formatted once per millisecond: the lines of a busy turn share it,
// and formatting a Date was a sixth of a line's cost.
let isoMs = -1;
let isoText = '';

function isoNow(): string {
  const ms = Date.now();
  if (ms !== isoMs) {
    isoMs = ms;
    isoText = new Date(ms).toISOString();
  }
  return isoText;
}

/** `,"k":v,...` for the fields, '' for none. */
function members(fields: LogFields): string {
  let plain = true;
  for (const key in fields) {
    const value = fields[key];
    if (typeof value === 'bigint' || (typeof value === 'object' && value !== null)) {
      plain = false;
      break;
    }
  }
  const json = plain ? JSON.stringify(fields) : JSON.stringify(fields, errorReplacer);
  return json.length > 2 ? `,${json.slice(1, -1)}` : '';
}

function overridesAny(fields: LogFields, base: LogFields): boolean {
  for (const key in fields) if (key in base) return true;
  return false;
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

// ---- stdout, a turn at a time ---------------------------------------------------------

let pending = '';

function writeToStdout(line: string): void {
  if (pending === '') {
    setImmediate(flushStdout);
    if (!exitHooked) hookExit();
  }
  pending += line;
}

function flushStdout(): void {
  if (pending === '') return;
  const lines = pending;
  pending = '';
  process.stdout.write(lines);
}

let exitHooked = false;

function hookExit(): void {
  exitHooked = true;
  // stdout to a file or a pipe is written synchronously: nothing is left behind on exit.
  process.on('exit', flushStdout);
}
