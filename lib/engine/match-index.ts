import type { Bump } from '../protocol/types.js';
import type { TagIndex } from './tag-index.js';

/** One node per path segment; `paths` are the watched paths (with or without a query) whose path part ends here. */
interface Node {
  readonly segment: string;
  readonly parent: Node | undefined;
  readonly children: Map<string, Node>;
  readonly paths: Set<string>;
}

function newNode(segment: string, parent: Node | undefined): Node {
  return { segment, parent, children: new Map(), paths: new Set() };
}

/** `/a/b?x` -> ['a', 'b']; `/` -> ['']; `/a/` -> ['a', '']. */
function segmentsOf(pathname: string): string[] {
  return pathname.slice(1).split('/');
}

function pathnameOf(path: string): string {
  const q = path.indexOf('?');
  return q === -1 ? path : path.slice(0, q);
}

/**
 * The watched paths as a segment trie, for the bumps of contract 11.1 and 11.2 that name more
 * than one path: every query of a path (one node's set) and every path under a prefix (one
 * node's subtree). A lookup costs the prefix's segments plus what it matches, never a scan of
 * all watched paths. Nodes are pruned when their last path goes, so memory follows what is
 * watched. Matching is on the path as the watch gave it (no decoding, case-sensitive).
 */
export class PathIndex {
  private readonly root = newNode('', undefined);
  private count = 0;

  get size(): number {
    return this.count;
  }

  add(path: string): void {
    let node = this.root;
    for (const seg of segmentsOf(pathnameOf(path))) {
      let next = node.children.get(seg);
      if (!next) node.children.set(seg, (next = newNode(seg, node)));
      node = next;
    }
    if (!node.paths.has(path)) {
      node.paths.add(path);
      this.count += 1;
    }
  }

  remove(path: string): void {
    let node = this.find(pathnameOf(path));
    if (!node || !node.paths.delete(path)) return;
    this.count -= 1;
    while (node.parent && node.paths.size === 0 && node.children.size === 0) {
      node.parent.children.delete(node.segment);
      node = node.parent;
    }
  }

  /** Contract 11.1: the watched paths whose path part is `pathname`, with any query or none. */
  withAnyQuery(pathname: string): Iterable<string> {
    return this.find(pathname)?.paths ?? [];
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
      for (const p of this.find(prefix.slice(0, q))?.paths ?? []) if (p.startsWith(prefix)) yield p;
      return;
    }
    if (prefix.endsWith('/')) {
      if (prefix === '/') {
        yield* this.subtree(this.root, walked);
        return;
      }
      const node = this.find(prefix.slice(0, -1));
      if (node) for (const child of node.children.values()) yield* this.subtree(child, walked);
      return;
    }
    const node = this.find(prefix);
    if (node) yield* this.subtree(node, walked);
  }

  private *subtree(top: Node, walked: Set<object>): Generator<string> {
    const stack = [top];
    while (stack.length > 0) {
      const node = stack.pop()!;
      if (walked.has(node)) continue;
      walked.add(node);
      yield* node.paths;
      for (const child of node.children.values()) stack.push(child);
    }
  }

  private find(pathname: string): Node | undefined {
    let node: Node | undefined = this.root;
    for (const seg of segmentsOf(pathname)) {
      node = node.children.get(seg);
      if (!node) return undefined;
    }
    return node;
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
