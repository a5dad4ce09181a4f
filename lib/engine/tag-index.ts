/** One (path, credentials) group and the tags of its most recent response. */
export interface TaggedGroup {
  /** `<credKey>\0<path>`, the dispatcher's group key */
  readonly key: string;
  readonly path: string;
  readonly credKey: string;
  tags: readonly string[];
}

export function tagGroupKey(path: string, credKey: string): string {
  return `${credKey}\0${path}`;
}

/**
 * Tag -> the groups whose latest response carried it (contract 11.3). A bump naming a tag
 * costs the groups it reaches, not a scan of all watches; setting a group's tags costs its old
 * plus new tags (each group holds at most WAYMARK_MAX_TAGS_PER_RESPONSE). Tags are compared
 * as they are (case matters). Groups leave when their last watch goes (`forget`), so memory is
 * bounded by the groups held times the per-response cap.
 */
export class TagIndex {
  private readonly byTag = new Map<string, Set<TaggedGroup>>();
  private readonly byGroup = new Map<string, TaggedGroup>();

  /** groups carrying at least one tag */
  get groupCount(): number {
    return this.byGroup.size;
  }

  /** distinct tags held */
  get tagCount(): number {
    return this.byTag.size;
  }

  /** The tags of a group's latest response, [] when it had none or none is known. */
  tagsOf(path: string, credKey: string): readonly string[] {
    return this.byGroup.get(tagGroupKey(path, credKey))?.tags ?? [];
  }

  /** Replace a group's tags with those of its latest response ([] clears them). */
  set(path: string, credKey: string, tags: readonly string[]): void {
    const key = tagGroupKey(path, credKey);
    let g = this.byGroup.get(key);
    if (!g) {
      if (tags.length === 0) return;
      this.byGroup.set(key, (g = { key, path, credKey, tags: [] }));
    }
    const next = new Set(tags);
    for (const t of g.tags) if (!next.has(t)) this.unlink(t, g);
    for (const t of next) {
      let set = this.byTag.get(t);
      if (!set) this.byTag.set(t, (set = new Set()));
      set.add(g);
    }
    g.tags = [...next];
    if (g.tags.length === 0) this.byGroup.delete(key);
  }

  /** The group's last watch is gone. */
  forget(path: string, credKey: string): void {
    this.set(path, credKey, []);
  }

  groups(tag: string): Iterable<TaggedGroup> {
    return this.byTag.get(tag) ?? [];
  }

  private unlink(tag: string, g: TaggedGroup): void {
    const set = this.byTag.get(tag);
    if (!set) return;
    set.delete(g);
    if (set.size === 0) this.byTag.delete(tag);
  }
}
