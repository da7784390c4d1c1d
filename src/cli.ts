#!/usr/bin/env node
// cri-portforward command line: `serve` runs the CRI and streaming servers.

// First: V8's tiering flag must be set before the server's code starts running.
import './tiering';
import { parseArgs } from 'node:util';
import { startServer } from './app';
import { buildConfig, ConfigError, SERVE_FLAGS, type RawFlags } from './config';
import { createLogger } from './log';
import { PACKAGE_VERSION } from './package-info';
import { notifyReady } from './systemd';
import { serveAbandoned, takeOver, takeoverFromEnv, Upgrader } from './upgrade';

/** SIGTERM/SIGINT must end the process within 5 s even if a close hangs. */
const SHUTDOWN_DEADLINE_MS = 4_500;

/** Help text is wrapped to fit an 80-column terminal. */
const HELP_WIDTH = 80;
const HELP_INDENT = '      ';

/** Words of `text` in lines of at most HELP_WIDTH, each indented under its flag. */
function wrapHelp(text: string): string {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line !== '' && HELP_INDENT.length + line.length + 1 + word.length > HELP_WIDTH) {
      lines.push(line);
      line = word;
    } else {
      line = line === '' ? word : `${line} ${word}`;
    }
  }
  lines.push(line);
  return lines.map((l) => HELP_INDENT + l).join('\n');
}

// Each flag on a line of its own with its default, its text below: no column for a long
// flag to run into.
const USAGE = `Usage: cri-portforward serve [flags]
       cri-portforward --version

A CRI RuntimeService on a unix socket whose PortForward URLs are served by its own
streaming server, forwarding into real network namespaces.

Flags of serve:
${SERVE_FLAGS.map((f) => {
  const def = f.default === undefined ? '' : `  (default ${f.default})`;
  return `  --${f.name} ${f.value}${def}\n${wrapHelp(f.help)}`;
}).join('\n')}
  --help
${wrapHelp('show this text')}
`;

function usageError(message: string): never {
  process.stderr.write(`cri-portforward: ${message} (see cri-portforward --help)\n`);
  process.exit(2);
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(USAGE);
    return;
  }
  if (command === '--version' || command === 'version') {
    process.stdout.write(`${PACKAGE_VERSION}\n`);
    return;
  }
  if (command !== 'serve') usageError(`unknown command "${command}"`);

  let flags: RawFlags;
  try {
    const parsed = parseArgs({
      args: rest,
      strict: true,
      allowPositionals: false,
      options: {
        help: { type: 'boolean', short: 'h' },
        ...Object.fromEntries(SERVE_FLAGS.map((f) => [f.name, { type: 'string' as const }])),
      },
    });
    if (parsed.values.help === true) {
      process.stdout.write(USAGE);
      return;
    }
    flags = parsed.values as RawFlags;
  } catch (err) {
    usageError((err as Error).message.split('\n')[0] ?? String(err));
  }
  let config;
  try {
    config = buildConfig(flags);
  } catch (err) {
    if (err instanceof ConfigError) usageError(err.message);
    throw err;
  }

  const log = createLogger(config.logLevel);
  const takeover = takeoverFromEnv();
  let server;
  try {
    server = await startServer(config, log, takeover);
    if (takeover && (await takeOver(server, config.criSocket, log)) === 'abandoned') {
      // Not the node's server: no readiness, no signals of its own; it ends with its sessions.
      serveAbandoned(server, log);
      return;
    }
  } catch (err) {
    log.error('cannot start', { err });
    process.exit(1);
  }
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal });
    setTimeout(() => {
      log.error('shutdown took too long; exiting');
      process.exit(1);
    }, SHUTDOWN_DEADLINE_MS).unref();
    server.close().then(
      () => {
        log.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        log.error('shutdown failed', { err });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  const upgrader = new Upgrader(server, config.criSocket, log);
  process.on('SIGUSR2', () =>
    upgrader.start(() => {
      log.info('stopped');
      process.exit(0);
    }),
  );
  // Only now: a script that signals us as soon as it reads this line finds the handlers set.
  notifyReady(log);
  log.announce('ready', {
    pid: process.pid,
    criSocket: server.criSocket,
    streamBaseUrl: server.streamBaseUrl,
    stateDir: config.stateDir,
    version: PACKAGE_VERSION,
  });
}

main(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`cri-portforward: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(1);
});
