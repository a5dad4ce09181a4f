import { randomUUID } from 'node:crypto';

/** Where the specs find their router and Redis; filled in by the root hooks. */
export const testEnv = {
  routerUrl: '',
  realm: process.env.WAYMARK_TEST_REALM || 'realm1',
  /** the backend (component) credentials on that router */
  authid: process.env.WAYMARK_TEST_ROUTER_AUTHID || 'waymark',
  ticket: process.env.WAYMARK_TEST_ROUTER_TICKET || process.env.WAYMARK_ROUTER_TICKET || `test-${randomUUID()}`,
  redisUrl: process.env.WAYMARK_TEST_REDIS_URL || 'redis://127.0.0.1:6379',
  /** true when the specs run against a router they did not start (e.g. a real Crossbar) */
  external: !!process.env.WAYMARK_TEST_ROUTER_URL,
};

export function randomChannel(): string {
  return `test-${randomUUID()}`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Poll until `check` returns a truthy value, or fail with `what` after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 5_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** The settings of a component on the test router and Redis, for loadConfig or a spawned `waymark serve`. */
export function componentEnv(channel: string, apiUrl: string): Record<string, string> {
  return {
    WAYMARK_ROUTER_URL: testEnv.routerUrl,
    WAYMARK_REALM: testEnv.realm,
    WAYMARK_ROUTER_AUTHID: testEnv.authid,
    WAYMARK_ROUTER_TICKET: testEnv.ticket,
    WAYMARK_REDIS_URL: testEnv.redisUrl,
    WAYMARK_BUMP_CHANNEL: channel,
    WAYMARK_API_URL: apiUrl,
  };
}
