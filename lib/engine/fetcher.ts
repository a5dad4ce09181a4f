import type { Socket } from 'node:net';
import { buildConnector, Client, errors as undiciErrors, Pool, type Dispatcher } from 'undici';
import { NEVER_FORWARDED_RESPONSE_HEADERS } from '../protocol/config.js';
import type { FetchErrorCode, FetchRequest, FetchResult, Validators } from '../protocol/types.js';
import { parseTags, resolveApiUrl } from '../protocol/validation.js';
import { USER_AGENT } from '../protocol/version.js';
import { ACCEPT_ENCODING, CodingError, decodeCodings, encodeBody, mimeInfo, parseCodings } from './response-body.js';

/** The seam between dispatching and HTTP: fetch one path with one watch's credentials. */
export interface Fetcher {
  /** Never rejects for upstream trouble: no response becomes `status: 0` with an `error`. */
  fetch(req: FetchRequest, signal?: AbortSignal): Promise<FetchResult>;
  close(): Promise<void>;
}

export interface UndiciFetcherOptions {
  apiUrl: string;
  responseHeaders: readonly string[];
  maxBodyBytes: number;
  timeoutMs: number;
  connections: number;
  /** lower-case response headers that carry tags (contract 11.3); none: tags off */
  tagHeaders?: readonly string[];
  /** tags kept per response. @default 64 */
  maxTags?: number;
}

/**
 * True for the error codes that mean the API gave no answer (`timeout`, `unreachable`: refused,
 * reset, DNS, a hung request): the ones that say the API may be down. `too_large` and
 * `invalid_response` are answers, bad ones for that path, that say nothing about the API's health.
 */
export function isApiDownError(code: FetchErrorCode | undefined): boolean {
  return code === 'timeout' || code === 'unreachable';
}

/**
 * The Accept sent when a watch forwards none. Frameworks answer an unauthenticated API client
 * with 401 but a browser with a 302 to the login page, and tell them apart by Accept: Laravel's
 * `expectsJson()` wants the first (highest q) type to contain `/json`, and Rails reads any Accept
 * that lists `*\/*` after a comma as a browser's (`BROWSER_LIKE_ACCEPTS`) and answers HTML. So
 * exactly `application/json`, as Laravel Sanctum and Rails API clients send. A watch on a non-JSON
 * resource forwards its own `accept` (on the default forward allowlist).
 */
export const DEFAULT_ACCEPT = 'application/json';

/** Response headers that hold one value (RFC 9110/9111): of repeated lines the last counts; list headers are joined with ", " (RFC 9110 5.3). */
const SINGLETON_HEADERS = new Set([
  'age', 'content-length', 'content-location', 'content-range', 'date', 'etag', 'expires',
  'last-modified', 'location', 'retry-after', 'access-control-allow-origin', 'access-control-max-age',
]);

/**
 * RFC 9110 5.6.7 HTTP-date: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), obsolete RFC 850
 * (`Sunday, 06-Nov-94 08:49:37 GMT`) or asctime (`Sun Nov  6 08:49:37 1994`). Checked before
 * Date.parse, which reads almost anything with a year in it (`soon 2030`, `-5`) as a date.
 */
const HTTP_DATE = /^(?:[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT|[A-Z][a-z]{5,8}, \d{2}-[A-Z][a-z]{2}-\d{2} \d{2}:\d{2}:\d{2} GMT|[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \d{4})$/;

/**
 * Retry-After (RFC 9110 10.2.3) as delay-seconds or an HTTP-date, in ms; undefined when absent
 * or not one of those (a negative, fractional or garbage value is ignored, as 10.2.3 leaves it).
 */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  if (!HTTP_DATE.test(v)) return undefined;
  // asctime has no zone; it is GMT (5.6.7), not the local time Date.parse would assume
  const at = Date.parse(v.endsWith('GMT') ? v : `${v} GMT`);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

function last(v: string | string[] | undefined): string | undefined {
  return typeof v === 'string' || v === undefined ? v : v[v.length - 1];
}

/** Stop reading a body we will not use; undici reports the abort as an error we expect. */
function discard(body: NodeJS.ReadableStream & { destroy(): void }): void {
  body.on('error', () => undefined);
  body.destroy();
}

function errorResult(code: FetchErrorCode, message: string): FetchResult {
  return { status: 0, headers: {}, body: '', encoding: 'utf8', fetchedAt: Date.now(), error: { code, message } };
}

/** undici's errors for bytes that are not an HTTP response: a head over maxHeaderSize, a bad status line or header, conflicting Content-Length, bad chunked framing. */
function isUnparsable(err: unknown): boolean {
  return err instanceof undiciErrors.HTTPParserError || err instanceof undiciErrors.HeadersOverflowError
    || err instanceof undiciErrors.ResponseContentLengthMismatchError;
}

function classify(err: unknown, timedOut: boolean): FetchResult {
  const e = err as { code?: string; name?: string; message?: string };
  if (timedOut || e instanceof undiciErrors.HeadersTimeoutError || e instanceof undiciErrors.BodyTimeoutError
    || e.code === 'UND_ERR_CONNECT_TIMEOUT' || e.name === 'TimeoutError') {
    return errorResult('timeout', 'the API did not answer in time');
  }
  // Only the error code or name: messages can quote the request, and it carries credentials.
  if (isUnparsable(err)) return errorResult('invalid_response', `the API's answer is not a readable HTTP response (${e.code ?? e.name})`);
  const result = errorResult('unreachable', `the API could not be reached (${e.code ?? e.name ?? 'error'})`);
  // Refused before sending (an invalid header value or key): nothing reached the API.
  if (e.code === 'UND_ERR_INVALID_ARG') result.notSent = true;
  return result;
}

/** Set on a socket error when the socket had read bytes before: it carried an earlier response. */
const kReused = Symbol('waymark.reusedSocket');

function markReused(this: Socket, err: Error & { [kReused]?: boolean }): void {
  err[kReused] = this.bytesRead > 0;
}

/**
 * The request failed before its response head because a kept-alive connection that had already
 * served a response was reset or closed: the race where the server closes an idle socket just as
 * a request goes out on it. Browsers resend such a request at once on a new connection (Chromium
 * HttpNetworkTransaction::ShouldResendRequest: a reused connection, no headers received, a
 * reset/closed/empty-response error). undici does not: it only re-queues a request whose socket
 * shows the close before the request is written. A reset on a fresh connection is not this case.
 */
function isStaleConnection(err: unknown): boolean {
  const e = err as { code?: string; socket?: { bytesRead?: number }; [kReused]?: boolean };
  // SocketError ("other side closed", "closed") carries the socket's counters
  if (e.code === 'UND_ERR_SOCKET') return (e.socket?.bytesRead ?? 0) > 0;
  return (e.code === 'ECONNRESET' || e.code === 'EPIPE' || e.code === 'ECONNABORTED') && e[kReused] === true;
}

/**
 * undici Pool on the API origin: ~25 us of client CPU per request against ~330 us for got, and
 * fetching is the hot path of a fan-out proxy. Redirects are not followed (a Pool never does).
 *
 * What `fetch` resolves to (it never rejects):
 * - an answer: its status, the allowlisted headers, the body (below), `validators`/`retryAfterMs`;
 * - no answer in `timeoutMs` (connect, head or body): `status 0`, `timeout`;
 * - refused, reset, DNS, TLS, a body cut short by the connection closing: `status 0`,
 *   `unreachable`. One case is resent first: a kept-alive connection that had served a response
 *   and fails before this request's response head (see isStaleConnection) is resent at once,
 *   once, on a new connection of its own; every other failure is returned as it is (the
 *   dispatcher decides on back-off);
 * - a head undici cannot parse (over 16 KiB, a bad status line or header, repeated
 *   Content-Length, which undici refuses even when the values agree): `status 0`,
 *   `invalid_response`; a body with bad chunked framing or a content coding that does not
 *   decode: the upstream status and headers, `body: ""`, `invalid_response`;
 * - a body over `maxBodyBytes`, as received or once decoded: the upstream status and headers,
 *   `body: ""`, `too_large`.
 *
 * Request headers: the watch's forwarded ones, `Accept: application/json` when it forwards no
 * `accept` (DEFAULT_ACCEPT), `Accept-Encoding: gzip, deflate, br` always (a reserved header: the
 * body pushed is always decoded), the validators, `x-waymark` and `user-agent`.
 *
 * Body: content codings `gzip`/`x-gzip`, `deflate` (zlib-wrapped or raw, as browsers accept) and
 * `br` are undone, stacked ones last-applied first, and `content-encoding`/`content-length` are
 * dropped from the pushed headers. A body in a coding Waymark cannot undo goes as `base64` of the
 * bytes received, with a `content-encoding` header (pushed whatever the allowlist) naming the
 * codings, so a client that can decode them may. Then the bytes become text or base64 as
 * encodeBody says (declared charset, BOM, fatal decoding).
 */
export class UndiciFetcher implements Fetcher {
  private readonly pool: Pool;
  private readonly origin: string;
  private readonly connect: ReturnType<typeof buildConnector>;
  private readonly allowed: Set<string>;
  private readonly targets = new Map<string, string>();
  private closing?: Promise<void>;

  constructor(private readonly opts: UndiciFetcherOptions) {
    this.origin = new URL(opts.apiUrl).origin;
    const connector = buildConnector({ timeout: opts.timeoutMs });
    // One listener per connection (not per request) tells isStaleConnection a socket was reused.
    this.connect = (options, callback) => connector(options, (err, socket) => {
      if (err || !socket) return callback(err ?? new Error('no socket'), null);
      socket.on('error', markReused);
      callback(null, socket);
    });
    this.pool = new Pool(this.origin, {
      connections: opts.connections,
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
      connect: this.connect,
      keepAliveTimeout: 30_000,
    });
    this.allowed = new Set(opts.responseHeaders.filter((h) => !NEVER_FORWARDED_RESPONSE_HEADERS.includes(h)));
  }

  async fetch(req: FetchRequest, signal?: AbortSignal): Promise<FetchResult> {
    // The Pool's connect/headers/body timeouts bound each phase; this timer bounds the whole
    // request at timeoutMs. No AbortController: creating one and its listener cost ~10-15 us of
    // CPU per request on Node 20, and fetching is the hot path. A request still waiting for
    // headers at the deadline is answered `timeout` now; undici's headersTimeout frees its
    // connection moments later.
    let timer: NodeJS.Timeout | undefined;
    let body: { destroy(err?: Error): void } | undefined;
    let timedOut = false;
    const deadline = new Promise<FetchResult>((resolve) => {
      timer = setTimeout(() => {
        timedOut = true;
        body?.destroy(new Error('deadline'));
        resolve(classify(undefined, true));
      }, this.opts.timeoutMs);
    });
    try {
      // A body whose head came after the deadline is not read: its connection is freed at once.
      const onBody = (b: { destroy(err?: Error): void }) => { body = b; if (timedOut) b.destroy(new Error('deadline')); };
      return await Promise.race([this.request(req, signal, onBody).catch((err) => classify(err, timedOut)), deadline]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async request(req: FetchRequest, signal: AbortSignal | undefined, onBody: (b: { destroy(err?: Error): void }) => void): Promise<FetchResult> {
    // The forwarded headers may replace the default Accept, never accept-encoding (reserved).
    const reqHeaders: Record<string, string> = {
      accept: DEFAULT_ACCEPT, ...req.headers, 'accept-encoding': ACCEPT_ENCODING, 'x-waymark': req.reason, 'user-agent': USER_AGENT,
    };
    const v = req.validators;
    if (v?.etag) reqHeaders['if-none-match'] = v.etag;
    if (v?.lastModified) reqHeaders['if-modified-since'] = v.lastModified;
    if (req.traceparent) reqHeaders.traceparent = req.traceparent;
    const options: Dispatcher.RequestOptions = { method: 'GET', path: this.requestPath(req.path), headers: reqHeaders, ...(signal ? { signal } : {}) };
    let res: Dispatcher.ResponseData;
    try {
      res = await this.pool.request(options);
    } catch (err) {
      if (!isStaleConnection(err) || signal?.aborted) throw err;
      res = await this.onFreshConnection(options);
    }
    onBody(res.body);
    const raw = res.headers;
    const etag = last(raw.etag);
    const lastModified = last(raw['last-modified']);
    const date = last(raw.date);
    // An HTTP-date Retry-After is read against the API's own Date: immune to clock skew.
    const dateMs = date === undefined ? Number.NaN : Date.parse(date);
    const retryAfterMs = parseRetryAfter(last(raw['retry-after']), Number.isNaN(dateMs) ? Date.now() : dateMs);
    const contentType = raw['content-type'];
    const mime = contentType === undefined ? undefined : mimeInfo(contentType);
    const headers: Record<string, string> = {};
    for (const name in raw) {
      const value = raw[name];
      if (value === undefined || !this.allowed.has(name)) continue;
      headers[name] = typeof value === 'string' ? value : SINGLETON_HEADERS.has(name) ? value[value.length - 1] : value.join(', ');
    }
    if (mime && headers['content-type'] !== undefined) headers['content-type'] = mime.header;
    const status = res.statusCode;
    const declared = Number(last(raw['content-length']));
    if (declared > this.opts.maxBodyBytes) {
      discard(res.body);
      return this.tooLarge(status, headers, `the response body is over ${this.opts.maxBodyBytes} bytes`);
    }
    let bytes: Buffer | undefined;
    try {
      bytes = await this.readBody(res.body);
    } catch (err) {
      // Cut short by the connection closing (undici says so as a length mismatch when the answer
      // had `connection: close`, as a socket error otherwise): no whole answer, like a reset.
      if (err instanceof undiciErrors.ResponseContentLengthMismatchError) return errorResult('unreachable', `the connection closed before the whole body arrived (${err.code})`);
      if (isUnparsable(err)) return this.invalid(status, headers, `the API's response body is malformed (${(err as Error).name})`);
      throw err;
    }
    if (!bytes) return this.tooLarge(status, headers, `the response body is over ${this.opts.maxBodyBytes} bytes`);
    let encoded: { body: string; encoding: 'utf8' | 'base64' };
    const coding = raw['content-encoding'];
    if (coding === undefined) {
      encoded = encodeBody(mime, bytes);
    } else {
      const codings = parseCodings(coding);
      if (codings === undefined) {
        // A coding we cannot undo: the bytes as they came, and the header that says how to read them.
        headers['content-encoding'] = typeof coding === 'string' ? coding : coding.join(', ');
        encoded = { body: bytes.toString('base64'), encoding: 'base64' };
      } else {
        delete headers['content-encoding'];
        delete headers['content-length'];
        try {
          encoded = encodeBody(mime, await decodeCodings(bytes, codings, this.opts.maxBodyBytes));
        } catch (err) {
          if (!(err instanceof CodingError)) throw err;
          return err.tooLarge ? this.tooLarge(status, headers, err.message) : this.invalid(status, headers, err.message);
        }
      }
    }
    const result: FetchResult = { status, headers, body: encoded.body, encoding: encoded.encoding, fetchedAt: Date.now() };
    if (etag || lastModified) {
      const validators: Validators = {};
      if (etag) validators.etag = etag;
      if (lastModified) validators.lastModified = lastModified;
      // tells the dispatcher whether Last-Modified is strong enough to revalidate with
      if (date) validators.date = date;
      result.validators = validators;
    }
    if (retryAfterMs !== undefined) result.retryAfterMs = retryAfterMs;
    const cacheControl = raw['cache-control'];
    if (cacheControl !== undefined) result.cacheControl = typeof cacheControl === 'string' ? cacheControl : cacheControl.join(', ');
    const vary = raw.vary;
    if (vary !== undefined) result.vary = typeof vary === 'string' ? vary : vary.join(', ');
    Object.assign(result, this.tags(raw));
    return result;
  }

  /** The one resend of a request whose kept-alive connection went stale: a new connection of its own, closed after this response. */
  private onFreshConnection(options: Dispatcher.RequestOptions): Promise<Dispatcher.ResponseData> {
    const client = new Client(this.origin, {
      headersTimeout: this.opts.timeoutMs, bodyTimeout: this.opts.timeoutMs, connect: this.connect,
    });
    const res = client.request({ ...options, reset: true });
    // close() lets the request in flight finish (its body read or discarded), then closes.
    client.close().catch(() => client.destroy());
    return res;
  }

  /** The whole body, or undefined (and the rest discarded) once it passes maxBodyBytes. Events, not `for await`: an async iterator per response costs measurable CPU. */
  private readBody(body: NodeJS.ReadableStream & { destroy(): void }): Promise<Buffer | undefined> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      body.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > this.opts.maxBodyBytes) {
          body.removeAllListeners('data');
          body.removeAllListeners('end');
          discard(body);
          resolve(undefined);
          return;
        }
        chunks.push(chunk);
      });
      body.on('end', () => resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size)));
      body.on('error', reject);
    });
  }

  /** The response's tags from the tag headers, for every status (contract 11.3). */
  private tags(headers: Record<string, string | string[] | undefined>): Pick<FetchResult, 'tags' | 'tagsDropped'> {
    const names = this.opts.tagHeaders;
    if (!names || names.length === 0) return {};
    const values: string[] = [];
    for (const n of names) {
      const v = headers[n];
      if (v !== undefined) values.push(...(Array.isArray(v) ? v : [v]));
    }
    if (values.length === 0) return { tags: [] };
    const { tags, dropped } = parseTags(values, this.opts.maxTags ?? 64);
    return dropped > 0 ? { tags, tagsDropped: dropped } : { tags };
  }

  /** The request target under the API base path; memoised because watched paths repeat. */
  private requestPath(path: string): string {
    let target = this.targets.get(path);
    if (target === undefined) {
      const url = new URL(resolveApiUrl(this.opts.apiUrl, path));
      target = url.pathname + url.search;
      if (this.targets.size >= 10_000) this.targets.clear();
      this.targets.set(path, target);
    }
    return target;
  }

  private tooLarge(status: number, headers: Record<string, string>, message: string): FetchResult {
    return { status, headers, body: '', encoding: 'utf8', fetchedAt: Date.now(), error: { code: 'too_large', message } };
  }

  private invalid(status: number, headers: Record<string, string>, message: string): FetchResult {
    return { status, headers, body: '', encoding: 'utf8', fetchedAt: Date.now(), error: { code: 'invalid_response', message } };
  }

  close(): Promise<void> {
    this.closing ??= this.pool.close().catch(() => this.pool.destroy());
    return this.closing;
  }
}
