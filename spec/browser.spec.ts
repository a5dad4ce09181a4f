import { expect } from 'chai';
import { chmodSync, existsSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { randomChannel, testEnv } from './helpers/env.js';
import { cleanEnv, freePort, runCli, type Proc } from './helpers/spawn.js';
import { startDemoApi } from '../dev/demo-api.js';
import { CHROMIUM_ARGS, chromiumOrSkip, findChromium, inCi } from './helpers/chromium.js';

/**
 * The browser demo end to end, as a person uses it: `waymark dev` serves the page, two tabs of
 * headless Chromium sign in as alice and as bob, both watch /users/1, alice edits it through
 * the demo API, and each tab shows the profile as the API shows it to its own user. Then the
 * edit form: two tabs of alice editing at once, bob switching paths, a path the server refuses.
 * Chromium is found by spec/helpers/chromium.ts (WAYMARK_CHROMIUM, CHROME_PATH, install paths).
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BUNDLE = join(ROOT, 'dist/browser/waymark-client.js');
const GLOBAL_BUNDLE = join(ROOT, 'dist/browser/waymark-client.global.js');
const OUTPUT = join(ROOT, 'spec-output');
const ALICE_ONLY = 'alice@example.test';
const EDIT_DEADLINE_MS = 1_000;

interface DemoUpdate { status: number; path: string; bump: { id: string; at: number } | null; json?: Record<string, unknown>; receivedAt: number; editLatencyMs?: number }
interface DemoEdit { path: string; startedAt: number; answeredAt?: number; status: number; sent: Record<string, string> }
interface DemoState { updates: DemoUpdate[]; edits: DemoEdit[]; watchErrors: Array<{ path: string; error: string }>; ready: boolean }
type DemoWindow = Window & { waymarkDemo: DemoState };

const demoState = (page: Page): Promise<DemoState> => page.evaluate(() => (window as unknown as DemoWindow).waymarkDemo);
const text = (page: Page, testid: string): Promise<string> => page.getByTestId(testid).innerText();

describe('browser demo (headless Chromium)', function () {
  this.timeout(60_000);
  let dev: Proc | undefined;
  let context: BrowserContext | undefined;
  let profileDir: string | undefined;
  let demoUrl: string;
  let routerUrl: string;
  const problems: string[] = [];

  before(async function () {
    const executablePath = chromiumOrSkip(this, 'spec/browser.spec.ts');
    if (!existsSync(BUNDLE)) throw new Error(`${BUNDLE} is missing: run 'npm run build' (npm test builds it)`);
    routerUrl = `ws://127.0.0.1:${await freePort()}/ws`;
    dev = runCli(['dev', '--api-port', '0'], cleanEnv({
      WAYMARK_ROUTER_URL: routerUrl,
      WAYMARK_REDIS_URL: testEnv.redisUrl,
      WAYMARK_BUMP_CHANNEL: randomChannel(),
      WAYMARK_ADMIN_PORT: '0',
    }));
    [, demoUrl] = await dev.waitForOutput(/demo\s+(http:\/\/127\.0\.0\.1:\d+)\//, 'stdout', 20_000);
    profileDir = await mkdtemp(join(tmpdir(), 'waymark-chromium-'));
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath,
      headless: true,
      args: [...CHROMIUM_ARGS],
      viewport: { width: 720, height: 820 },
    });
  });

  after(async function () {
    await context?.close();
    if (profileDir) await rm(profileDir, { recursive: true, force: true });
    if (dev) {
      dev.kill('SIGTERM');
      await dev.exited;
    }
  });

  async function openTab(who: 'alice' | 'bob', path?: string): Promise<Page> {
    const page = await context!.newPage();
    page.on('pageerror', (err) => problems.push(`${who}: ${err.message}`));
    page.on('console', (msg) => {
      // Chromium logs every 4xx on the console; bob's refused edit below is one on purpose.
      if (msg.type() === 'error' && !(who === 'bob' && /status of 403/.test(msg.text()))) problems.push(`${who}: console: ${msg.text()}`);
    });
    // Watches the whole document from the first paint on, so "never" covers every moment, not
    // only the ones the spec happens to look at.
    await page.addInitScript((needle: string) => {
      const w = window as unknown as { __sawAliceOnly?: boolean };
      new MutationObserver(() => {
        if (document.body?.textContent?.includes(needle)) w.__sawAliceOnly = true;
      }).observe(document, { subtree: true, childList: true, characterData: true });
    }, ALICE_ONLY);
    await page.goto(`${demoUrl}/`);
    await page.getByTestId(`signin-${who}`).click();
    await page.waitForFunction(() => {
      const d = (window as unknown as DemoWindow).waymarkDemo;
      return d.ready && d.updates.length >= 1;
    }, undefined, { timeout: 10_000 });
    expect(await text(page, 'state')).to.equal('open');
    expect(await text(page, 'signed-in-as')).to.equal(who);
    if (path) {
      await page.getByTestId('path').fill(path);
      await page.getByTestId('watch-form').getByRole('button', { name: 'Watch' }).click();
      await page.waitForFunction((p) => (window as unknown as DemoWindow).waymarkDemo.updates.at(-1)?.path === p, path, { timeout: 5_000 });
    }
    return page;
  }

  it('waymark dev serves the page, the bundle and where the router is', async function () {
    const config = await fetch(`${demoUrl}/config.json`);
    expect(await config.json()).to.deep.equal({ routerUrl, realm: 'realm1' });
    const page = await fetch(`${demoUrl}/`);
    expect(page.headers.get('content-type')).to.match(/^text\/html/);
    expect(await page.text()).to.include("from '/waymark-client.js'").and.include('data-testid="signin-alice"');
    const bundle = await fetch(`${demoUrl}/waymark-client.js`);
    expect(bundle.headers.get('content-type')).to.match(/^text\/javascript/);
    expect(await bundle.text()).to.include('connectWaymark');
  });

  it('shows each tab its own user\'s data, live within one second of an edit', async function () {
    const alice = await openTab('alice');
    const bob = await openTab('bob');

    // The snapshot: the same path, seen by two users.
    expect(await text(alice, 'profile-viewer')).to.equal('alice');
    expect(await text(alice, 'profile-email')).to.equal(ALICE_ONLY);
    expect(await text(bob, 'profile-viewer')).to.equal('bob');
    expect(await text(bob, 'profile-email')).to.match(/hidden/);
    expect(await text(bob, 'profile-name')).to.equal(await text(alice, 'profile-name'));

    // Bob may not edit alice's profile: the API says 403 and nothing is bumped.
    await bob.getByTestId('edit-bio').fill('bob was here');
    await bob.getByTestId('edit-save').click();
    await bob.getByTestId('edit-status').filter({ hasText: '403' }).waitFor({ timeout: 5_000 });

    const times: Array<{ alice: number; bob: number; api: number }> = [];
    const latencies: string[] = [];
    for (let round = 1; round <= 3; round++) {
      const bio = `Edited in the browser, round ${round} (${Date.now()})`;
      const before = { alice: (await demoState(alice)).updates.length, bob: (await demoState(bob)).updates.length };
      await alice.getByTestId('edit-name').fill(`Alice ${round}`);
      await alice.getByTestId('edit-bio').fill(bio);
      await alice.getByTestId('edit-save').click();
      // A generous wait for the text to show; the one-second bound is checked on the page's clock below.
      for (const page of [alice, bob]) await page.getByTestId('profile-bio').filter({ hasText: bio }).waitFor({ timeout: 5_000 });

      const [a, b] = [await demoState(alice), await demoState(bob)];
      const edit = a.edits.at(-1)!;
      expect(edit.status).to.equal(200);
      expect(a.updates).to.have.length(before.alice + 1);
      expect(b.updates).to.have.length(before.bob + 1);
      const [ua, ub] = [a.updates.at(-1)!, b.updates.at(-1)!];
      expect(ua.json).to.deep.include({ name: `Alice ${round}`, bio, viewer: 'alice', email: ALICE_ONLY, version: round + 1 });
      expect(ub.json).to.deep.include({ name: `Alice ${round}`, bio, viewer: 'bob', version: round + 1 });
      expect(ua.bump?.id).to.be.a('string');
      expect(ub.bump?.id).to.equal(ua.bump?.id);
      expect(await text(alice, 'profile-email')).to.equal(ALICE_ONLY);
      expect(await text(bob, 'profile-email')).to.match(/hidden/);
      expect(edit.sent).to.deep.equal({ name: `Alice ${round}`, bio });
      // Both tabs share one browser's clock: edit start (click handler) -> Update rendered.
      times.push({ alice: ua.receivedAt - edit.startedAt, bob: ub.receivedAt - edit.startedAt, api: edit.answeredAt! - edit.startedAt });
      // Each tab, not only the editing one, prints how long after the edit (the API's updatedAt) it updated.
      for (const [page, u] of [[alice, ua], [bob, ub]] as const) {
        expect(u.editLatencyMs, 'editLatencyMs').to.be.a('number').and.at.least(0).and.below(EDIT_DEADLINE_MS);
        expect(await text(page, 'update-latency')).to.equal(`(shown ${u.editLatencyMs} ms after the edit)`);
      }
      latencies.push(`alice ${ua.editLatencyMs} ms, bob ${ub.editLatencyMs} ms`);
    }
    for (const [i, t] of times.entries()) {
      console.log(`      edit ${i + 1}: PUT answered after ${t.api} ms; update shown to alice after ${t.alice} ms, to bob after ${t.bob} ms; each page printed: ${latencies[i]}`);
    }
    for (const t of times) {
      expect(t.alice, 'alice: edit -> update shown (ms)').to.be.below(EDIT_DEADLINE_MS);
      expect(t.bob, 'bob: edit -> update shown (ms)').to.be.below(EDIT_DEADLINE_MS);
    }

    // Bob never saw alice-only data: not in any Update he was handed, not in his page at any moment.
    const b = await demoState(bob);
    expect(b.updates.length).to.equal(4);
    for (const u of b.updates) {
      expect(u.json).to.include({ viewer: 'bob' });
      expect(u.json).not.to.have.property('email');
    }
    expect(await bob.evaluate(() => !!(window as unknown as { __sawAliceOnly?: boolean }).__sawAliceOnly)).to.equal(false);
    expect(await bob.content()).not.to.include(ALICE_ONLY);
    // The observer works: alice's page did show it.
    expect(await alice.evaluate(() => !!(window as unknown as { __sawAliceOnly?: boolean }).__sawAliceOnly)).to.equal(true);

    await mkdir(OUTPUT, { recursive: true });
    const shots: string[] = [];
    for (const [who, page] of [['alice', alice], ['bob', bob]] as const) {
      const file = join(OUTPUT, `browser-demo-${who}.png`);
      shots.push((await page.screenshot({ path: file, fullPage: true })).toString('base64'));
      console.log(`      screenshot (${who}): ${file}`);
    }
    // Both tabs side by side in one picture, as a person would arrange them.
    const both = await context!.newPage();
    await both.setViewportSize({ width: 1460, height: 820 });
    await both.setContent(`<body style="margin:0;display:flex;gap:20px;background:#9aa3b0">${
      shots.map((b64) => `<img style="width:720px" src="data:image/png;base64,${b64}">`).join('')}</body>`);
    const file = join(OUTPUT, 'browser-demo.png');
    await both.screenshot({ path: file, fullPage: true });
    await both.close();
    console.log(`      screenshot (both tabs): ${file}`);
    expect(problems, 'page errors').to.deep.equal([]);
  });

  const inputValue = (page: Page, testid: string): Promise<string> => page.getByTestId(testid).inputValue();
  const untilInput = (page: Page, testid: string, value: string) => page.waitForFunction(
    ([id, v]) => (document.querySelector(`[data-testid="${id}"]`) as HTMLInputElement | HTMLTextAreaElement).value === v, [testid, value] as const, { timeout: 5_000 });
  const saveAndWait = async (page: Page, status: string) => {
    await page.getByTestId('edit-save').click();
    await page.getByTestId('edit-status').filter({ hasText: status }).waitFor({ timeout: 5_000 });
  };
  const apiView = async (path: string, token: string) => (await fetch(`${demoUrl}${path}`, { headers: { authorization: `Bearer ${token}` } })).json() as Promise<Record<string, unknown>>;

  it('two tabs of alice: tab A renames, tab B then edits only the bio; the name stays (only what was typed is sent)', async function () {
    const [a, b] = [await openTab('alice'), await openTab('alice')];
    const name = `Alice renamed ${Date.now()}`;
    await a.getByTestId('edit-name').fill(name);
    await saveAndWait(a, 'saved as version');
    // B's form was not touched: it follows the Update
    await untilInput(b, 'edit-name', name);
    const bio = `bio from tab B ${Date.now()}`;
    await b.getByTestId('edit-bio').fill(bio);
    await saveAndWait(b, 'saved as version');
    expect((await demoState(a)).edits.at(-1)!.sent).to.deep.equal({ name });
    expect((await demoState(b)).edits.at(-1)!.sent).to.deep.equal({ bio });
    for (const page of [a, b]) await page.getByTestId('profile-bio').filter({ hasText: bio }).waitFor({ timeout: 5_000 });
    for (const page of [a, b]) expect(await text(page, 'profile-name')).to.equal(name);
    expect(await apiView('/users/1', 'alice')).to.include({ name, bio });
    await Promise.all([a.close(), b.close()]);
    expect(problems, 'page errors').to.deep.equal([]);
  });

  it('a tab that started typing before another tab saved gets "the profile changed meanwhile" (If-Match, 412) and can reload', async function () {
    const [a, b] = [await openTab('alice'), await openTab('alice')];
    const typed = `typed in B ${Date.now()}`;
    await b.getByTestId('edit-bio').fill(typed); // B starts first, from the version both show
    const name = `Alice meanwhile ${Date.now()}`;
    await a.getByTestId('edit-name').fill(name);
    await saveAndWait(a, 'saved as version');
    // B's untouched name follows the Update; the bio B is typing is left alone
    await untilInput(b, 'edit-name', name);
    expect(await inputValue(b, 'edit-bio')).to.equal(typed);
    await saveAndWait(b, 'the profile changed meanwhile');
    expect((await demoState(b)).edits.at(-1)).to.deep.include({ status: 412, sent: { bio: typed } });
    expect(await b.getByTestId('edit-reload').isVisible()).to.equal(true);
    await b.getByTestId('edit-reload').click();
    expect(await inputValue(b, 'edit-bio')).to.equal(await text(b, 'profile-bio')).and.not.equal(typed);
    expect(await inputValue(b, 'edit-name')).to.equal(name);
    const stored = await apiView('/users/1', 'alice');
    expect(stored).to.include({ name });
    expect(stored.bio).not.to.equal(typed);
    await Promise.all([a.close(), b.close()]);
    // the 412 is the API's answer on purpose; Chromium logs it like any 4xx
    expect(problems.filter((p) => !/status of 412/.test(p)), 'page errors').to.deep.equal([]);
    problems.length = 0;
  });

  it('bob switching from /users/1 to /users/2: the form never shows alice\'s values, and saving edits only bob', async function () {
    const bob = await openTab('bob');
    await bob.bringToFront();
    const aliceName = await text(bob, 'profile-name');
    expect(await inputValue(bob, 'edit-name')).to.equal(aliceName);
    // record every value the name field is given from now on
    await bob.evaluate(() => {
      const w = window as unknown as { __names: string[] };
      w.__names = [];
      const input = document.querySelector('[data-testid="edit-name"]') as HTMLInputElement;
      const desc = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value')!;
      Object.defineProperty(input, 'value', {
        configurable: true,
        get() { return desc.get!.call(this); },
        set(v: string) { w.__names.push(String(v)); desc.set!.call(this, v); },
      });
    });
    const before = await text(bob, 'watch-id');
    await bob.getByTestId('path').fill('/users/2');
    await bob.getByTestId('watch-form').getByRole('button', { name: 'Watch' }).click();
    await bob.getByTestId('profile-name').filter({ hasText: 'Bob' }).waitFor({ timeout: 5_000 });
    expect(await text(bob, 'watch-id')).not.to.equal(before);
    const names = await bob.evaluate(() => (window as unknown as { __names: string[] }).__names);
    expect(names, 'values the name field was given').not.to.include(aliceName);
    expect(await inputValue(bob, 'edit-name')).to.equal('Bob');
    const bio = `bob's own bio ${Date.now()}`;
    await bob.getByTestId('edit-bio').fill(bio);
    await saveAndWait(bob, 'saved as version');
    expect((await demoState(bob)).edits.at(-1)).to.deep.include({ path: '/users/2', status: 200, sent: { bio } });
    expect(await apiView('/users/2', 'bob')).to.include({ name: 'Bob', bio });
    expect(await apiView('/users/1', 'alice')).to.include({ name: aliceName });
    await bob.close();
    expect(problems, 'page errors').to.deep.equal([]);
  });

  it('a path the server refuses (users/2) is shown as an error and the old watch keeps updating the card', async function () {
    const bob = await openTab('bob', '/users/2');
    const before = await text(bob, 'watch-id');
    await bob.getByTestId('path').fill('users/2');
    await bob.getByTestId('watch-form').getByRole('button', { name: 'Watch' }).click();
    const error = bob.getByTestId('watch-error');
    await error.waitFor({ state: 'visible', timeout: 5_000 });
    console.log(`      bad path shown as: ${await error.innerText()}`);
    expect(await error.innerText()).to.match(/^cannot watch "users\/2": waymark\.error\.invalid_path: .*; still watching \/users\/2$/);
    expect(await text(bob, 'watch-id')).to.equal(before);
    expect((await demoState(bob)).watchErrors).to.deep.equal([{ path: 'users/2', error: 'waymark.error.invalid_path' }]);
    const bio = `still live ${Date.now()}`;
    const edit = await fetch(`${demoUrl}/users/2`, { method: 'PUT', headers: { authorization: 'Bearer bob' }, body: JSON.stringify({ bio }) });
    expect(edit.status).to.equal(200);
    await bob.getByTestId('profile-bio').filter({ hasText: bio }).waitFor({ timeout: 5_000 });
    // a good path afterwards clears the error and moves the watch
    await bob.getByTestId('path').fill('/users/1');
    await bob.getByTestId('watch-form').getByRole('button', { name: 'Watch' }).click();
    // the card already shows "viewer bob" from /users/2: wait for the new watch itself
    await bob.waitForFunction((old) => (document.querySelector('[data-testid="watch-id"]')?.textContent ?? '').trim() !== old.trim(), before, { timeout: 5_000 });
    await bob.waitForFunction(() => (document.querySelector('[data-testid="watch-error"]') as HTMLElement).hidden, undefined, { timeout: 5_000 });
    expect(await text(bob, 'profile-viewer')).to.include('bob');
    await bob.close();
    expect(problems, 'page errors').to.deep.equal([]);
  });

  it('the classic-script bundle defines window.Waymark with the same client', async function () {
    const page = await context!.newPage();
    page.on('pageerror', (err) => problems.push(`global: ${err.message}`));
    await page.goto(`${demoUrl}/config.json`);
    await page.addScriptTag({ path: GLOBAL_BUNDLE });
    const seen = await page.evaluate(async () => {
      type Client = { state: string; watch(p: string, o: object, cb: (u: { json?: unknown }) => void): Promise<unknown>; close(): Promise<void> };
      const { Waymark } = window as unknown as { Waymark: { connectWaymark(o: { url: string; realm: string }): Promise<Client> } };
      const { routerUrl, realm } = await (await fetch('/config.json')).json();
      const wm = await Waymark.connectWaymark({ url: routerUrl, realm });
      const got: unknown[] = [];
      await wm.watch('/users/2', { token: 'bob', snapshot: true }, (u) => got.push(u.json));
      const state = wm.state;
      await wm.close();
      return { state, got, after: wm.state };
    });
    expect(seen.state).to.equal('open');
    expect(seen.got).to.have.length(1);
    expect(seen.got[0]).to.include({ viewer: 'bob', email: 'bob@example.test' });
    expect(seen.after).to.equal('closed');
    expect(problems, 'page errors').to.deep.equal([]);
    await page.close();
  });
});

describe('demo API without the page', function () {
  it('serves no page, bundle or config unless asked to', async function () {
    const api = await startDemoApi();
    try {
      for (const path of ['/', '/config.json', '/waymark-client.js']) {
        expect((await fetch(`${api.url}${path}`)).status, path).to.equal(404);
      }
      expect((await fetch(`${api.url}/users/1`, { headers: { authorization: 'Bearer bob' } })).status).to.equal(200);
    } finally {
      await api.close();
    }
  });
});

describe('finding Chromium (spec/helpers/chromium.ts)', function () {
  let dir: string;
  const fake = (name: string) => {
    const file = join(dir, name);
    writeFileSync(file, '#!/bin/sh\n');
    chmodSync(file, 0o755);
    return file;
  };
  before(async function () { dir = await mkdtemp(join(tmpdir(), 'waymark-chromium-find-')); });
  after(async function () { await rm(dir, { recursive: true, force: true }); });

  it('WAYMARK_CHROMIUM, then CHROME_PATH, then the install paths in order', function () {
    const [mine, chrome, first, second] = ['mine', 'chrome', 'first', 'second'].map(fake);
    const missing = join(dir, 'not-installed');
    expect(findChromium({ WAYMARK_CHROMIUM: mine, CHROME_PATH: chrome }, [first])).to.equal(mine);
    expect(findChromium({ CHROME_PATH: chrome }, [first])).to.equal(chrome);
    expect(findChromium({}, [missing, second, first])).to.equal(second);
    expect(findChromium({}, [missing])).to.equal(undefined);
    expect(() => findChromium({ WAYMARK_CHROMIUM: missing }, [first])).to.throw(/^WAYMARK_CHROMIUM=.*not-installed is not an executable file/);
  });

  it('none outside CI: skips with one line saying how to enable it; with CI=true it fails', function () {
    const lines: string[] = [];
    let skipped = false;
    const ctx = { skip: () => { skipped = true; throw new Error('skip'); } } as unknown as Mocha.Context;
    expect(() => chromiumOrSkip(ctx, 'spec/x.spec.ts', {}, [], (l) => lines.push(l))).to.throw('skip');
    expect(skipped).to.equal(true);
    expect(lines).to.have.length(1);
    expect(lines[0]).to.match(/skipped spec\/x\.spec\.ts: no Chromium found .*set WAYMARK_CHROMIUM=/);
    expect(() => chromiumOrSkip(ctx, 'spec/x.spec.ts', { CI: 'true' }, [], () => undefined)).to.throw(/CI=true: the browser specs must run/);
    expect(inCi({ CI: 'true' })).to.equal(true);
    expect(inCi({ CI: 'false' })).to.equal(false);
  });
});
