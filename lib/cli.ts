import { randomBytes } from 'node:crypto';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import autobahn from 'autobahn';
import { bumperOptions, createBumper } from './bumps/bumper.js';
import { createWaymark } from './wamp/component.js';
import { loadBumpTarget, loadConfig, type RedisTarget, type WaymarkConfig } from './protocol/config.js';
import { createRedis } from './support/redis.js';
import { ConfigError } from './protocol/errors.js';
import { createLogger, redactUrl, type Logger } from './support/logger.js';
import { sessionTopic, PROC_WATCH, WAMP_SUBPROTOCOLS } from './protocol/uris.js';
import { VERSION } from './protocol/version.js';

type Env = Record<string, string | undefined>;

const HELP: Record<string, string> = {
  main: `waymark ${VERSION}: real-time push for authenticated HTTP APIs

Usage: waymark <command> [options]

Commands:
  serve                 run the Waymark component (configuration from WAYMARK_* variables)
  dev                   run an in-process router, the component and a demo API on this machine
  watch <path>          watch a path as a browser would and print each Update as one JSON line
  bump <path>...        publish a bump for one or more paths to Redis
  doctor                check router, realm, authentication, Redis and the API, one line each
  demo-api              run the demo API alone (used by docker compose)

Run 'waymark <command> --help' for a command's options.`,
  serve: `Usage: waymark serve

Runs the Waymark component: joins the WAMP router, registers waymark.watch / waymark.unwatch /
waymark.authorize, consumes bumps from Redis and pushes Updates. Settings come from the
environment; WAYMARK_API_URL is required. See the README's configuration table.
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
<path> and prints every Update on stdout as one JSON line, until interrupted.

Options:
  --token T      bearer token sent upstream on your behalf
  --header K:V   an extra request header from the allowlist (repeatable)
  --snapshot     print a first fetch at once
  --count N      exit 0 after N Updates (the snapshot counts)`,
  bump: `Usage: waymark bump <path>... [--id ID]

Publishes one bump for the given paths on WAYMARK_BUMP_CHANNEL (default waymark:bumps) of
WAYMARK_REDIS_URL (or WAYMARK_REDIS_CLUSTER_NODES, or WAYMARK_REDIS_SENTINELS with
WAYMARK_REDIS_SENTINEL_NAME). The same as: redis-cli PUBLISH waymark:bumps /users/1
With WAYMARK_BUMP_STREAM set (stream mode), adds it to that stream instead:
redis-cli XADD <stream> MAXLEN ~ 100000 '*' bump /users/1 (WAYMARK_BUMP_STREAM_MAXLEN)

Options:
  --id ID        bump id passed to the API as X-Waymark (default: Waymark makes one)`,
  doctor: `Usage: waymark doctor [--timeout-ms N]

Checks, with the same WAYMARK_* settings 'waymark serve' reads, one line each:
  router          WAYMARK_ROUTER_URL accepts a WAMP WebSocket
  realm           WAYMARK_REALM can be joined
  authentication  the component's WAYMARK_ROUTER_AUTHID / WAYMARK_ROUTER_TICKET (or anonymous)
  redis           PING, and a probe bump on WAYMARK_BUMP_CHANNEL comes back (it matches no watch);
                  names the mode (single, cluster, sentinel) and the node it reached
  api             WAYMARK_API_URL answers HTTP (any status)
  waymark.watch   a Waymark instance is attached (an invalid path gets waymark.error.invalid_path)
Exit code 0 when every check passes, 1 when one fails, 2 on a bad setting.

Options:
  --timeout-ms N  upper bound of each check (default 3000)`,
  'demo-api': `Usage: waymark demo-api [--host H] [--port N] [--router-url URL]

Runs the demo API alone: GET /users/:id answers per bearer token (alice, bob; 401 without),
PUT /users/:id edits your own profile and bumps it on WAYMARK_REDIS_URL.

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

function parse(command: string, argv: string[], options: ParseArgsConfig['options']): { values: Record<string, unknown>; positionals: string[] } {
  try {
    return parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${HELP[command]}`);
  }
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
    say(`waymark: unknown command ${JSON.stringify(command)}\n\n${HELP.main}`);
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
  const { values } = parse('serve', argv, {});
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
    throw err;
  }
  return stopped;
}

async function checkRedis(target: RedisTarget): Promise<string | null> {
  const redis = createRedis(target, 'dev check', { maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 2_000 });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    await redis.ping();
    return null;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  } finally {
    redis.disconnect();
  }
}

async function dev(argv: string[], io: CliIO): Promise<number> {
  const { values } = parse('dev', argv, { 'api-port': { type: 'string' } });
  if (values.help) { io.stdout.write(`${HELP.dev}\n`); return 0; }
  const apiPort = Number((values['api-port'] as string | undefined) ?? 8000);
  if (!Number.isInteger(apiPort) || apiPort < 0 || apiPort > 65535) throw new UsageError(`--api-port must be a port number\n\n${HELP.dev}`);
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
      throw new ConfigError('WAYMARK_ROUTER_URL', `cannot listen on ${routerUrl.host} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    cleanup.push(() => router.close());
    let apiUrl = io.env.WAYMARK_API_URL;
    if (!apiUrl) {
      const bumper = createBumper(bumperOptions(preliminary));
      cleanup.push(() => bumper.close());
      let api;
      try {
        api = await demo.startDemoApi({
          port: apiPort,
          bump: async (path) => { await bumper.bump(path); },
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
      '  npx waymark watch /users/1 --token alice --snapshot',
      '  npx waymark bump /users/1',
      ...(io.env.WAYMARK_API_URL ? [] : [`  curl -X PUT -H 'Authorization: Bearer alice' -d '{"bio":"hello"}' ${apiUrl}/users/1`]),
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
  if (positionals.length !== 1) throw new UsageError(`give exactly one path\n\n${HELP.watch}`);
  const headers: Record<string, string> = {};
  for (const h of (values.header as string[] | undefined) ?? []) {
    const i = h.indexOf(':');
    if (i <= 0) throw new UsageError(`--header must look like Name:value, got ${JSON.stringify(h)}`);
    headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
  }
  const count = values.count === undefined ? Infinity : Number(values.count as string);
  if (!(count > 0)) throw new UsageError('--count must be a positive number');
  const url = io.env.WAYMARK_ROUTER_URL || 'ws://127.0.0.1:8080/ws';
  const realm = io.env.WAYMARK_REALM || 'realm1';
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
    const connection = new autobahn.Connection({ url, realm, protocols: WAMP_SUBPROTOCOLS, max_retries: 0 });
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
        finish(1, e.error ? `${e.error}: ${String(e.args?.[0] ?? '')}` : e.message ?? String(err));
      }
    };
    connection.onclose = (reason, details) => {
      closed = true; // closing it again from here would throw inside autobahn
      finish(1, reason === 'lost'
        ? `lost the connection to the router at ${url}`
        : `cannot reach the router at ${url} (${(details as { reason?: string })?.reason ?? reason})`);
      return true;
    };
    process.once('SIGINT', () => finish(0));
    process.once('SIGTERM', () => finish(0));
    connection.open();
  });
}

async function bump(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse('bump', argv, { id: { type: 'string' } });
  if (values.help) { io.stdout.write(`${HELP.bump}\n`); return 0; }
  if (positionals.length === 0) throw new UsageError(`give one or more paths\n\n${HELP.bump}`);
  const target = loadBumpTarget(io.env);
  const bumper = createBumper(bumperOptions(target));
  try {
    const receivers = await bumper.bump(positionals, { id: values.id as string | undefined });
    if (target.bumpStream) io.stderr.write(`waymark bump: added ${positionals.length} path(s) to stream ${target.bumpStream}\n`);
    // A cluster node counts only its own subscribers; the cluster bus carries the message to the rest.
    else if (target.redisClusterNodes) io.stderr.write(`waymark bump: published ${positionals.length} path(s) on ${target.bumpChannel} (Redis Cluster: every node relays it; ${receivers} subscriber(s) on the node that took it)\n`);
    else io.stderr.write(`waymark bump: published ${positionals.length} path(s) on ${target.bumpChannel}; ${receivers} Waymark subscriber(s) received it\n`);
    return 0;
  } finally {
    await bumper.close();
  }
}

async function demoApi(argv: string[], io: CliIO): Promise<number> {
  const { values } = parse('demo-api', argv, { host: { type: 'string' }, port: { type: 'string' }, 'router-url': { type: 'string' } });
  if (values.help) { io.stdout.write(`${HELP['demo-api']}\n`); return 0; }
  const routerUrl = values['router-url'] as string | undefined;
  if (routerUrl !== undefined && !/^wss?:\/\/[^\s]+$/.test(routerUrl)) throw new UsageError(`--router-url must be a ws:// or wss:// URL\n\n${HELP['demo-api']}`);
  const { startDemoApi } = await import('../dev/demo-api.js');
  const bumper = createBumper(bumperOptions(loadBumpTarget(io.env)));
  const api = await startDemoApi({
    host: (values.host as string | undefined) ?? '127.0.0.1',
    port: Number((values.port as string | undefined) ?? 8000),
    bump: async (path) => { await bumper.bump(path); },
    ...(routerUrl ? { page: { routerUrl, realm: io.env.WAYMARK_REALM || 'realm1' } } : {}),
  });
  const logger = createLogger({ level: 'info', format: 'json', stream: io.stderr });
  logger.info('demo API listening', { url: api.url, ...(routerUrl ? { demoPage: `${api.url}/`, routerUrl } : {}) });
  return untilSignal(async () => { await api.close(); await bumper.close(); }, logger, 5_000);
}

async function doctor(argv: string[], io: CliIO): Promise<number> {
  const { values } = parse('doctor', argv, { 'timeout-ms': { type: 'string' } });
  if (values.help) { io.stdout.write(`${HELP.doctor}\n`); return 0; }
  const timeoutMs = Number((values['timeout-ms'] as string | undefined) ?? 3_000);
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1) throw new UsageError(`--timeout-ms must be a positive whole number\n\n${HELP.doctor}`);
  const config = loadConfig(io.env);
  // the check lines are the whole output: autobahn's console chatter goes to a quiet logger
  routeAutobahnWarnings(createLogger({ level: 'warn', stream: io.stderr }));
  const { runDoctor, formatResult } = await import('./ops/doctor.js');
  io.stdout.write(`waymark doctor ${VERSION}: router ${redactUrl(config.routerUrl)} realm ${config.realm}, redis ${config.redisClusterNodes ? `cluster ${config.redisClusterNodes.join(',')}` : config.redisSentinels ? `sentinel ${config.redisSentinelName}@${config.redisSentinels.join(',')}` : redactUrl(config.redisUrl)}, API ${config.apiUrl}\n`);
  const results = await runDoctor(config, { timeoutMs, onResult: (r) => io.stdout.write(`${formatResult(r)}\n`) });
  const failed = results.filter((r) => r.status === 'fail').map((r) => r.name);
  const skipped = results.filter((r) => r.status === 'skip').length;
  io.stdout.write(failed.length === 0
    ? `all ${results.length} checks passed\n`
    : `${failed.length} of ${results.length} checks failed (${failed.join(', ')})${skipped ? `, ${skipped} not checked` : ''}\n`);
  return failed.length === 0 ? 0 : 1;
}
