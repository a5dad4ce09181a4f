import { createHash } from 'node:crypto';
import type { FetchResult, ForwardHeaders } from '../protocol/types.js';
import { DEFAULT_ACCEPT } from './fetcher.js';

/**
 * Prefix of the credentials key of a share's own dispatcher group. Real credential keys are
 * base64url (watch-registry credentialsKey), so this never names a real group.
 */
export const SHARE_CRED_PREFIX = '\u0001share:';

/** Request header names whose variance means per-user answers: a Vary naming them turns sharing off. */
const PER_USER = new Set(['authorization', 'cookie']);

/** The Cache-Control directives that decide sharing, as RFC 9111 5.2.2 defines them. */
export interface CacheDirectives {
  public: boolean;
  /** `private` in either form: with field names too, since a shared cache would then have to edit the response */
  private: boolean;
  noStore: boolean;
}

/**
 * Cache-Control directive names of a field value (RFC 9111 5.2: comma-separated, names
 * case-insensitive, arguments a token or a quoted-string that may itself hold commas).
 */
export function parseCacheControl(value: string | undefined): CacheDirectives {
  const out: CacheDirectives = { public: false, private: false, noStore: false };
  if (!value) return out;
  // Drop quoted arguments first (with their escapes), so a comma inside one splits nothing.
  const bare = value.replace(/"(?:[^"\\]|\\.)*"?/g, '""');
  for (const part of bare.split(',')) {
    const name = part.split('=')[0].trim().toLowerCase();
    if (name === 'public') out.public = true;
    else if (name === 'private') out.private = true;
    else if (name === 'no-store') out.noStore = true;
  }
  return out;
}

/**
 * The header names of a Vary field value, lower-case, deduplicated and sorted; `null` when the
 * response may not be shared: `Vary: *` (RFC 9110 12.5.5: it varies on more than request
 * headers) or a Vary naming Authorization or Cookie (the answer differs per user).
 */
export function parseVary(value: string | undefined): string[] | null {
  if (!value) return [];
  const names = new Set<string>();
  for (const part of value.split(',')) {
    const name = part.trim().toLowerCase();
    if (name === '') continue;
    if (name === '*' || PER_USER.has(name)) return null;
    names.add(name);
  }
  return [...names].sort();
}

/**
 * Whether a response may serve other credentials (contract 12): a 200 with a whole body whose
 * Cache-Control has `public` and neither `private` nor `no-store` (RFC 9111 3.5, 5.2.2.3, 5.2.2.7),
 * with a Vary that does not name the user. Returns the Vary names, or `null` when it may not.
 */
export function shareableVary(r: FetchResult): string[] | null {
  if (r.status !== 200 || r.error) return null;
  const cc = parseCacheControl(r.cacheControl);
  if (!cc.public || cc.private || cc.noStore) return null;
  return parseVary(r.vary);
}

/**
 * The values a request with these forwarded headers carries for the Vary names: what decides
 * whether a stored response can answer it (RFC 9111 4.1). Accept is the fetcher's default when
 * the watch forwards none, as sent.
 */
function varyValues(names: readonly string[], headers: ForwardHeaders): string {
  return names.map((n) => {
    const v = headers[n] ?? (n === 'accept' ? DEFAULT_ACCEPT : undefined);
    return v === undefined ? '-' : `=${v}`;
  }).join('\n');
}

/** The watches of one path whose own latest answers were public with the same Vary names and values. */
export interface Share {
  /** `SHARE_CRED_PREFIX` + a hash: the credentials key of the share's dispatcher group */
  readonly credKey: string;
  readonly path: string;
  readonly vary: readonly string[];
  /** credential keys of the member groups, in joining order */
  readonly members: Set<string>;
  /** round robin: whose credentials the next shared fetch uses */
  turn: number;
  /** performance.now() of the last shared fetch's start: revalidation turns of members within half a period are answered by it */
  fetchedAt: number;
}

/**
 * The public-share table of contract 12: per (path, Vary names, Vary values), the (path,
 * credentials) groups whose own most recent answer was a shareable 200. Pure: no I/O. A group
 * is in at most one share; it joins only by its own answer (`record`), leaves by any answer
 * that is not shareable (its own or the share's), and when its last watch goes (`forget`).
 * Memory: one entry per member group plus one per share.
 */
export class ShareTable {
  private readonly shares = new Map<string, Share>();
  /** `<credKey>\0<path>` of a member group -> its share's credKey */
  private readonly memberOf = new Map<string, string>();

  get size(): number {
    return this.shares.size;
  }

  /** The share a group belongs to, if any. */
  shareOf(path: string, credKey: string): Share | undefined {
    const key = this.memberOf.get(`${credKey}\0${path}`);
    return key === undefined ? undefined : this.shares.get(`${key}\0${path}`);
  }

  /** A share by its dispatcher group (path, share credKey). */
  get(path: string, shareCredKey: string): Share | undefined {
    return this.shares.get(`${shareCredKey}\0${path}`);
  }

  /**
   * A group's own answer (a fetch with its own credentials): a shareable one joins (or moves
   * it to) the share of its Vary, anything else takes it out. A 304 changes nothing: it says the
   * answer the group holds still stands. No response (status 0) is not an answer that is public.
   */
  record(path: string, credKey: string, headers: ForwardHeaders, r: FetchResult): void {
    if (r.status === 304) return;
    const vary = shareableVary(r);
    if (vary === null) {
      this.leave(path, credKey);
      return;
    }
    const shareCredKey = SHARE_CRED_PREFIX + createHash('sha256').update(`${vary.join(',')}\0${varyValues(vary, headers)}`).digest('base64url').slice(0, 16);
    if (this.memberOf.get(`${credKey}\0${path}`) === shareCredKey) return;
    this.leave(path, credKey);
    const key = `${shareCredKey}\0${path}`;
    let s = this.shares.get(key);
    if (!s) this.shares.set(key, (s = { credKey: shareCredKey, path, vary, members: new Set(), turn: 0, fetchedAt: -Infinity }));
    s.members.add(credKey);
    this.memberOf.set(`${credKey}\0${path}`, shareCredKey);
  }

  /** Take a group out of its share (back to its own fetch). Returns the share it left, if it was in one. */
  leave(path: string, credKey: string): Share | undefined {
    const gk = `${credKey}\0${path}`;
    const shareCredKey = this.memberOf.get(gk);
    if (shareCredKey === undefined) return undefined;
    this.memberOf.delete(gk);
    const key = `${shareCredKey}\0${path}`;
    const s = this.shares.get(key);
    if (!s) return undefined;
    s.members.delete(credKey);
    if (s.members.size === 0) this.shares.delete(key);
    return s;
  }

  /** Every member leaves (the share's answer was not shareable). Returns their credential keys. */
  dissolve(s: Share): string[] {
    const members = [...s.members];
    for (const m of members) this.leave(s.path, m);
    return members;
  }

  /** The group's last watch went. */
  forget(path: string, credKey: string): void {
    this.leave(path, credKey);
  }

  /** The member whose credentials the next shared fetch uses, among `live` (round robin over joining order). */
  pick(s: Share, live: readonly string[]): string {
    const m = live[s.turn % live.length];
    s.turn = (s.turn + 1) % 1_000_000_007;
    return m;
  }
}
