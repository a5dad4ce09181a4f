/** A WAMP session id, as the router assigns it. */
export type SessionId = number;

/** One bump as received from Redis, after parsing. */
export interface Bump {
  id: string;
  paths: string[];
  /** ms since epoch when Waymark received it */
  at: number;
}

/** Request headers forwarded upstream for one watch: lower-case names, validated values. */
export type ForwardHeaders = Readonly<Record<string, string>>;

export interface FetchRequest {
  /** validated origin-relative path (with query) */
  path: string;
  headers: ForwardHeaders;
  /** value of the X-Waymark header: the bump id, or `snapshot` */
  reason: string;
}

export type FetchErrorCode = 'timeout' | 'unreachable' | 'too_large';

export interface FetchResult {
  status: number;
  headers: Record<string, string>;
  body: string;
  encoding: 'utf8' | 'base64';
  fetchedAt: number;
  error?: { code: FetchErrorCode; message: string };
}

/** What a client receives on `waymark.session.<id>` (contract section 3). */
export interface Update extends FetchResult {
  watch: string;
  path: string;
  bump: { id: string; at: number } | null;
}

export interface WatchResult {
  watch: string;
  path: string;
  topic: string;
  snapshot?: Update;
}
