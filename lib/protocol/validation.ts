import { MAX_REVALIDATE_MS, RESERVED_REQUEST_HEADERS, type WaymarkConfig } from './config.js';
import { WaymarkError } from './errors.js';
import type { ForwardHeaders, SessionId } from './types.js';

// Control characters, whitespace, DEL and anything non-ASCII: WHATWG URL parsing strips or
// rewrites several of these (tab, CR, LF) and that is how `/\t/evil` turns into another host.
const NOT_VISIBLE_ASCII = /[^\x21-\x7e]/;
const PERCENT = /%(?![0-9a-fA-F]{2})/;

function decodeOnce(s: string): string | null {
  try {
    return decodeURIComponent(s);
  } catch {
    return null;
  }
}

function badSegment(seg: string): boolean {
  return seg === '.' || seg === '..' || seg.includes('/') || seg.includes('\\') || /[\x00-\x1f\x7f]/.test(seg);
}

/**
 * The path grammar (contract section 2): a single leading `/`, visible ASCII only, no `\`, no
 * `//`, no fragment, well-formed percent escapes, and no segment that is (or decodes, once or
 * twice, to) `.`/`..` or contains `/`, `\` or a control character. Returns the path unchanged.
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
    // Decode until stable (a few rounds at most): whatever layer behind the API decodes once
    // more must still not see a dot segment, a slash or a control character.
    let current = seg;
    for (let round = 0; ; round++) {
      if (badSegment(current)) {
        throw new WaymarkError('invalid_path', 'path must not contain "." or ".." segments or encoded "/", "\\" or control characters');
      }
      if (round === 4) break;
      const next = decodeOnce(current);
      if (next === null) {
        // a %-sequence that is not valid UTF-8 (overlong forms such as %c0%ae included)
        if (round === 0) throw new WaymarkError('invalid_path', 'path has a percent escape that is not valid UTF-8');
        break;
      }
      if (next === current) break;
      current = next;
    }
  }
  return path;
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

function checkValue(name: string, value: unknown): string {
  if (typeof value !== 'string') throw new WaymarkError('invalid_argument', `header ${name} must be a string`);
  if (/[\r\n\0]/.test(value)) throw new WaymarkError('invalid_argument', `header ${name} must not contain CR, LF or NUL`);
  return value;
}

/** Credentials of a watch: token plus allowlisted headers, as the request headers they become. */
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
    if (/[\r\n\0]/.test(token)) throw new WaymarkError('invalid_argument', 'token must not contain CR, LF or NUL');
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
