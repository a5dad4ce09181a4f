import { Redis } from 'ioredis';
import { testEnv } from './env.js';

// A rejection nobody handled is a bug in the code under test: fail loudly instead of logging.
process.on('unhandledRejection', (err) => { throw err; });

// autobahn reports every closed connection on console.warn; hundreds of those hide real output.
const warn = console.warn.bind(console);
console.warn = (...args: unknown[]) => {
  if (typeof args[0] === 'string' && /^connection closed|^auto-reconnect/i.test(args[0])) return;
  warn(...args);
};

let router: { close(): Promise<void> } | undefined;

export const mochaHooks = {
  async beforeAll(this: Mocha.Context) {
    this.timeout(30_000);
    const redis = new Redis(testEnv.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    redis.on('error', () => undefined);
    try {
      await redis.connect();
      await redis.ping();
    } catch (err) {
      throw new Error(`the specs need Redis at ${testEnv.redisUrl} (${(err as Error).message}); start it or set WAYMARK_TEST_REDIS_URL`);
    } finally {
      redis.disconnect();
    }
    if (process.env.WAYMARK_TEST_ROUTER_URL) {
      testEnv.routerUrl = process.env.WAYMARK_TEST_ROUTER_URL;
      return;
    }
    const { startDevRouter } = await import('../../dev/router.js');
    const r = await startDevRouter({ realm: testEnv.realm, backendTickets: { [testEnv.authid]: testEnv.ticket } });
    router = r;
    testEnv.routerUrl = r.url;
  },
  async afterAll() {
    await router?.close();
  },
};
