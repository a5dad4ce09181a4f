import type { Bump } from '../protocol/types.js';
import type { TagIndex } from './tag-index.js';

/**
 * One node per path segment. Lean on purpose (bench e: a watch on its own path must stay well
 * under 1 KiB of heap): no parent link or segment copy, no Map or Set until a second entry needs
 * one, and a leaf holding a single path is that path string itself in its parent's map.
 * `paths` are the watched paths (with or without a query) whose path part ends here.
 */
interface Node {
  children?: Map<string, Child>;
  paths?: string | Set<string>;
}
type Child = Node | string;

/** `/a/b?x` -> ['a', 'b']; `/` -> ['']; `/a/` -> ['a', '']. */
function segmentsOf(pathname: string): string[] {
  return pathname.slice(1).split('/');
}

function pathnameOf(path: string): string {
  const q = path.indexOf('?');
  return q === -1 ? path : path.slice(0, q);
}

function* pathsAt(c: Child): Generator<string> {
  if (typeof c === 'string') yield c;
  else if (typeof c.paths === 'string') yield c.paths;
  else if (c.paths) yield* c.paths;
}

/** A node with no children and one path is stored as that path; none at all as nothing. */
function compact(n: Node): Child | undefined {
  if (n.children?.size) return n;
  if (n.paths === undefined) return undefined;
  return typeof n.paths === 'string' ? n.paths : n;
}

/**
 * The watched paths as a segment trie, for the bumps of contract 11.1 and 11.2 that name more
 * than one path: every query of a path (one node's paths) and every path under a prefix (one
 * node's subtree). A lookup costs the prefix's segments plus what it matches, never a scan of
 * all watched paths. Nodes are pruned when their last path goes, so memory follows what is
 * watched (about 30-60 bytes per distinct path). Matching is on the path as the watch gave it
 * (no decoding, case-sensitive).
 */
export class PathIndex {
  private readonly root: Node = {};
  private count = 0;

  get size(): number {
    return this.count;
  }

  add(path: string): void {
    const segs = segmentsOf(pathnameOf(path));
    let node = this.root;
    for (let i = 0; i < segs.length; i++) {
      node.children ??= new Map();
      const c = node.children.get(segs[i]);
      if (i === segs.length - 1) {
        if (c === undefined) node.children.set(segs[i], path);
        else if (typeof c === 'string') {
          if (c === path) return;
          node.children.set(segs[i], { paths: new Set([c, path]) });
        } else if (c.paths === undefined) c.paths = path;
        else if (typeof c.paths === 'string') {
          if (c.paths === path) return;
          c.paths = new Set([c.paths, path]);
        } else {
          if (c.paths.has(path)) return;
          c.paths.add(path);
        }
        this.count += 1;
        return;
      }
      let next: Node;
      if (c === undefined || typeof c === 'string') node.children.set(segs[i], (next = c === undefined ? {} : { paths: c }));
      else next = c;
      node = next;
    }
  }

  remove(path: string): void {
    const segs = segmentsOf(pathnameOf(path));
    const chain: Node[] = [this.root];
    for (let i = 0; i < segs.length - 1; i++) {
      const c = chain[chain.length - 1].children?.get(segs[i]);
      if (c === undefined || typeof c === 'string') return;
      chain.push(c);
    }
    const parent = chain[chain.length - 1];
    const last = segs[segs.length - 1];
    const c = parent.children?.get(last);
    if (c === undefined) return;
    if (typeof c === 'string') {
      if (c !== path) return;
      parent.children!.delete(last);
    } else {
      if (c.paths === path) c.paths = undefined;
      else if (typeof c.paths === 'object' && c.paths.delete(path)) {
        if (c.paths.size === 1) c.paths = c.paths.values().next().value;
      } else return;
      const kept = compact(c);
      if (kept === undefined) parent.children!.delete(last);
      else if (kept !== c) parent.children!.set(last, kept);
    }
    this.count -= 1;
    // Prune (or fold into a leaf string) the nodes this left empty, bottom up.
    for (let i = chain.length - 1; i > 0; i--) {
      const n = chain[i];
      if (n.children?.size === 0) n.children = undefined;
      const kept = compact(n);
      if (kept === n) break;
      const up = chain[i - 1].children!;
      if (kept === undefined) up.delete(segs[i - 1]);
      else up.set(segs[i - 1], kept);
    }
    if (this.root.children?.size === 0) this.root.children = undefined;
  }

  /** Contract 11.1: the watched paths whose path part is `pathname`, with any query or none. */
  withAnyQuery(pathname: string): Iterable<string> {
    const c = this.find(pathname);
    return c === undefined ? [] : pathsAt(c);
  }

  /**
   * Contract 11.2: the watched paths under `prefix`. `/projects/7` matches `/projects/7`, its
   * queries and everything below it (`/projects/7/tasks/3?y=2`), not `/projects/70`; a prefix
   * ending in `/` matches the paths that start with it; `/` matches every path. A prefix with
   * a query matches the paths on that path part whose text starts with it. `walked` is shared
   * by the prefixes of one bump: a subtree walked for one is skipped for the next, so nested
   * prefixes (`/`, `/a`, `/a/b`...) cost each node once, not once per prefix.
   */
  *prefix(prefix: string, walked: Set<object> = new Set()): Generator<string> {
    const q = prefix.indexOf('?');
    if (q !== -1) {
      const c = this.find(prefix.slice(0, q));
      if (c !== undefined) for (const p of pathsAt(c)) if (p.startsWith(prefix)) yield p;
      return;
    }
    if (prefix.endsWith('/')) {
      if (prefix === '/') {
        yield* this.subtree(this.root, walked);
        return;
      }
      const c = this.find(prefix.slice(0, -1));
      if (c !== undefined && typeof c !== 'string' && c.children) for (const child of c.children.values()) yield* this.subtree(child, walked);
      return;
    }
    const c = this.find(prefix);
    if (c !== undefined) yield* this.subtree(c, walked);
  }

  private *subtree(top: Child, walked: Set<object>): Generator<string> {
    const stack = [top];
    while (stack.length > 0) {
      const c = stack.pop()!;
      if (typeof c === 'string') {
        yield c;
        continue;
      }
      if (walked.has(c)) continue;
      walked.add(c);
      yield* pathsAt(c);
      if (c.children) for (const child of c.children.values()) stack.push(child);
    }
  }

  private find(pathname: string): Child | undefined {
    let c: Child | undefined = this.root;
    for (const seg of segmentsOf(pathname)) {
      if (typeof c === 'string') return undefined;
      c = c.children?.get(seg);
      if (c === undefined) return undefined;
    }
    return c;
  }
}

/** The (path, credentials) groups on one watched path: credentials key -> that group's watches. */
export type GroupsOnPath<W> = ReadonlyMap<string, Set<W>>;

/**
 * Every (path, credentials) group a bump reaches, each once: its paths (a path without a query
 * reaching every query, contract 11.1), prefixes (11.2) and tags (11.3). Costs what it matches
 * plus the bump's size: the indexes answer each entry without scanning all watches.
 */
export function* matchBump<W>(
  bump: Pick<Bump, 'paths' | 'prefixes' | 'tags'>,
  paths: PathIndex,
  tags: TagIndex,
  groupsOn: (path: string) => GroupsOnPath<W> | undefined,
): Generator<[path: string, credKey: string, watches: Set<W>]> {
  const donePaths = new Set<string>();
  function* onPath(path: string): Generator<[string, string, Set<W>]> {
    if (donePaths.has(path)) return;
    donePaths.add(path);
    const groups = groupsOn(path);
    if (groups) for (const [credKey, watches] of groups) yield [path, credKey, watches];
  }
  for (const p of bump.paths) {
    if (p.includes('?')) yield* onPath(p);
    else for (const q of [...paths.withAnyQuery(p)]) yield* onPath(q);
  }
  const walked = new Set<object>();
  for (const prefix of bump.prefixes ?? []) {
    for (const p of [...paths.prefix(prefix, walked)]) yield* onPath(p);
  }
  if (!bump.tags?.length) return;
  const doneGroups = new Set<string>();
  for (const tag of bump.tags) {
    for (const ref of [...tags.groups(tag)]) {
      if (donePaths.has(ref.path) || doneGroups.has(ref.key)) continue;
      doneGroups.add(ref.key);
      const watches = groupsOn(ref.path)?.get(ref.credKey);
      if (watches) yield [ref.path, ref.credKey, watches];
    }
  }
}
