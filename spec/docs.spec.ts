/**
 * The docs: README.md and docs/*.md. Every relative link must name an existing file and, with
 * `#anchor`, a heading of that file; every repository path quoted in code (`lib/...`,
 * `spec/...`) must exist, so a moved module or page breaks `npm test`, not a reader.
 * Anchors follow GitHub's heading slugs (github-slugger: lower-case, drop everything but
 * letters, digits, spaces, `-` and `_`, spaces to `-`, `-1`, `-2`... for repeats).
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';

// dist/spec/docs.spec.js -> repository root
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Prose lines of a Markdown text: fenced code blocks blanked, so links in examples are ignored. */
function proseLines(md: string): string[] {
  let fence = false;
  return md.split('\n').map((line) => {
    if (/^\s*(```|~~~)/.test(line)) { fence = !fence; return ''; }
    return fence ? '' : line;
  });
}

/** GitHub's anchor for a heading text (github-slugger), counting repeats in `seen`. */
export function slug(heading: string, seen: Map<string, number>): string {
  const text = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1') // a link in a heading counts by its text
    .replace(/`/g, '')
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\p{M} _-]/gu, '')
    .replace(/ /g, '-');
  const n = seen.get(text) ?? 0;
  seen.set(text, n + 1);
  return n === 0 ? text : `${text}-${n}`;
}

function anchorsOf(md: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const line of proseLines(md)) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (m) out.add(slug(m[1], seen));
  }
  return out;
}

/**
 * Broken relative links of one Markdown file (`file` is its path, for resolving; `read` gives
 * the text of another file). Returns one readable line per broken link.
 */
export function brokenLinks(file: string, md: string, read: (abs: string) => string | undefined): string[] {
  const broken: string[] = [];
  proseLines(md).forEach((line, i) => {
    const prose = line.replace(/`[^`]*`/g, '');
    for (const m of prose.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      const target = m[1];
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // http:, https:, mailto:
      const [path, anchor] = target.split('#', 2);
      const abs = path === '' ? file : resolve(dirname(file), decodeURIComponent(path));
      const where = `${relative(ROOT, file)}:${i + 1}: ${target}`;
      const text = read(abs);
      if (text === undefined) { broken.push(`${where}: no such file`); continue; }
      if (anchor !== undefined && abs.endsWith('.md') && !anchorsOf(text).has(anchor)) {
        broken.push(`${where}: no heading with anchor #${anchor}`);
      }
    }
  });
  return broken;
}

const readIfExists = (abs: string): string | undefined => {
  if (!existsSync(abs)) return undefined;
  return statSync(abs).isDirectory() ? '' : readFileSync(abs, 'utf8');
};

const DOCS = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

describe('docs: links and paths', function () {
  for (const rel of DOCS) {
    it(`${rel}: every relative link and #anchor resolves`, function () {
      const file = join(ROOT, rel);
      expect(brokenLinks(file, readFileSync(file, 'utf8'), readIfExists)).to.deep.equal([]);
    });
  }

  it('the README links to every docs/ page', function () {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const missing = DOCS.filter((d) => d !== 'README.md' && !readme.includes(`](${d})`));
    expect(missing).to.deep.equal([]);
  });

  it('every repository path quoted in code (lib/, spec/, dev/, scripts/, crossbar/, bin/) exists', function () {
    const missing: string[] = [];
    for (const rel of DOCS) {
      const md = readFileSync(join(ROOT, rel), 'utf8');
      for (const m of md.matchAll(/`((?:lib|spec|dev|scripts|crossbar|bin)\/[^`\s]*)`/g)) {
        const path = m[1];
        if (/[*{}<>]/.test(path)) continue; // a pattern, not a path
        if (!existsSync(join(ROOT, path))) missing.push(`${rel}: ${path}`);
      }
    }
    expect(missing).to.deep.equal([]);
  });

  it('the checker finds a missing file, a missing anchor and a missing same-page anchor (so the checks above can fail)', function () {
    const file = join(ROOT, 'docs', 'x.md');
    const pages: Record<string, string> = { [join(ROOT, 'docs', 'y.md')]: '# Y\n\n## Several instances\n\n## POST /bump\n\n## Watching (browser -> Waymark, WAMP RPC)\n' };
    const md = [
      '# X', '', '## Here', '',
      '[ok](y.md) [ok](y.md#several-instances) [ok](y.md#post-bump) [ok](#here)',
      '[ok](y.md#watching-browser---waymark-wamp-rpc) [ok](https://example.com/nope)',
      '`[ignored](nope.md)`', '```', '[ignored](nope.md)', '```',
      '[bad](z.md) [bad](y.md#several) [bad](#there)',
    ].join('\n');
    const broken = brokenLinks(file, md, (abs) => (abs === file ? md : pages[abs]));
    expect(broken).to.deep.equal([
      'docs/x.md:11: z.md: no such file',
      'docs/x.md:11: y.md#several: no heading with anchor #several',
      'docs/x.md:11: #there: no heading with anchor #there',
    ]);
  });

  it('anchors follow GitHub slugs, repeats numbered', function () {
    const seen = new Map<string, number>();
    expect(slug('The browser client (`waymark/client`)', seen)).to.equal('the-browser-client-waymarkclient');
    expect(slug('docker compose', seen)).to.equal('docker-compose');
    expect(slug('docker compose', seen)).to.equal('docker-compose-1');
  });
});
