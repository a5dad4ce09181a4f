import { Writable } from 'node:stream';
import { createWaymark, type Waymark } from '../../lib/wamp/component.js';
import { loadConfig } from '../../lib/protocol/config.js';
import { createLogger } from '../../lib/support/logger.js';
import { createRedis, redisMode } from '../../lib/support/redis.js';
import { componentEnv, randomChannel, testEnv } from './env.js';

export interface Harness {
  waymark: Waymark;
  channel: string;
  /** every log line the component wrote, at debug level */
  logs: string[];
  /** PUBLISH a raw message on this harness's bump channel */
  bump(message: string): Promise<number>;
  close(): Promise<void>;
}

/** A real component on the test router and Redis (or the Redis `env` names), with its own random bump channel. */
export async function startWaymark(apiUrl: string, env: Record<string, string> = {}): Promise<Harness> {
  const channel = randomChannel();
  const config = loadConfig({
    ...componentEnv(channel, apiUrl),
    WAYMARK_ADMIN_PORT: '0',
    WAYMARK_LOG_LEVEL: 'debug',
    ...env,
  });
  const logs: string[] = [];
  const stream = new Writable({ write(chunk, _enc, cb) { logs.push(String(chunk)); cb(); } });
  const waymark = createWaymark(config, { logger: createLogger({ level: 'debug', stream }) });
  await waymark.start();
  // The cluster or sentinel set the component uses; for one node, the test Redis itself, not the
  // fault proxy a spec may have put between it and the component.
  const pub = createRedis(redisMode(config) === 'single' ? { redisUrl: testEnv.redisUrl } : config, 'spec bumps', { lazyConnect: false });
  pub.on('error', () => undefined);
  return {
    waymark,
    channel,
    logs,
    bump: (message) => pub.publish(channel, message),
    async close() {
      await waymark.stop();
      await pub.quit();
    },
  };
}
