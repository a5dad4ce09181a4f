import { readFileSync } from 'node:fs';

// Read once at load: the User-Agent must name the version that is actually running.
const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

export const VERSION: string = pkg.version;
export const USER_AGENT = `waymark/${VERSION}`;
