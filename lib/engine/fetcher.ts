import { errors as undiciErrors, Pool } from 'undici';
import { NEVER_FORWARDED_RESPONSE_HEADERS } from '../protocol/config.js';
import type { FetchErrorCode, FetchRequest, FetchResult, Validators } from '../protocol/types.js';
import { parseTags, resolveApiUrl } from '../protocol/validation.js';
import { USER_AGENT } from '../protocol/version.js';

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

const TEXT_TYPE = /^(text\/|application\/(json|xml|javascript|ecmascript|x-www-form-urlencoded|problem\+json|problem\+xml)\b|[^;]*\+(json|xml)\b)/i;
const utf8 = new TextDecoder('utf-8', { fatal: true });

function bodyEncoding(contentType: string | undefined, body: Buffer): { body: string; encoding: 'utf8' | 'base64' } {
  if (contentType && TEXT_TYPE.test(contentType.trim())) {
    try {
      return { body: utf8.decode(body), encoding: 'utf8' };
    } catch {
      // declared text but not valid UTF-8: base64 keeps every byte
    }
  }
  return { body: body.toString('base64'), encoding: 'base64' };
}

/** Retry-After as delay-seconds or an HTTP date, in ms; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

function one(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** Stop reading a body we will not use; undici reports the abort as an error we expect. */
function discard(body: NodeJS.ReadableStream & { destroy(): void }): void {
  body.on('error', () => undefined);
  body.destroy();
}

function errorResult(code: FetchErrorCode, message: string): FetchResult {
  return { status: 0, headers: {}, body: '', encoding: 'utf8', fetchedAt: Date.now(), error: { code, message } };
}

function classify(err: unknown, timedOut: boolean): FetchResult {
  const e = err as { code?: string; name?: string; message?: string };
  if (timedOut || e instanceof undiciErrors.HeadersTimeoutError || e instanceof undiciErrors.BodyTimeoutError
    || e.code === 'UND_ERR_CONNECT_TIMEOUT' || e.name === 'TimeoutError') {
    return errorResult('timeout', 'the API did not answer in time');
  }
  // Only the error code: messages can quote the request, and the request carries credentials.
  return errorResult('unreachable', `the API could not be reached (${e.code ?? e.name ?? 'error'})`);
}

/**
 * undici Pool on the API origin: ~25 us of client CPU per request against ~330 us for got, and
 * fetching is the hot path of a fan-out proxy. Redirects are not followed (a Pool never does).
 */
export class UndiciFetcher implements Fetcher {
  private readonly pool: Pool;
  private readonly allowed: Set<string>;
  private readonly targets = new Map<string, string>();
  private closing?: Promise<void>;

  constructor(private readonly opts: UndiciFetcherOptions) {
    this.pool = new Pool(new URL(opts.apiUrl).origin, {
      connections: opts.connections,
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
      connectTimeout: opts.timeoutMs,
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
      return await Promise.race([this.request(req, signal, (b) => { body = b; }).catch((err) => classify(err, timedOut)), deadline]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async request(req: FetchRequest, signal: AbortSignal | undefined, onBody: (b: { destroy(err?: Error): void }) => void): Promise<FetchResult> {
    const conditional: Record<string, string> = {};
    if (req.validators?.etag) conditional['if-none-match'] = req.validators.etag;
    if (req.validators?.lastModified) conditional['if-modified-since'] = req.validators.lastModified;
    const res = await this.pool.request({
      method: 'GET',
      path: this.requestPath(req.path),
      headers: { ...req.headers, ...conditional, 'x-waymark': req.reason, 'user-agent': USER_AGENT, ...(req.traceparent ? { traceparent: req.traceparent } : {}) },
      ...(signal ? { signal } : {}),
    });
    onBody(res.body);
    const validators: Validators = {};
    const etag = one(res.headers.etag);
    const lastModified = one(res.headers['last-modified']);
    if (etag) validators.etag = etag;
    if (lastModified) validators.lastModified = lastModified;
    const retryAfterMs = parseRetryAfter(one(res.headers['retry-after']));
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(res.headers)) {
      const n = name.toLowerCase();
      if (value !== undefined && this.allowed.has(n)) headers[n] = Array.isArray(value) ? value.join(', ') : value;
    }
    const declared = Number(res.headers['content-length']);
    if (Number.isFinite(declared) && declared > this.opts.maxBodyBytes) {
      discard(res.body);
      return this.tooLarge(res.statusCode, headers);
    }
    const bytes = await this.readBody(res.body);
    if (!bytes) return this.tooLarge(res.statusCode, headers);
    const extra = { ...(etag || lastModified ? { validators } : {}), ...(retryAfterMs !== undefined ? { retryAfterMs } : {}), ...this.tags(res.headers) };
    const contentType = typeof res.headers['content-type'] === 'string' ? res.headers['content-type'] : undefined;
    return { status: res.statusCode, headers, ...bodyEncoding(contentType, bytes), fetchedAt: Date.now(), ...extra };
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

  private tooLarge(status: number, headers: Record<string, string>): FetchResult {
    return {
      status, headers, body: '', encoding: 'utf8', fetchedAt: Date.now(),
      error: { code: 'too_large', message: `the response body is over ${this.opts.maxBodyBytes} bytes` },
    };
  }

  close(): Promise<void> {
    this.closing ??= this.pool.close().catch(() => this.pool.destroy());
    return this.closing;
  }
}
