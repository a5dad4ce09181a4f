import { createHash } from 'node:crypto';
import { WaymarkError } from '../protocol/errors.js';
import type { Bump, ForwardHeaders, SessionId } from '../protocol/types.js';
import { matchBump, PathIndex } from './match-index.js';
import { TagIndex } from './tag-index.js';

export interface Watch {
  readonly id: string;
  readonly session: SessionId;
  /** interned: every watch on one path shares one string */
  readonly path: string;
  /** interned per credentials: watches with the same credentials share one object */
  headers: ForwardHeaders;
  /** short hash of the credentials: groups watches for shared fetches, tells them apart in logs */
  credKey: string;
  /** status and body hash of the last Update this session received for the watch */
  lastSent?: { status: number; bodyHash: string };
  /** set by a 401/403: no fetch with dead credentials until new ones arrive */
  suspended?: boolean;
  /** re-ask the API every this many ms; absent: only bumps refetch it (contract 11.4) */
  readonly revalidateMs?: number;
}

/** Told when a watch joins or leaves its (path, credentials) group (the revalidator). */
export interface GroupObserver {
  joined(watch: Watch): void;
  left(watch: Watch): void;
}

export interface UpsertResult {
  watch: Watch;
  created: boolean;
  credentialsChanged: boolean;
  /** the watch was suspended by a 401/403 and new credentials resumed it */
  resumed: boolean;
}

/**
 * A watch id depends only on (session, path), so a repeated watch returns the same id and any
 * instance computes the same one. It never starts with `/`, which is how unwatch tells an id
 * from a path.
 */
export function watchId(session: SessionId, path: string): string {
  return `w${createHash('sha256').update(`${session}\n${path}`).digest('base64url').slice(0, 22)}`;
}

export function credentialsKey(headers: ForwardHeaders): string {
  const canonical = Object.keys(headers).sort().map((k) => `${k}:${headers[k]}`).join('\n');
  return createHash('sha256').update(canonical).digest('base64url').slice(0, 12);
}

interface PathEntry {
  path: string;
  byCred: Map<string, Set<Watch>>;
}

/**
 * All watches of this instance, indexed by id, by session and by (path, credentials): the last
 * index is what lets one fetch serve every watch that would make the identical request.
 * Pure: no I/O.
 */
export class WatchRegistry {
  private readonly byId = new Map<string, Watch>();
  private readonly bySession = new Map<SessionId, Set<Watch>>();
  private readonly byPathIndex = new Map<string, PathEntry>();
  private readonly credentials = new Map<string, { headers: ForwardHeaders; refs: number }>();
  /** watched paths by segment, for bumps of every query and of prefixes (contract 11.1, 11.2) */
  readonly paths = new PathIndex();
  /** tags of each group's latest response (contract 11.3); groups leave with their last watch */
  readonly tags = new TagIndex();
  private readonly observers: GroupObserver[] = [];
  private readonly groupGoneListeners: Array<(path: string, credKey: string) => void> = [];

  constructor(private readonly maxPerSession: number) {}

  /** Call `fn` whenever the last watch of a (path, credentials) group goes (unwatch, leave, new credentials). */
  onGroupGone(fn: (path: string, credKey: string) => void): void {
    this.groupGoneListeners.push(fn);
  }

  observe(observer: GroupObserver): void {
    this.observers.push(observer);
  }

  /** Every (path, credentials) group a bump reaches, each once (its paths, prefixes and tags). */
  match(bump: Pick<Bump, 'paths' | 'prefixes' | 'tags'>): Generator<[path: string, credKey: string, watches: Set<Watch>]> {
    return matchBump(bump, this.paths, this.tags, (path) => this.byPathIndex.get(path)?.byCred);
  }

  get size(): number {
    return this.byId.size;
  }

  get sessionCount(): number {
    return this.bySession.size;
  }

  /** The sessions holding at least one watch, as a snapshot array. */
  sessions(): SessionId[] {
    return [...this.bySession.keys()];
  }

  get(id: string): Watch | undefined {
    return this.byId.get(id);
  }

  upsert(session: SessionId, path: string, headers: ForwardHeaders, revalidateMs = 0): UpsertResult {
    const id = watchId(session, path);
    const existing = this.byId.get(id);
    if (existing) {
      if ((existing.revalidateMs ?? 0) !== revalidateMs) {
        // The group stays; its observers see the watch leave with the old period and join with the new.
        for (const o of this.observers) o.left(existing);
        (existing as { revalidateMs?: number }).revalidateMs = revalidateMs;
        for (const o of this.observers) o.joined(existing);
      }
      const credentialsChanged = existing.credKey !== credentialsKey(headers);
      const resumed = credentialsChanged && this.replaceCredentials(existing, headers);
      return { watch: existing, created: false, credentialsChanged, resumed };
    }
    const own = this.bySession.get(session);
    if ((own?.size ?? 0) >= this.maxPerSession) {
      throw new WaymarkError('too_many_watches', `this session already has ${this.maxPerSession} watches, the limit`);
    }
    const entry = this.entryFor(path);
    const cred = this.internCredentials(headers);
    const watch: Watch = { id, session, path: entry.path, headers: cred.headers, credKey: cred.key };
    // Only when asked: a watch without it keeps the smaller shape (bench e, heap per watch).
    if (revalidateMs > 0) (watch as { revalidateMs?: number }).revalidateMs = revalidateMs;
    this.byId.set(id, watch);
    let set = this.bySession.get(session);
    if (!set) this.bySession.set(session, (set = new Set()));
    set.add(watch);
    this.addToGroup(entry, watch);
    return { watch, created: true, credentialsChanged: false, resumed: false };
  }

  /**
   * New credentials resume a suspended watch. `lastSent` stays: a rotated token that sees the same
   * data pushes nothing, while other data differs in its body and is pushed anyway.
   * Returns whether the watch was suspended.
   */
  replaceCredentials(watch: Watch, headers: ForwardHeaders): boolean {
    const wasSuspended = watch.suspended === true;
    watch.suspended = false;
    const cred = this.internCredentials(headers);
    if (cred.key === watch.credKey) {
      this.releaseCredentials(cred.key);
      return wasSuspended;
    }
    this.removeFromGroup(this.entryFor(watch.path), watch);
    this.releaseCredentials(watch.credKey);
    watch.headers = cred.headers;
    watch.credKey = cred.key;
    // (the path entry may have gone with the last watch of the old group)
    this.addToGroup(this.entryFor(watch.path), watch);
    return wasSuspended;
  }

  /** The watches of one session, as a snapshot array. */
  forSession(session: SessionId): Watch[] {
    const set = this.bySession.get(session);
    return set ? [...set] : [];
  }

  /** The sessions that hold at least one watch here. */
  sessionIds(): SessionId[] {
    return [...this.bySession.keys()];
  }

  /** Remove the caller's watch with this id, or every watch of the caller on this path. */
  remove(session: SessionId, idOrPath: string): number {
    if (idOrPath.startsWith('/')) {
      const w = this.byId.get(watchId(session, idOrPath));
      return w ? this.delete(w) : 0;
    }
    const w = this.byId.get(idOrPath);
    return w && w.session === session ? this.delete(w) : 0;
  }

  dropSession(session: SessionId): number {
    const own = this.bySession.get(session);
    if (!own) return 0;
    let n = 0;
    for (const w of [...own]) n += this.delete(w);
    return n;
  }

  /** The watches on exactly this path (query included), as a snapshot array. */
  byPath(path: string): Watch[] {
    const entry = this.byPathIndex.get(path);
    if (!entry) return [];
    const out: Watch[] = [];
    for (const set of entry.byCred.values()) for (const w of set) out.push(w);
    return out;
  }

  /** The credential groups on a path: each is the set of watches one fetch can serve. */
  groupsOn(path: string): Array<[credKey: string, watches: Set<Watch>]> {
    const entry = this.byPathIndex.get(path);
    return entry ? [...entry.byCred] : [];
  }

  /** The live watches of one (path, credentials) group. */
  group(path: string, credKey: string): Set<Watch> | undefined {
    return this.byPathIndex.get(path)?.byCred.get(credKey);
  }

  /** Every (path, credentials) group, for a full resync. */
  *allGroups(): Generator<[path: string, credKey: string, watches: Set<Watch>]> {
    for (const entry of this.byPathIndex.values()) for (const [k, set] of entry.byCred) yield [entry.path, k, set];
  }

  /** True while this exact watch object is still registered (not unwatched). */
  isLive(watch: Watch): boolean {
    return this.byId.get(watch.id) === watch;
  }

  private entryFor(path: string): PathEntry {
    let entry = this.byPathIndex.get(path);
    if (!entry) {
      this.byPathIndex.set(path, (entry = { path, byCred: new Map() }));
      this.paths.add(path);
    }
    return entry;
  }

  private internCredentials(headers: ForwardHeaders): { key: string; headers: ForwardHeaders } {
    const key = credentialsKey(headers);
    let c = this.credentials.get(key);
    if (!c) this.credentials.set(key, (c = { headers: Object.freeze({ ...headers }), refs: 0 }));
    c.refs += 1;
    return { key, headers: c.headers };
  }

  private releaseCredentials(key: string): void {
    const c = this.credentials.get(key);
    if (c && --c.refs === 0) this.credentials.delete(key);
  }

  private addToGroup(entry: PathEntry, w: Watch): void {
    let set = entry.byCred.get(w.credKey);
    if (!set) entry.byCred.set(w.credKey, (set = new Set()));
    set.add(w);
    for (const o of this.observers) o.joined(w);
  }

  private removeFromGroup(entry: PathEntry, w: Watch): void {
    const set = entry.byCred.get(w.credKey);
    if (!set?.delete(w)) return;
    for (const o of this.observers) o.left(w);
    if (set.size === 0) {
      entry.byCred.delete(w.credKey);
      this.tags.forget(entry.path, w.credKey);
      for (const fn of this.groupGoneListeners) fn(entry.path, w.credKey);
    }
    if (entry.byCred.size === 0) {
      this.byPathIndex.delete(entry.path);
      this.paths.remove(entry.path);
    }
  }

  private delete(w: Watch): number {
    if (this.byId.get(w.id) !== w) return 0;
    this.byId.delete(w.id);
    const own = this.bySession.get(w.session);
    own?.delete(w);
    if (own?.size === 0) this.bySession.delete(w.session);
    const entry = this.byPathIndex.get(w.path);
    if (entry) this.removeFromGroup(entry, w);
    this.releaseCredentials(w.credKey);
    return 1;
  }
}
