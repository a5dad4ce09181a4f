import { createHash } from 'node:crypto';
import { WaymarkError } from './errors.js';
import type { ForwardHeaders, SessionId } from './types.js';

export interface Watch {
  readonly id: string;
  readonly session: SessionId;
  readonly path: string;
  headers: ForwardHeaders;
  /** short hash of the credentials: tells watches apart in logs without revealing them */
  credKey: string;
  /** status and body hash of the last Update this session received for the watch */
  lastSent?: { status: number; bodyHash: string };
  /** set by a 401/403: no fetch with dead credentials until new ones arrive */
  suspended?: boolean;
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

/** All watches of this instance, indexed by id, by session and by path. Pure: no I/O. */
export class WatchRegistry {
  private readonly byId = new Map<string, Watch>();
  private readonly bySession = new Map<SessionId, Set<Watch>>();
  private readonly byPathIndex = new Map<string, Set<Watch>>();

  constructor(private readonly maxPerSession: number) {}

  get size(): number {
    return this.byId.size;
  }

  get sessionCount(): number {
    return this.bySession.size;
  }

  get(id: string): Watch | undefined {
    return this.byId.get(id);
  }

  upsert(session: SessionId, path: string, headers: ForwardHeaders): UpsertResult {
    const id = watchId(session, path);
    const credKey = credentialsKey(headers);
    const existing = this.byId.get(id);
    if (existing) {
      const credentialsChanged = existing.credKey !== credKey;
      const resumed = credentialsChanged && this.replaceCredentials(existing, headers);
      return { watch: existing, created: false, credentialsChanged, resumed };
    }
    const own = this.bySession.get(session);
    if ((own?.size ?? 0) >= this.maxPerSession) {
      throw new WaymarkError('too_many_watches', `this session already has ${this.maxPerSession} watches, the limit`);
    }
    const watch: Watch = { id, session, path, headers, credKey };
    this.byId.set(id, watch);
    addTo(this.bySession, session, watch);
    addTo(this.byPathIndex, path, watch);
    return { watch, created: true, credentialsChanged: false, resumed: false };
  }

  /**
   * New credentials resume a suspended watch. `lastSent` stays: a rotated token that sees the same
   * data pushes nothing, while other data differs in its body and is pushed anyway.
   * Returns whether the watch was suspended.
   */
  replaceCredentials(watch: Watch, headers: ForwardHeaders): boolean {
    const wasSuspended = watch.suspended === true;
    watch.headers = headers;
    watch.credKey = credentialsKey(headers);
    watch.suspended = false;
    return wasSuspended;
  }

  /** The watches of one session, as a snapshot array. */
  forSession(session: SessionId): Watch[] {
    const set = this.bySession.get(session);
    return set ? [...set] : [];
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
    const set = this.byPathIndex.get(path);
    return set ? [...set] : [];
  }

  /** True while this exact watch object is still registered (not unwatched or replaced). */
  isLive(watch: Watch): boolean {
    return this.byId.get(watch.id) === watch;
  }

  private delete(w: Watch): number {
    if (this.byId.get(w.id) !== w) return 0;
    this.byId.delete(w.id);
    removeFrom(this.bySession, w.session, w);
    removeFrom(this.byPathIndex, w.path, w);
    return 1;
  }
}

function addTo<K>(index: Map<K, Set<Watch>>, key: K, w: Watch): void {
  let set = index.get(key);
  if (!set) index.set(key, (set = new Set()));
  set.add(w);
}

function removeFrom<K>(index: Map<K, Set<Watch>>, key: K, w: Watch): void {
  const set = index.get(key);
  if (!set) return;
  set.delete(w);
  if (set.size === 0) index.delete(key);
}
