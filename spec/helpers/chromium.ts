import { accessSync, constants } from 'node:fs';

/**
 * Where the browser specs find Chromium (playwright-core downloads none of its own), in the
 * order people expect: an explicit setting first, then the usual install paths.
 *   WAYMARK_CHROMIUM   this project's setting
 *   CHROME_PATH        the name other tools (Lighthouse, Puppeteer setups, chrome-launcher) read
 *   then Debian/Ubuntu packages, Google Chrome, the snap, and the macOS app bundles.
 */
export const CHROMIUM_PATHS: readonly string[] = [
  '/usr/bin/chromium',
  '/usr/bin/chromium-browser',
  '/usr/bin/google-chrome',
  '/usr/bin/google-chrome-stable',
  '/snap/bin/chromium',
  '/Applications/Chromium.app/Contents/MacOS/Chromium',
  '/Applications/Google Chrome.app/Contents/MacOS/Google Chrome',
];

/**
 * Launch flags: without the background-networking ones Chromium keeps dialling Google's hosts,
 * which a closed network refuses; --no-sandbox because CI runs the specs as root.
 */
export const CHROMIUM_ARGS: readonly string[] = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

export const ENABLE_HINT = "install Chromium (Debian: apt-get install chromium) or set WAYMARK_CHROMIUM=/path/to/chrome";

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The Chromium executable to drive, or undefined when there is none. A setting that names a
 * file that is not there is a mistake, not an absence: it throws, naming the setting.
 */
export function findChromium(env: NodeJS.ProcessEnv = process.env, paths: readonly string[] = CHROMIUM_PATHS): string | undefined {
  for (const name of ['WAYMARK_CHROMIUM', 'CHROME_PATH']) {
    const set = env[name]?.trim();
    if (!set) continue;
    if (!executable(set)) throw new Error(`${name}=${set} is not an executable file: fix it, or unset it to search the usual install paths`);
    return set;
  }
  return paths.find(executable);
}

/** True in CI (`CI=true`, as GitHub Actions, GitLab and most others set it): a missing browser fails there. */
export function inCi(env: NodeJS.ProcessEnv = process.env): boolean {
  return /^(1|true|yes)$/i.test(env.CI?.trim() ?? '');
}

/**
 * For a browser spec's `before`: the Chromium to use. Without one, outside CI, it prints one
 * line saying how to enable the spec and skips the describe; in CI it fails.
 */
export function chromiumOrSkip(
  ctx: Pick<Mocha.Context, 'skip'>, spec: string,
  env: NodeJS.ProcessEnv = process.env, paths: readonly string[] = CHROMIUM_PATHS, log: (line: string) => void = console.log,
): string {
  const found = findChromium(env, paths);
  if (found) return found;
  const message = `${spec}: no Chromium found (tried WAYMARK_CHROMIUM, CHROME_PATH, the usual install paths); ${ENABLE_HINT}`;
  if (inCi(env)) throw new Error(`${message} (CI=true: the browser specs must run)`);
  log(`      skipped ${message}`);
  ctx.skip();
  return '';
}
