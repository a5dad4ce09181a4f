import { randomBytes } from 'node:crypto';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import autobahn from 'autobahn';
import { MAX_PATHS_PER_BUMP } from './bumps/bump-source.js';
import { bumperOptions, createBumper } from './bumps/bumper.js';
import { createWaymark } from './wamp/component.js';
import { loadBumpTarget, loadConfig, loadRouterTarget, type RedisTarget, type WaymarkConfig } from './protocol/config.js';
import { createRedis, describeRedis, type RedisClient } from './support/redis.js';
import { ConfigError } from './protocol/errors.js';
import { createLogger, redactUrl, type Logger } from './support/logger.js';
import { sessionTopic, PROC_WATCH, WAMP_SUBPROTOCOLS } from './protocol/uris.js';
import { VERSION } from './protocol/version.js';
import { DEFAULTS } from './protocol/config.js';
import { isValidTag, validatePath } from './protocol/validation.js';

type Env = Record<string, string | undefined>;

/** Where `waymark dev` serves its demo API unless told otherwise (`--api-port`). */
const DEV_API_URL = 'http://127.0.0.1:8000';

const HELP: Record<string, string> = {
  main: `waymark ${VERSION}: real-time push for authenticated HTTP APIs

Usage: waymark <command> [options]

Commands:
  serve                 run the Waymark component (configuration from WAYMARK_* variables)
  dev                   run an in-process router, the component and a demo API on this machine
  watch <path>          watch a path as a browser would and print each Update as one JSON line
  bump [<path>...]      publish a bump for paths, prefixes (--prefix) and tags (--tag) to Redis
  doctor                check router, realm, authentication, Redis and the API, one line each
  demo-api              run the demo API alone (used by docker compose)

Run 'waymark <command> --help' for a command's options.`,
  serve: `Usage: waymark serve

Runs the Waymark component: joins the WAMP router, registers waymark.watch / waymark.unwatch /
waymark.authorize, consumes bumps from Redis and pushes Updates. Settings come from the
environment; WAYMARK_API_URL is required. See docs/operations.md#configuration.
SIGTERM or SIGINT drains in-flight work (up to WAYMARK_SHUTDOWN_TIMEOUT_MS) and exits 0;
a second signal exits at once with 1. Exit code 2: a bad setting or a port that cannot be bound.`,
  dev: `Usage: waymark dev [--api-port N]

Runs everything a newcomer needs on one machine: a WAMP router on WAYMARK_ROUTER_URL
(default ws://127.0.0.1:8080/ws, realm realm1), the Waymark component and a demo API
(default http://127.0.0.1:8000, tokens alice and bob) which also serves the browser demo page
at its root. Needs Redis at WAYMARK_REDIS_URL
(default redis://127.0.0.1:6379). Set WAYMARK_API_URL to use your own API instead of the demo.

Options:
  --api-port N   port of the demo API (default 8000; 0 picks a free one)`,
  watch: `Usage: waymark watch <path> [--token T] [--header K:V]... [--snapshot] [--count N]

Joins the router (WAYMARK_ROUTER_URL, WAYMARK_REALM) as an anonymous browser would, watches
<path> and prints every Update on stdout as one JSON line, until interrupted. Exit code 2 when
Waymark refuses the path, token or a header; 1 when the router cannot be reached or the
connection to it is lost (it does not reconnect: waymark/client does, for programs).

Options:
  --token T      bearer token sent upstream on your behalf
  --header K:V   an extra request header from the allowlist (repeatable)
  --snapshot     print a first fetch at once
  --count N      exit 0 after N Updates (the snapshot counts)`,
  bump: `Usage: waymark bump [<path>...] [--prefix P]... [--tag T]... [--id ID]

Publishes one bump for all of the given paths, prefixes and tags on WAYMARK_BUMP_CHANNEL
(default waymark:bumps) of WAYMARK_REDIS_URL (or WAYMARK_REDIS_CLUSTER_NODES, or
WAYMARK_REDIS_SENTINELS with WAYMARK_REDIS_SENTINEL_NAME). A path without a query reaches every
query of that path; a prefix reaches every path under it (/projects/7 reaches /projects/7/tasks/3);
a tag reaches every watch whose latest response named it in Waymark-Tags (or Surrogate-Key,
Cache-Tag). For one path, the same as: redis-cli PUBLISH waymark:bumps /users/1
Waymark then refetches what the bump reaches for its watchers; a watcher gets an Update only if
the API's answer changed, so a bump with nothing changed pushes nothing.
Exit code 0 when published, 1 when Redis is unreachable, 2 on a bad setting or argument.
With WAYMARK_BUMP_STREAM set (stream mode), adds it to that stream instead:
redis-cli XADD <stream> MAXLEN ~ 100000 '*' bump /users/1 (WAYMARK_BUMP_STREAM_MAXLEN)

Options:
  --prefix P     a path prefix to bump (repeatable)
  --tag T        a tag to bump (repeatable)
  --id ID        bump id passed to the API as X-Waymark (default: Waymark makes one)`,
  doctor: `Usage: waymark doctor [--timeout-ms N] [--listen-ms N]

Checks, with the same WAYMARK_* settings 'waymark serve' reads, one line each:
  router          WAYMARK_ROUTER_URL accepts a WAMP WebSocket
  realm           WAYMARK_REALM can be joined
  authentication  the component's WAYMARK_ROUTER_AUTHID / WAYMARK_ROUTER_TICKET (or anonymous)
  redis           PING, and a probe bump on WAYMARK_BUMP_CHANNEL comes back (it matches no watch);
                  names the mode (single, cluster, sentinel) and the node it reached
  api             WAYMARK_API_URL answers HTTP (any status)
  waymark.watch   a Waymark instance is attached (an invalid path gets waymark.error.invalid_path)
  bumps           with --listen-ms: where the bumps published meanwhile go (Redis MONITOR), e.g.
                  on a prefixed channel (laravel_database_waymark:bumps) no Waymark hears
Without WAYMARK_API_URL it checks the setup 'waymark dev' prints (API http://127.0.0.1:8000).
Exit code 0 when every check passes, 1 when one fails, 2 on a bad setting.

Options:
  --timeout-ms N  upper bound of each check (default 3000)
  --listen-ms N   also watch Redis for N ms and report where bumps go (default 0: off);
                  MONITOR slows a busy Redis while it runs`,
  'demo-api': `Usage: waymark demo-api [--host H] [--port N] [--router-url URL]

Runs the demo API alone: GET /users/:id answers per bearer token (alice, bob; 401 without)
with Waymark-Tags: user:<id>, GET /users lists them, PUT /users/:id edits your own profile and
bumps its tag user:<id> on WAYMARK_REDIS_URL.

Options:
  --host H          address to listen on (default 127.0.0.1)
  --port N          port (default 8000)
  --router-url URL  also serve the browser demo at /, connecting browsers to this router
                    WebSocket URL (realm WAYMARK_REALM, default realm1); needs \`npm run build\``,
};

export interface CliIO {
  env: Env;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

class UsageError extends Error {}

/** Contract errors that say the command line itself was wrong (exit 2, like a bad option). */
const USAGE_ERRORS = ['waymark.error.invalid_path', 'waymark.error.invalid_argument', 'waymark.error.header_not_allowed'];

type Options = NonNullable<ParseArgsConfig['options']>;

/** The closest name within two edits, for "did you mean" (Levenshtein distance). */
function closest(word: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const c of candidates) {
    const d: number[][] = Array.from({ length: word.length + 1 }, (_, i) => [i, ...Array<number>(c.length).fill(0)]);
    for (let j = 1; j <= c.length; j++) d[0][j] = j;
    for (let i = 1; i <= word.length; i++) {
      for (let j = 1; j <= c.length; j++) {
        d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (word[i - 1] === c[j - 1] ? 0 : 1));
      }
    }
    if (d[word.length][c.length] < bestDistance) { bestDistance = d[word.length][c.length]; best = c; }
  }
  return best;
}

/**
 * parseArgs with one-line errors: its own messages run to several lines and talk about its
 * syntax, not the command. A string option followed by a negative number (`--timeout-ms -5`)
 * takes it as its value, so the command's own check can say what is wrong with it.
 */
function parse(command: string, argv: string[], options: Options, positionals: 'none' | 'some' = 'some'): { values: Record<string, unknown>; positionals: string[] } {
  const all: Options = { ...options, help: { type: 'boolean', short: 'h' } };
  const hint = `run 'waymark ${command} --help' for its options`;
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') { args.push(...argv.slice(i)); break; }
    if (!arg.startsWith('-') || arg === '-' || /^-\d/.test(arg)) { args.push(arg); continue; }
    const long = arg.startsWith('--');
    const name = long ? arg.slice(2).split('=')[0] : arg.slice(1);
    const key = long ? name : Object.keys(all).find((k) => all[k].short === name);
    if (key === undefined || !(key in all)) {
      const guess = long ? closest(name, Object.keys(all)) : undefined;
      throw new UsageError(`unknown option ${long ? `--${name}` : arg}${guess ? ` (did you mean --${guess}?)` : ''}; ${hint}`);
    }
    if (all[key].type === 'string' && !arg.includes('=')) {
      const value = argv[i + 1];
      if (value === undefined || (value.startsWith('-') && !/^-\d/.test(value))) {
        throw new UsageError(`--${key} needs a value${value === undefined ? '' : ` (got the option ${value})`}; ${hint}`);
      }
      args.push(`--${key}=${value}`);
      i += 1;
      continue;
    }
    if (all[key].type === 'boolean' && arg.includes('=')) throw new UsageError(`--${key} takes no value; ${hint}`);
    args.push(arg);
  }
  let parsed: { values: Record<string, unknown>; positionals: string[] };
  try {
    parsed = parseArgs({ args, options: all, allowPositionals: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message.split('\n')[0]}; ${hint}`);
  }
  if (positionals === 'none' && parsed.positionals.length > 0 && !parsed.values.help) {
    throw new UsageError(`takes no arguments, got ${JSON.stringify(parsed.positionals[0])}; ${hint}`);
  }
  return parsed;
}

/** A whole-number option within [min, max]; `fallback` when it is not given. */
function intOption(values: Record<string, unknown>, name: string, fallback: number, min: number, max: number): number {
  const raw = values[name] as string | undefined;
  if (raw === undefined) return fallback;
  if (!/^-?\d+$/.test(raw.trim()) || Number(raw) < min || Number(raw) > max) {
    throw new UsageError(`--${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return Number(raw);
}

/** Run one CLI command; resolves with the exit code. */
export async function main(argv: string[], io: CliIO = { env: process.env, stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [command, ...rest] = argv;
  const say = (line: string) => io.stderr.write(`${line}\n`);
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    io.stdout.write(`${HELP.main}\n`);
    return command ? 0 : 2;
  }
  if (command === '--version' || command === '-v') {
    io.stdout.write(`${VERSION}\n`);
    return 0;
  }
  if (!(command in HELP) || command === 'main') {
    const commands = Object.keys(HELP).filter((c) => c !== 'main');
    const guess = closest(command, commands);
    say(`waymark: unknown command ${JSON.stringify(command)}${guess ? ` (did you mean ${guess}?)` : ''}; the commands are ${commands.join(', ')} ('waymark --help' says more)`);
    return 2;
  }
  try {
    switch (command) {
      case 'serve': return await serve(rest, io);
      case 'dev': return await dev(rest, io);
      case 'watch': return await watch(rest, io);
      case 'bump': return await bump(rest, io);
      case 'demo-api': return await demoApi(rest, io);
      case 'doctor': return await doctor(rest, io);
    }
    return 2;
  } catch (err) {
    if (err instanceof ConfigError) {
      say(`waymark ${command}: ${err.message}`);
      return 2;
    }
    if (err instanceof UsageError) {
      say(`waymark ${command}: ${err.message}`);
      return 2;
    }
    if (err instanceof Unreachable) {
      say(`waymark ${command}: ${err.message}`);
      return 1;
    }
    say(`waymark ${command}: ${(err as Error).message}`);
    return 1;
  }
}

/** Resolve on SIGTERM/SIGINT after `stop()`; a second signal exits at once, a stuck stop after a hard deadline. */
function untilSignal(stop: () => Promise<void>, logger: Logger, hardMs: number): Promise<number> {
  return new Promise((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        logger.warn('second signal, exiting now', { signal });
        process.exit(1);
      }
      stopping = true;
      logger.info('signal received, draining', { signal });
      const timer = setTimeout(() => {
        logger.error('shutdown took too long, exiting');
        process.exit(1);
      }, hardMs);
      timer.unref();
      stop().then(() => {
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
        clearTimeout(timer);
        resolve(0);
      });
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}

/**
 * autobahn writes every closed connection straight to console.warn; in a long-running process
 * those lines belong in the structured log (at debug: reconnects are logged by the component).
 */
function routeAutobahnWarnings(logger: Logger): void {
  (autobahn as unknown as { log: { warn: (...args: unknown[]) => void } }).log.warn = (...args: unknown[]) => {
    logger.debug('autobahn', { message: args.map((a) => (typeof a === 'string' ? a : JSON.stringify(a))).join(' ') });
  };
}

async function serve(argv: string[], io: CliIO): Promise<number> {
  const { values } = parse('serve', argv, {}, 'none');
  if (values.help) { io.stdout.write(`${HELP.serve}\n`); return 0; }
  const config = loadConfig(io.env);
  const logger = createLogger({ level: config.logLevel, format: config.logFormat, stream: io.stderr });
  routeAutobahnWarnings(logger);
  const waymark = createWaymark(config, { logger: logger.child({ module: 'component' }) });
  const stopped = untilSignal(() => waymark.stop(), logger, config.shutdownTimeoutMs + 5_000);
  try {
    await waymark.start();
  } catch (err) {
    await waymark.stop();
    // ioredis only says "Connection is closed."; say which service and why
    const redisProblem = err instanceof ConfigError ? null : await checkRedis(config);
    if (redisProblem) throw new Unreachable(`Redis is unreachable at ${redactUrl(config.redisUrl)}: ${redisProblem} (check WAYMARK_REDIS_URL)`);
    throw err;
  }
  return stopped;
}

async function checkRedis(target: RedisTarget): Promise<string | null> {
  const redis = createRedis(target, 'dev check', { maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 2_000 });
  // connect() only says "Connection is closed."; the event carries ECONNREFUSED, ENOTFOUND, NOAUTH ...
  let cause: unknown;
  redis.on('error', (err: unknown) => { cause ??= err; });
  try {
    await redis.connect();
    await redis.ping();
    return null;
  } catch (err) {
    const e = (cause ?? err) as NodeJS.ErrnoException;
    return e.code ?? e.message;
  } finally {
    redis.disconnect();
  }
}

async function dev(argv: string[], io: CliIO): Promise<number> {
  const { values } = parse('dev', argv, { 'api-port': { type: 'string' } }, 'none');
  if (values.help) { io.stdout.write(`${HELP.dev}\n`); return 0; }
  const apiPort = intOption(values, 'api-port', 8000, 0, 65535);
  // The router is ours in dev, so the component authenticates with a ticket made up here,
  // exactly as it would against Crossbar's `backend` role.
  const ticket = randomBytes(18).toString('base64url');
  const env: Env = {
    WAYMARK_LOG_FORMAT: 'pretty',
    ...io.env,
    WAYMARK_API_URL: io.env.WAYMARK_API_URL || 'http://127.0.0.1:0',
    WAYMARK_ROUTER_AUTHID: 'waymark',
    WAYMARK_ROUTER_TICKET: ticket,
  };
  const preliminary = loadConfig(env);
  const problem = await checkRedis(preliminary);
  if (problem) {
    io.stderr.write(`waymark dev: Redis is not reachable at ${preliminary.redisUrl} (${problem}); start one with 'redis-server --daemonize yes' or set WAYMARK_REDIS_URL\n`);
    return 1;
  }
  const logger = createLogger({ level: preliminary.logLevel, format: preliminary.logFormat, stream: io.stderr });
  routeAutobahnWarnings(logger);
  let devRouter: typeof import('../dev/router.js');
  let demo: typeof import('../dev/demo-api.js');
  try {
    devRouter = await import('../dev/router.js');
    demo = await import('../dev/demo-api.js');
  } catch (err) {
    throw new Error(`the dev router needs the development dependencies: run 'npm install' in the waymark checkout (${(err as Error).message})`);
  }
  const routerUrl = new URL(preliminary.routerUrl);
  const cleanup: Array<() => Promise<unknown>> = [];
  const stopAll = async () => { for (const c of cleanup.reverse()) await c().catch(() => undefined); };
  try {
    let router;
    try {
      router = await devRouter.startDevRouter({
        host: routerUrl.hostname,
        port: Number(routerUrl.port || 80),
        path: routerUrl.pathname,
        realm: preliminary.realm,
        backendTickets: { waymark: ticket },
        logger: logger.child({ module: 'router' }),
      });
    } catch (err) {
      throw new ConfigError('WAYMARK_ROUTER_URL', `cannot listen on ${routerUrl.host} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); set WAYMARK_ROUTER_URL to a free port, e.g. ws://127.0.0.1:8090/ws`);
    }
    cleanup.push(() => router.close());
    let apiUrl = io.env.WAYMARK_API_URL;
    if (!apiUrl) {
      const bumperRedis = redisForEdits(preliminary, logger.child({ module: 'demo-api' }));
      const bumper = createBumper({ ...bumperOptions(preliminary), redis: bumperRedis });
      cleanup.push(async () => { await bumper.close(); bumperRedis.disconnect(); });
      let api;
      try {
        api = await demo.startDemoApi({
          port: apiPort,
          bump: async (target) => { await bumpOrSay(bumper, bumperRedis, preliminary, target); },
          page: { routerUrl: router.url, realm: preliminary.realm },
        });
      } catch (err) {
        throw new UsageError(`cannot listen on 127.0.0.1:${apiPort} for the demo API (${(err as NodeJS.ErrnoException).code}); pick another with --api-port`);
      }
      cleanup.push(() => api.close());
      apiUrl = api.url;
    }
    const config: WaymarkConfig = loadConfig({ ...env, WAYMARK_API_URL: apiUrl, WAYMARK_ROUTER_URL: router.url });
    const waymark = createWaymark(config, { logger: logger.child({ module: 'component' }) });
    cleanup.push(() => waymark.stop());
    await waymark.start();
    const lines = [
      '',
      'waymark dev is running:',
      `  router    ${router.url}  (realm ${config.realm}, in-process)`,
      `  API       ${apiUrl}${io.env.WAYMARK_API_URL ? '' : '  (demo: tokens alice and bob)'}`,
      ...(io.env.WAYMARK_API_URL ? [] : [`  demo      ${apiUrl}/  (browser demo: open it in two tabs, sign in as alice and as bob)`]),
      `  redis     ${config.redisUrl}  (channel ${config.bumpChannel})`,
      ...(config.adminPort ? [`  admin     http://${config.adminHost}:${waymark.adminAddress?.port ?? config.adminPort}/metrics`] : []),
      '',
      'Next, in another terminal:',
      ...(io.env.WAYMARK_API_URL
        ? [
          '  npx waymark watch /users/1 --snapshot     # add --token T: it is sent to your API as the user',
          '  # change /users/1 in your API, then tell Waymark, as your backend will:',
          '  npx waymark bump /users/1',
          "  (a bump makes Waymark refetch; watchers get an Update only if the API's answer changed)",
        ]
        : [
          '  1. npx waymark watch /users/1 --token alice --snapshot',
          "     prints /users/1 as alice sees it, then one line per change",
          `  2. curl -X PUT -H 'Authorization: Bearer alice' -d '{"bio":"hello"}' ${apiUrl}/users/1`,
          '     an edit: the demo API bumps /users/1 itself, and the watcher prints the new bio',
          `  3. curl -s -H 'Authorization: Bearer bob' ${apiUrl}/users/1 >/dev/null; npx waymark bump /users/1`,
          "     bob's view counts in \"views\" without a bump; the bump makes Waymark refetch, and the watcher prints views + 1",
          "  A bump with nothing changed pushes nothing: watchers get an Update only if the API's answer changed.",
        ]),
      '',
    ];
    io.stdout.write(lines.join('\n') + '\n');
  } catch (err) {
    await stopAll();
    throw err;
  }
  return untilSignal(stopAll, logger, preliminary.shutdownTimeoutMs + 5_000);
}

async function watch(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse('watch', argv, {
    token: { type: 'string' },
    header: { type: 'string', multiple: true },
    snapshot: { type: 'boolean' },
    count: { type: 'string' },
  });
  if (values.help) { io.stdout.write(`${HELP.watch}\n`); return 0; }
  if (positionals.length !== 1) throw new UsageError(`give exactly one path, e.g. waymark watch /users/1 --token alice${positionals.length ? ` (got ${positionals.length})` : ''}`);
  const headers: Record<string, string> = {};
  for (const h of (values.header as string[] | undefined) ?? []) {
    const i = h.indexOf(':');
    if (i <= 0) throw new UsageError(`--header must look like Name:value, got ${JSON.stringify(h)}`);
    headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
  }
  const count = intOption(values, 'count', Infinity, 1, 1_000_000_000);
  const { routerUrl: url, realm } = loadRouterTarget(io.env);
  const options: Record<string, unknown> = {};
  if (values.token !== undefined) options.token = values.token;
  if (Object.keys(headers).length) options.headers = headers;
  if (values.snapshot) options.snapshot = true;

  // stdout is for Updates and stderr for our own one-line messages, not autobahn's chatter
  routeAutobahnWarnings(createLogger({ level: 'warn', stream: io.stderr }));
  return new Promise<number>((resolve) => {
    let printed = 0;
    let done = false;
    let closed = false;
    const connection = new autobahn.Connection({
      url, realm, protocols: WAMP_SUBPROTOCOLS, max_retries: 0,
      // autobahn prints a stack trace for a transport it cannot create; one line says enough
      on_internal_error: (err: unknown) => finish(1, `cannot connect to ${url}: ${(err as Error)?.message ?? String(err)}`),
    } as autobahn.IConnectionOptions);
    const finish = (code: number, message?: string) => {
      if (done) return;
      done = true;
      if (message) io.stderr.write(`waymark watch: ${message}\n`);
      if (!closed && connection.isOpen) connection.close();
      resolve(code);
    };
    const print = (update: unknown) => {
      if (done) return;
      io.stdout.write(`${JSON.stringify(update)}\n`);
      printed += 1;
      if (printed >= count) finish(0);
    };
    connection.onopen = async (session) => {
      try {
        await session.subscribe(sessionTopic(session.id), (args) => print(args?.[0]));
        const result = await session.call<{ watch: string; snapshot?: unknown }>(PROC_WATCH, [positionals[0], options]);
        io.stderr.write(`waymark watch: watching ${positionals[0]} as ${result.watch} on ${sessionTopic(session.id)}\n`);
        if (result.snapshot) print(result.snapshot);
      } catch (err) {
        const e = err as { error?: string; args?: unknown[]; message?: string };
        // Waymark refusing the request itself (a bad path, token or header) is a usage error
        const usage = e.error !== undefined && USAGE_ERRORS.includes(e.error);
        finish(usage ? 2 : 1, e.error ? `${e.error}: ${String(e.args?.[0] ?? '')}` : e.message ?? String(err));
      }
    };
    connection.onclose = (reason, details) => {
      closed = true; // closing it again from here would throw inside autobahn
      const refusal = (details as { reason?: string; message?: string })?.reason;
      finish(1, reason === 'lost'
        ? `lost the connection to the router at ${url}`
        : refusal
          ? `the router at ${url} refused the session: ${refusal}${(details as { message?: string }).message ? ` (${(details as { message?: string }).message})` : ''}${/no_such_realm/.test(refusal) ? `; check WAYMARK_REALM (${realm})` : ''}`
          : `cannot reach the router at ${url} (${reason})`);
      return true;
    };
    process.once('SIGINT', () => finish(0));
    process.once('SIGTERM', () => finish(0));
    connection.open();
  });
}

/**
 * A Redis client for one short command: no reconnects and no offline queue, so an outage is one
 * clear error at once instead of ioredis' retries and "Unhandled error event" traces.
 */
async function connectRedisOnce(target: RedisTarget, timeoutMs = 3_000): Promise<RedisClient> {
  const redis = createRedis(target, 'bump', { maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: timeoutMs, enableOfflineQueue: false });
  let cause: unknown;
  redis.on('error', (err: unknown) => { cause ??= err; });
  try {
    await redis.connect();
    return redis;
  } catch (err) {
    redis.disconnect();
    // connect() only says "Connection is closed."; the event carries ECONNREFUSED, ENOTFOUND, NOAUTH ...
    const e = (cause ?? err) as NodeJS.ErrnoException;
    const setting = target.redisClusterNodes ? 'WAYMARK_REDIS_CLUSTER_NODES' : target.redisSentinels ? 'WAYMARK_REDIS_SENTINELS' : 'WAYMARK_REDIS_URL';
    throw new Unreachable(`Redis is unreachable at ${describeRedis(target)}: ${e.code ?? e.message} (check ${setting})`);
  }
}

/**
 * The demo API's Redis for the bumps after each edit: it keeps reconnecting, an edit made while
 * Redis is down fails its bump at once (no queue), and an outage is one warning when it starts
 * (ioredis would print an "Unhandled error event" trace for every attempt).
 */
function redisForEdits(target: RedisTarget, logger: Logger): RedisClient {
  const url = describeRedis(target);
  const redis = createRedis(target, 'demo-api bumps', { maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: (n) => Math.min(100 * 2 ** n, 5_000) });
  let down = false;
  redis.on('error', (err: NodeJS.ErrnoException) => {
    if (down) return;
    down = true;
    logger.warn('Redis is unreachable: edits are saved but not bumped until it is back', { url, error: err.code ?? err.message });
  });
  redis.on('ready', () => {
    if (down) logger.info('Redis is back: edits are bumped again', { url });
    down = false;
  });
  redis.connect().catch(() => undefined);
  return redis;
}

/** One bump after an edit; while Redis is down, an error that says so (ioredis' says "Stream isn't writeable"). */
async function bumpOrSay(bumper: ReturnType<typeof createBumper>, redis: RedisClient, target: RedisTarget, what: Parameters<ReturnType<typeof createBumper>['bump']>[0]): Promise<void> {
  if (redis.status !== 'ready') throw new Error(`Redis is unreachable at ${describeRedis(target)}`);
  await bumper.bump(what);
}

/** A service the command needs is down: exit 1 (an outage, not a usage error). */
class Unreachable extends Error {}

async function bump(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse('bump', argv, {
    id: { type: 'string' }, prefix: { type: 'string', multiple: true }, tag: { type: 'string', multiple: true },
  });
  if (values.help) { io.stdout.write(`${HELP.bump}\n`); return 0; }
  const prefixes = (values.prefix as string[] | undefined) ?? [];
  const tags = (values.tag as string[] | undefined) ?? [];
  if (positionals.length + prefixes.length + tags.length === 0) throw new UsageError('give one or more paths, --prefix or --tag, e.g. waymark bump /users/1');
  const slashless = [...positionals, ...prefixes].find((p) => !p.startsWith('/'));
  if (slashless !== undefined) throw new UsageError(`a path starts with /, got ${JSON.stringify(slashless)}`);
  // Checked here with Waymark's own grammar, so a typo is an error now rather than a bump Waymark drops.
  const bad = [...positionals, ...prefixes].find((p) => { try { validatePath(p, DEFAULTS.maxPathBytes); return false; } catch { return true; } })
    ?? tags.find((t) => !isValidTag(t));
  if (bad !== undefined) throw new UsageError(`not a valid ${tags.includes(bad) ? 'tag' : 'path'}: ${JSON.stringify(bad)}`);
  // Waymark drops every entry past MAX_PATHS_PER_BUMP with only a warning in its own log.
  const entries = positionals.length + prefixes.length + tags.length;
  if (entries > MAX_PATHS_PER_BUMP) {
    throw new UsageError(`at most ${MAX_PATHS_PER_BUMP} paths, prefixes and tags in one bump (Waymark drops the rest), got ${entries}; run it once per ${MAX_PATHS_PER_BUMP}`);
  }
  const target = loadBumpTarget(io.env);
  const redis = await connectRedisOnce(target);
  const bumper = createBumper({ ...bumperOptions(target), redis });
  try {
    const receivers = await bumper.bump({ paths: positionals, prefixes, tags }, { id: values.id as string | undefined });
    const what = [
      [positionals.length, 'path', 'paths'], [prefixes.length, 'prefix', 'prefixes'], [tags.length, 'tag', 'tags'],
    ].filter(([n]) => n).map(([n, one, many]) => `${n} ${n === 1 ? one : many}`).join(', ');
    if (target.bumpStream) {
      io.stderr.write(`waymark bump: added ${what} to stream ${target.bumpStream}; every Waymark instance reads it, and watchers get an Update only if the API's answer changed\n`);
    } else if (target.redisClusterNodes) {
      // A node counts only its own subscribers; the cluster bus carries the message to the others.
      io.stderr.write(`waymark bump: published ${what} on ${target.bumpChannel} (Redis Cluster: every node relays it; ${receivers} subscriber${receivers === 1 ? '' : 's'} on the node that took it); watchers get an Update only if the API's answer changed\n`);
    } else if (receivers === 0) {
      io.stderr.write(`waymark bump: published ${what} on ${target.bumpChannel}, but no Waymark instance is subscribed to it: is 'waymark serve' running with this WAYMARK_REDIS_URL and WAYMARK_BUMP_CHANNEL?\n`);
    } else {
      io.stderr.write(`waymark bump: published ${what} on ${target.bumpChannel}; ${receivers} Waymark subscriber${receivers === 1 ? '' : 's'} received it; watchers get an Update only if the API's answer changed\n`);
    }
    return 0;
  } finally {
    await bumper.close();
    redis.disconnect();
  }
}

async function demoApi(argv: string[], io: CliIO): Promise<number> {
  const { values } = parse('demo-api', argv, { host: { type: 'string' }, port: { type: 'string' }, 'router-url': { type: 'string' } }, 'none');
  if (values.help) { io.stdout.write(`${HELP['demo-api']}\n`); return 0; }
  const routerUrl = values['router-url'] as string | undefined;
  if (routerUrl !== undefined && !/^wss?:\/\/[^\s]+$/.test(routerUrl)) throw new UsageError(`--router-url must be a ws:// or wss:// URL, got ${JSON.stringify(routerUrl)}`);
  const port = intOption(values, 'port', 8000, 0, 65535);
  const { startDemoApi } = await import('../dev/demo-api.js');
  const target = loadBumpTarget(io.env);
  const logger = createLogger({ level: 'info', format: 'json', stream: io.stderr });
  const bumperRedis = redisForEdits(target, logger);
  const bumper = createBumper({ ...bumperOptions(target), redis: bumperRedis });
  const api = await startDemoApi({
    host: (values.host as string | undefined) ?? '127.0.0.1',
    port,
    bump: async (what) => { await bumpOrSay(bumper, bumperRedis, target, what); },
    ...(routerUrl ? { page: { routerUrl, realm: io.env.WAYMARK_REALM || 'realm1' } } : {}),
  });
  logger.info('demo API listening', { url: api.url, ...(routerUrl ? { demoPage: `${api.url}/`, routerUrl } : {}) });
  return untilSignal(async () => { await api.close(); await bumper.close(); bumperRedis.disconnect(); }, logger, 5_000);
}

async function doctor(argv: string[], io: CliIO): Promise<number> {
  const { values } = parse('doctor', argv, { 'timeout-ms': { type: 'string' }, 'listen-ms': { type: 'string' } }, 'none');
  if (values.help) { io.stdout.write(`${HELP.doctor}\n`); return 0; }
  const timeoutMs = intOption(values, 'timeout-ms', 3_000, 1, 600_000);
  const listenMs = intOption(values, 'listen-ms', 0, 0, 600_000);
  // Beside `waymark dev` nothing is set: check the setup it prints (its demo API on 8000).
  const devDefaults = !io.env.WAYMARK_API_URL?.trim();
  const config = loadConfig(devDefaults ? { ...io.env, WAYMARK_API_URL: DEV_API_URL } : io.env);
  // the check lines are the whole output: autobahn's console chatter goes to a quiet logger
  routeAutobahnWarnings(createLogger({ level: 'warn', stream: io.stderr }));
  const { runDoctor, formatResult } = await import('./ops/doctor.js');
  io.stdout.write(`waymark doctor ${VERSION}: ${devDefaults ? "WAYMARK_API_URL is not set, so checking the dev setup 'waymark dev' prints: " : ''}router ${redactUrl(config.routerUrl)} realm ${config.realm}, redis ${describeRedis(config)}, API ${config.apiUrl}\n`);
  if (listenMs) io.stdout.write(`(the bumps check watches Redis for ${listenMs} ms: change something in your app meanwhile)\n`);
  const results = await runDoctor(config, { timeoutMs, listenMs, onResult: (r) => io.stdout.write(`${formatResult(r)}\n`) });
  const failed = results.filter((r) => r.status === 'fail').map((r) => r.name);
  const skipped = results.filter((r) => r.status === 'skip').length;
  const skippedNames = results.filter((r) => r.status === 'skip').map((r) => r.name);
  io.stdout.write(failed.length === 0
    ? (skipped ? `${results.length - skipped} of ${results.length} checks passed, ${skippedNames.join(', ')} not checked\n` : `all ${results.length} checks passed\n`)
    : `${failed.length} of ${results.length} checks failed (${failed.join(', ')})${skipped ? `, ${skipped} not checked` : ''}\n`);
  return failed.length === 0 ? 0 : 1;
}
