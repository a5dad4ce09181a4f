/** A WAMP session id, as the router assigns it. */
export type SessionId = number;

/** One bump as received from Redis, after parsing. */
export interface Bump {
  id: string;
  /** exact paths; one without a query reaches every query of that path (contract 11.1) */
  paths: string[];
  /** path prefixes matched at a segment boundary (contract 11.2) */
  prefixes?: string[];
  /** tags the API declared on its responses (contract 11.3) */
  tags?: string[];
  /** a valid W3C traceparent, sent on the fetches this bump causes (contract 11.6) */
  traceparent?: string;
  /** ms since epoch when Waymark received it */
  at: number;
}

/** Request headers forwarded upstream for one watch: lower-case names, validated values. */
export type ForwardHeaders = Readonly<Record<string, string>>;

export interface FetchRequest {
  /** validated origin-relative path (with query) */
  path: string;
  headers: ForwardHeaders;
  /** value of the X-Waymark header: the bump id, `snapshot`, `refresh` or `resync` (after an outage) */
  reason: string;
  /** revalidate: sent as If-None-Match / If-Modified-Since */
  validators?: Validators;
  /** W3C trace context of the bump that caused this fetch, sent as the `traceparent` header */
  traceparent?: string;
}

export interface Validators {
  etag?: string;
  lastModified?: string;
  /**
   * the response's `Date`, which tells whether `lastModified` is strong enough to revalidate
   * with (RFC 9110 8.8.2.2); ignored in a request
   */
  date?: string;
}

/**
 * Why a fetch gave no usable body. `timeout` and `unreachable`: no response (the API looks down);
 * `too_large`: a body over WAYMARK_MAX_BODY_BYTES, received or decoded; `invalid_response`
 * (an extension of contract section 3): the API answered bytes that are not a readable HTTP
 * response (head too large or malformed, bad chunked framing, a corrupt content coding).
 */
export type FetchErrorCode = 'timeout' | 'unreachable' | 'too_large' | 'invalid_response';

export interface FetchResult {
  status: number;
  headers: Record<string, string>;
  body: string;
  encoding: 'utf8' | 'base64';
  fetchedAt: number;
  error?: { code: FetchErrorCode; message: string };
  /** internal, never published: the response's validators and Retry-After, whatever the allowlist */
  validators?: Validators;
  retryAfterMs?: number;
  /** internal: the response's tags (contract 11.3); [] when it had no tag header; undefined when tags are off */
  tags?: string[];
  /** internal: tags over the per-response cap or malformed, dropped */
  tagsDropped?: number;
  /** internal: the response's Cache-Control and Vary (lines joined by ", "), whatever the allowlist: they decide sharing (contract 12) */
  cacheControl?: string;
  vary?: string;
  /**
   * internal: the request failed before anything was sent (a local error such as a header value
   * undici refuses); it says nothing about the API, so the breaker ignores it and it is not retried
   */
  notSent?: boolean;
}

/** What a client receives on `waymark.session.<id>` (contract section 3). */
export interface Update {
  watch: string;
  path: string;
  status: number;
  headers: Record<string, string>;
  body: string;
  encoding: 'utf8' | 'base64';
  bump: { id: string; at: number } | null;
  fetchedAt: number;
  error?: { code: FetchErrorCode; message: string };
  /** the API answered 410 Gone: this is the watch's last Update, it has been removed (contract 11.5) */
  ended?: true;
}

export interface WatchResult {
  watch: string;
  path: string;
  topic: string;
  snapshot?: Update;
}
