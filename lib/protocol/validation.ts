import { MAX_REVALIDATE_MS, RESERVED_REQUEST_HEADERS, type WaymarkConfig } from './config.js';
import { WaymarkError } from './errors.js';
import type { ForwardHeaders, SessionId } from './types.js';

// Control characters, whitespace, DEL and anything non-ASCII: WHATWG URL parsing strips or
// rewrites several of these (tab, CR, LF) and that is how `/\t/evil` turns into another host.
const NOT_VISIBLE_ASCII = /[^\x21-\x7e]/;
const PERCENT = /%(?![0-9a-fA-F]{2})/;
/**
 * Encodings of `.`, `/` or `\` that only non-standard decoders read: overlong UTF-8 (`%c0%ae`,
 * `%e0%80%ae`: old Tomcat, IIS) and IIS's `%u002e`. Never valid in a URI, at any decoding depth.
 */
const NON_STANDARD_ESCAPE = /%(?:c0|c1)%[89ab][0-9a-f]|%e0%[89][0-9a-f]%[89ab][0-9a-f]|%f0%8[0-9a-f]%|%u[0-9a-f]{4}/i;
/** RFC 3986 2.3 unreserved characters: their percent-encoded form is the same URI (6.2.2.2). */
const UNRESERVED = /[A-Za-z0-9\-._~]/;
/** Visible ASCII that RFC 3986 does not allow in a path or query (`\` is refused outright). */
const NOT_URI_CHAR = /["<>[\]^`{|}]/g;

/**
 * One decoding round as the server behind the API might do it: strict UTF-8 when the escapes
 * form valid UTF-8, else only the ASCII escapes (a lenient decoder still turns `%2f` into `/`
 * next to an invalid byte such as `%ff`).
 */
function decodeOnce(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s.replace(/%([0-7][0-9a-fA-F])/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
  }
}

function badSegment(seg: string): boolean {
  if (seg.includes('/') || seg.includes('\\') || /[\x00-\x1f\x7f]/.test(seg) || NON_STANDARD_ESCAPE.test(seg)) return true;
  // Unicode compatibility forms (fullwidth `．` and `／`, `‥`) become `.`, `..` and `/` in a
  // server or framework that applies NFKC (Python's unicodedata, ASP.NET, some WAFs).
  // eslint-disable-next-line no-control-regex
  if (/[^\x00-\x7f]/.test(seg)) {
    const nfkc = seg.normalize('NFKC');
    if (nfkc !== seg && badSegment(nfkc.replace(/[^\x00-\x7f]/g, 'x'))) return true;
  }
  // The segment name as Tomcat, Jetty, Spring and IIS route it: path parameters (`;...`, RFC
  // 3986 3.3) removed, and what a decoded `?` or `#` would cut off; trailing dots and spaces
  // removed (Windows file names: `.. .` and `...` name the same as `..` or the folder itself).
  const name = seg.split(';')[0];
  const routed = name.split(/[?#]/)[0];
  const trimmed = routed.replace(/[. ]+$/, '');
  return (name === '' && seg !== '') || (routed !== '' && trimmed === '');
}

/**
 * RFC 3986 6.2.2 normalisation of a path that passed the grammar: hex digits of percent-escapes
 * in upper case (6.2.2.1), escapes of unreserved characters decoded (6.2.2.2: `%7E` is `~`,
 * `%41` is `A`), and the visible characters RFC 3986 does not allow (`"<>[]^\`{|}`) encoded as
 * WHATWG URL would send some of them anyway. Forms that are the same URI become one string.
 */
function normalise(path: string): string {
  return path
    .replace(/%([0-9a-fA-F]{2})/g, (_, h: string) => {
      const c = String.fromCharCode(parseInt(h, 16));
      return UNRESERVED.test(c) ? c : `%${h.toUpperCase()}`;
    })
    .replace(NOT_URI_CHAR, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/**
 * The path grammar (contract section 2) and the watch key: the ONE function that turns a path a
 * client watches, unwatches or a backend bumps into the string watches are keyed and fetched by.
 *
 * Refused (`invalid_path`): anything but a single leading `/` followed by visible ASCII; `\`;
 * `//`; a fragment; malformed percent-escapes; escapes that are not valid UTF-8 (`%e9` alone);
 * and any path segment that could reach a server as a dot-segment or a segment separator. A
 * segment is decoded up to five times (double encoding such as `%252e`, for stacks that decode
 * again behind a proxy) and refused when any of the forms:
 * - contains `/`, `\` or a control character (`%2f`, `%5c`, `%00`, `%0a`);
 * - contains an overlong UTF-8 escape (`%c0%ae`, read as `.` by old Tomcat and IIS) or an IIS
 *   `%u` escape (`%u002e`);
 * - has, once path parameters (everything from the first `;`) and trailing spaces are removed,
 *   a name that is `.`, `..` or empty. Tomcat, Jetty and Spring strip `;...` from each segment
 *   before resolving dot-segments, so `/..;/admin` or `/.%2e;jsessionid=1/admin` is served as
 *   `/admin` outside the API's base path; `%3b` is included because a decoding layer in front
 *   of them makes it a `;` (likewise a decoded `%3f` or `%23` ends the path there); an empty
 *   name (`/a/;x/b`) is `//` to them. Windows-backed servers (IIS) drop trailing spaces, so
 *   `..%20` is `..` there.
 * `;` is otherwise allowed: matrix parameters on a named segment (`/cars;color=red/2`) are RFC
 * 3986 3.3 paths that some APIs (JAX-RS) use. The query is not inspected: servers do not
 * resolve dot-segments in it.
 *
 * Returns the path normalised by RFC 3986 6.2.2.1 and 6.2.2.2 (see `normalise`): `/caf%c3%a9`
 * and `/caf%C3%A9` are one watch, `/%7Euser` is `/~user`; the API is fetched with that form.
 * @throws WaymarkError `invalid_argument` (not a string), `invalid_path` (any rule above)
 */
export function validatePath(path: unknown, maxBytes: number): string {
  if (typeof path !== 'string' || path.length === 0) {
    throw new WaymarkError('invalid_argument', 'path must be a non-empty string such as "/users/1"');
  }
  if (Buffer.byteLength(path) > maxBytes) throw new WaymarkError('invalid_path', `path is longer than ${maxBytes} bytes`);
  if (path[0] !== '/') throw new WaymarkError('invalid_path', 'path must start with "/" (origin-relative, not a URL)');
  if (NOT_VISIBLE_ASCII.test(path)) {
    throw new WaymarkError('invalid_path', 'path must not contain whitespace, control or non-ASCII characters (percent-encode them)');
  }
  if (path.includes('\\')) throw new WaymarkError('invalid_path', 'path must not contain a backslash');
  if (path.includes('#')) throw new WaymarkError('invalid_path', 'path must not contain a fragment (#)');
  if (PERCENT.test(path)) throw new WaymarkError('invalid_path', 'path has a malformed percent escape');
  const q = path.indexOf('?');
  const pathname = q === -1 ? path : path.slice(0, q);
  if (pathname.includes('//')) throw new WaymarkError('invalid_path', 'path must not contain "//"');
  for (const seg of pathname.split('/').slice(1)) {
    try {
      decodeURIComponent(seg);
    } catch {
      throw new WaymarkError('invalid_path', 'path has a percent escape that is not valid UTF-8');
    }
    // Decode until stable (a few rounds at most): whatever layer behind the API decodes once
    // more must still not see a dot segment, a slash or a control character.
    let current = seg;
    for (let round = 0; ; round++) {
      if (badSegment(current)) {
        throw new WaymarkError('invalid_path',
          'path must not contain "." or ".." segments (also percent-encoded, or followed by ";" path parameters), nor encoded "/", "\\" or control characters');
      }
      if (round === 4) break;
      const next = decodeOnce(current);
      if (next === current) break;
      current = next;
    }
  }
  if (Buffer.byteLength(normalise(path)) > maxBytes) throw new WaymarkError('invalid_path', `path is longer than ${maxBytes} bytes once normalised`);
  return normalise(path);
}

/** A tag (contract 11.3): 1-256 visible ASCII characters without comma; case matters. */
const TAG = /^[\x21-\x2b\x2d-\x7e]{1,256}$/;
export const MAX_TAG_LENGTH = 256;

export function isValidTag(tag: unknown): tag is string {
  return typeof tag === 'string' && TAG.test(tag);
}

/**
 * The tags of one response header value, in order: separated by commas and/or whitespace,
 * each kept when valid and while fewer than `max` are kept; the rest (malformed, duplicate-free
 * overflow) are counted in `dropped`. Work is linear in the value's length, which HTTP header
 * limits bound (undici: 16 KiB in all).
 */
export function parseTags(values: Iterable<string>, max: number): { tags: string[]; dropped: number } {
  const seen = new Set<string>();
  let dropped = 0;
  for (const value of values) {
    for (const t of value.split(/[,\s]+/)) {
      if (t === '' || seen.has(t)) continue;
      if (!TAG.test(t) || seen.size >= max) dropped += 1;
      else seen.add(t);
    }
  }
  return { tags: [...seen], dropped };
}

/**
 * A W3C Trace Context `traceparent` (https://www.w3.org/TR/trace-context/#traceparent-header):
 * `00-<32 lower hex trace-id, not all 0>-<16 lower hex parent-id, not all 0>-<2 lower hex flags>`.
 * Version `ff` is invalid; a later version may carry more fields after a `-`, of which only the
 * first four are read (section 4.3 "Versioning"). Returns the value to send, or undefined.
 */
export function parseTraceparent(value: unknown): string | undefined {
  if (typeof value !== 'string' || value.length > 512) return undefined;
  const m = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/.exec(value.trim());
  if (!m) return undefined;
  const [, version, traceId, parentId, flags, rest] = m;
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined;
  if (/^0+$/.test(traceId) || /^0+$/.test(parentId)) return undefined;
  // A newer version is sent on as version 00 of what we understood.
  return `00-${traceId}-${parentId}-${flags}`;
}

/**
 * Join a validated path onto the API URL and prove the result stayed on the API's origin and
 * under its base path: the last line of defence against SSRF, whatever the grammar missed.
 */
export function resolveApiUrl(apiUrl: string, path: string): string {
  const base = new URL(apiUrl);
  const target = new URL(apiUrl + path);
  const basePath = base.pathname.replace(/\/+$/, '');
  if (target.origin !== base.origin || !(target.pathname === basePath || target.pathname.startsWith(`${basePath}/`))) {
    throw new WaymarkError('invalid_path', 'path leaves the API origin or base path');
  }
  return target.href;
}

export interface WatchOptions {
  headers: ForwardHeaders;
  snapshot: boolean;
  /** re-ask the API every this many ms (0: never), contract 11.4 */
  revalidateMs: number;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * RFC 9110 5.5 field-value, narrowed to what every HTTP stack sends unchanged: visible ASCII,
 * with spaces or tabs inside, never at either end (5.5: field-content). obs-text (bytes
 * 0x80-0xFF) is refused too: Node refuses characters above 0xFF before sending, and how 0x80-0xFF
 * reach the API depends on the client's encoding (Latin-1 or UTF-8), so no value outside this
 * set can be sent as written.
 */
const FIELD_VALUE = /^(?:[\x21-\x7e](?:[\x20\x09\x21-\x7e]*[\x21-\x7e])?)?$/;
/**
 * A bearer token: one or more visible ASCII characters (RFC 9110 5.5 VCHAR), so that
 * `Bearer <token>` is a field value and stays one credential. RFC 6750 2.1's b64token is stricter,
 * but widely used tokens are outside it (Laravel Sanctum's `1|abc...`) and servers take them.
 */
const BEARER_TOKEN = /^[\x21-\x7e]+$/;

function checkValue(name: string, value: unknown): string {
  if (typeof value !== 'string') throw new WaymarkError('invalid_argument', `header ${name} must be a string`);
  if (!FIELD_VALUE.test(value)) {
    throw new WaymarkError('invalid_argument',
      `header ${name} is not a valid HTTP field value (RFC 9110 5.5: visible ASCII, inner spaces or tabs; no CR, LF, NUL, non-ASCII or leading/trailing space)`);
  }
  return value;
}

/**
 * Credentials of a watch or refresh: token plus allowlisted headers, as the request headers they
 * become. A value that could not be sent as written is refused here, before any fetch: a token
 * with other than visible ASCII (see BEARER_TOKEN), a header value that is not a field-value (RFC 9110 5.5,
 * see FIELD_VALUE).
 * @throws WaymarkError `invalid_argument`, `header_not_allowed`
 */
export function parseCredentials(
  options: Record<string, unknown>,
  config: Pick<WaymarkConfig, 'forwardHeaders' | 'maxHeaderBytes'>,
): ForwardHeaders {
  const headers: Record<string, string> = {};
  const { token, headers: rawHeaders } = options;
  if (rawHeaders !== undefined && rawHeaders !== null) {
    if (!isPlainObject(rawHeaders)) throw new WaymarkError('invalid_argument', 'headers must be an object of header name to string value');
    for (const [rawName, value] of Object.entries(rawHeaders)) {
      const name = rawName.toLowerCase();
      if (RESERVED_REQUEST_HEADERS.includes(name)) {
        throw new WaymarkError('header_not_allowed', `header ${name} is set by Waymark itself`);
      }
      if (!config.forwardHeaders.includes(name)) {
        throw new WaymarkError('header_not_allowed', `header ${name} is not on the forward allowlist (${config.forwardHeaders.join(', ')})`);
      }
      if (name in headers) throw new WaymarkError('invalid_argument', `header ${name} is given twice`);
      headers[name] = checkValue(name, value);
    }
  }
  if (token !== undefined && token !== null) {
    if (typeof token !== 'string' || token.length === 0) throw new WaymarkError('invalid_argument', 'token must be a non-empty string');
    if (!BEARER_TOKEN.test(token)) {
      throw new WaymarkError('invalid_argument',
        'token must be visible ASCII without spaces (RFC 9110 5.5 VCHAR), sent as Authorization: Bearer <token>; send other credentials as headers.authorization');
    }
    if ('authorization' in headers) throw new WaymarkError('invalid_argument', 'give either token or an authorization header, not both');
    headers.authorization = `Bearer ${token}`;
  }
  let bytes = 0;
  for (const [n, v] of Object.entries(headers)) bytes += Buffer.byteLength(n) + Buffer.byteLength(v) + 4;
  if (bytes > config.maxHeaderBytes) {
    throw new WaymarkError('invalid_argument', `forwarded headers are ${bytes} bytes, over the limit of ${config.maxHeaderBytes}`);
  }
  return headers;
}

/** `waymark.watch(path, options?)`: options as the second positional argument or kwargs; kwargs win. */
export function parseWatchArgs(
  args: unknown[] | undefined,
  kwargs: Record<string, unknown> | undefined,
  config: Pick<WaymarkConfig, 'forwardHeaders' | 'maxHeaderBytes' | 'maxPathBytes'> & Partial<Pick<WaymarkConfig, 'revalidateMs' | 'minRevalidateMs'>>,
): { path: string } & WatchOptions {
  const a = args ?? [];
  const kw = isPlainObject(kwargs) ? kwargs : {};
  const positional = a[1];
  if (positional !== undefined && positional !== null && !isPlainObject(positional)) {
    throw new WaymarkError('invalid_argument', 'options must be an object: { token?, headers?, snapshot?, revalidateMs? }');
  }
  const { path: kwPath, ...kwOptions } = kw;
  const options: Record<string, unknown> = { ...(positional ?? {}), ...kwOptions };
  const path = validatePath(a[0] ?? kwPath, config.maxPathBytes);
  if (options.snapshot !== undefined && typeof options.snapshot !== 'boolean') {
    throw new WaymarkError('invalid_argument', 'snapshot must be a boolean');
  }
  let revalidateMs = config.revalidateMs ?? 0;
  if (options.revalidateMs !== undefined && options.revalidateMs !== null) {
    const n = options.revalidateMs;
    const min = config.minRevalidateMs ?? 5000;
    if (typeof n !== 'number' || !Number.isInteger(n) || (n !== 0 && (n < min || n > MAX_REVALIDATE_MS))) {
      throw new WaymarkError('invalid_argument', `revalidateMs must be 0 (off) or a whole number of ms from ${min} to ${MAX_REVALIDATE_MS}`);
    }
    revalidateMs = n;
  }
  return { path, headers: parseCredentials(options, config), snapshot: options.snapshot === true, revalidateMs };
}

/** Watches belong to the caller the router disclosed; without one there is no owner. */
export function callerOf(details: unknown): SessionId {
  const caller = (details as { caller?: unknown } | undefined)?.caller;
  if (typeof caller !== 'number' || !Number.isSafeInteger(caller)) {
    throw new WaymarkError('no_caller', 'the router did not disclose the caller; enable caller disclosure for this role');
  }
  return caller;
}
