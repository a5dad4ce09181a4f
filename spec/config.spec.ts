import { expect } from 'chai';
import { ConfigError } from '../lib/protocol/errors.js';
import { DEFAULTS, loadBumpTarget, loadConfig } from '../lib/protocol/config.js';

function configError(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (err) {
    expect(err).to.be.instanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('config', function () {
  it('applies the contract defaults', function () {
    const c = loadConfig({ WAYMARK_API_URL: 'http://api:8000/v1/' });
    expect(c.apiUrl).to.equal('http://api:8000/v1');
    expect(c).to.include({
      routerUrl: 'ws://127.0.0.1:8080/ws', realm: 'realm1', redisUrl: 'redis://127.0.0.1:6379', bumpChannel: 'waymark:bumps',
      logLevel: 'info', adminPort: 8081, adminHost: '127.0.0.1', pushUnchanged: false, maxWatchesPerSession: 100,
      maxPathBytes: 2048, maxHeaderBytes: 8192, maxBodyBytes: 1048576, fetchTimeoutMs: 5000, fetchConcurrency: 64,
    });
    expect(c).to.include({ shutdownTimeoutMs: 10000, routerPingMs: 5000 });
    expect(c.routerAuthid).to.equal(undefined);
    expect(c.forwardHeaders).to.deep.equal(DEFAULTS.forwardHeaders);
    expect(c.responseHeaders).to.deep.equal(DEFAULTS.responseHeaders);
  });
  it('names WAYMARK_API_URL when it is missing', function () {
    const err = configError({});
    expect(err.setting).to.equal('WAYMARK_API_URL');
    expect(err.message).to.match(/^WAYMARK_API_URL: is required/);
  });
  const bad: Array<[string, Record<string, string>]> = [
    ['WAYMARK_API_URL', { WAYMARK_API_URL: 'ftp://x' }],
    ['WAYMARK_API_URL', { WAYMARK_API_URL: 'http://user:pw@x' }],
    ['WAYMARK_ROUTER_URL', { WAYMARK_ROUTER_URL: 'http://x/ws' }],
    ['WAYMARK_REDIS_URL', { WAYMARK_REDIS_URL: 'http://x' }],
    ['WAYMARK_ROUTER_TICKET', { WAYMARK_ROUTER_AUTHID: 'waymark' }],
    ['WAYMARK_LOG_LEVEL', { WAYMARK_LOG_LEVEL: 'loud' }],
    ['WAYMARK_ADMIN_PORT', { WAYMARK_ADMIN_PORT: '70000' }],
    ['WAYMARK_FETCH_TIMEOUT_MS', { WAYMARK_FETCH_TIMEOUT_MS: '5s' }],
    ['WAYMARK_FETCH_CONCURRENCY', { WAYMARK_FETCH_CONCURRENCY: '0' }],
    ['WAYMARK_PUSH_UNCHANGED', { WAYMARK_PUSH_UNCHANGED: 'maybe' }],
    ['WAYMARK_FORWARD_HEADERS', { WAYMARK_FORWARD_HEADERS: 'cookie,host' }],
    ['WAYMARK_FORWARD_HEADERS', { WAYMARK_FORWARD_HEADERS: 'bad header' }],
    ['WAYMARK_FORWARD_HEADERS', { WAYMARK_FORWARD_HEADERS: 'authorization,accept-encoding' }],
    ['WAYMARK_RESPONSE_HEADERS', { WAYMARK_RESPONSE_HEADERS: 'etag,set-cookie' }],
    ['WAYMARK_MAX_WATCHES_PER_SESSION', { WAYMARK_MAX_WATCHES_PER_SESSION: '-1' }],
    ['WAYMARK_ROUTER_PING_MS', { WAYMARK_ROUTER_PING_MS: '50' }],
    ['WAYMARK_REDIS_PROBE_MS', { WAYMARK_REDIS_PROBE_MS: 'often' }],
    ['WAYMARK_REDIS_RECONNECT_MAX_MS', { WAYMARK_REDIS_RECONNECT_MAX_MS: '0' }],
    ['WAYMARK_BUMP_STREAM_MAXLEN', { WAYMARK_BUMP_STREAM_MAXLEN: '0' }],
    ['WAYMARK_BUMP_STREAM_READER', { WAYMARK_BUMP_STREAM_READER: 'a b' }],
    ['WAYMARK_BREAKER_FAILURES', { WAYMARK_BREAKER_FAILURES: '-2' }],
    ['WAYMARK_BREAKER_COOLDOWN_MS', { WAYMARK_BREAKER_COOLDOWN_MS: '0' }],
  ];
  it('applies the reliability defaults: pub/sub, probes every 5 s, backoff capped at 5 s, breaker after 5 failures', function () {
    const c = loadConfig({ WAYMARK_API_URL: 'http://api' });
    expect(c).to.include({
      redisProbeMs: 5000, redisReconnectMaxMs: 5000, bumpStream: undefined, bumpStreamMaxLen: 100000, bumpStreamReader: 'default',
      breakerFailures: 5, breakerCooldownMs: 5000,
    });
    expect(loadConfig({ WAYMARK_API_URL: 'http://api', WAYMARK_BUMP_STREAM: 'bumps', WAYMARK_REDIS_PROBE_MS: '0' }))
      .to.include({ bumpStream: 'bumps', redisProbeMs: 0 });
  });
  for (const [setting, env] of bad) {
    it(`names ${setting} for ${JSON.stringify(env)}`, function () {
      const err = configError({ WAYMARK_API_URL: 'http://api:8000', ...env });
      expect(err.setting).to.equal(setting);
      expect(err.message.split('\n')).to.have.length(1);
    });
  }
  it('WAYMARK_BUMP_SECRET: unset turns POST /bump off; a weak one is named without being quoted', function () {
    expect(loadConfig({ WAYMARK_API_URL: 'http://api:8000' }).bumpSecret).to.equal(undefined);
    expect(loadConfig({ WAYMARK_API_URL: 'http://api:8000', WAYMARK_BUMP_SECRET: '' }).bumpSecret).to.equal(undefined);
    const secret = '0123456789abcdef0123';
    expect(loadConfig({ WAYMARK_API_URL: 'http://api:8000', WAYMARK_BUMP_SECRET: secret }).bumpSecret).to.equal(secret);
    for (const weak of ['short', 'has spaces in it, long enough', 'line\nbreak-0123456789']) {
      const err = configError({ WAYMARK_API_URL: 'http://api:8000', WAYMARK_BUMP_SECRET: weak });
      expect(err.setting).to.equal('WAYMARK_BUMP_SECRET');
      expect(err.message).not.to.include(weak);
    }
    const off = configError({ WAYMARK_API_URL: 'http://api:8000', WAYMARK_BUMP_SECRET: secret, WAYMARK_ADMIN_PORT: '0' });
    expect(off.setting).to.equal('WAYMARK_BUMP_SECRET');
    expect(off.message).to.include('WAYMARK_ADMIN_PORT is 0').and.not.include(secret);
  });
  describe('Redis Cluster and Sentinel (contract section 13)', function () {
    const api = { WAYMARK_API_URL: 'http://api:8000' };
    it('reads cluster seed nodes and sentinels with their master set name; the URL keeps the credentials', function () {
      const c = loadConfig({ ...api, WAYMARK_REDIS_URL: 'rediss://user:pw@ignored:1', WAYMARK_REDIS_CLUSTER_NODES: ' 10.0.0.1:7000, redis-b:7001,[::1]:7002 ' });
      expect(c.redisUrl).to.equal('rediss://user:pw@ignored:1');
      expect([c.redisSentinels, c.redisSentinelName]).to.deep.equal([undefined, undefined]);
      expect(c.redisClusterNodes).to.deep.equal(['10.0.0.1:7000', 'redis-b:7001', '[::1]:7002']);
      const s = loadConfig({ ...api, WAYMARK_REDIS_SENTINELS: 's1:26379,s2:26379', WAYMARK_REDIS_SENTINEL_NAME: 'mymaster' });
      expect([s.redisClusterNodes, s.redisSentinelName]).to.deep.equal([undefined, 'mymaster']);
      expect(s.redisSentinels).to.deep.equal(['s1:26379', 's2:26379']);
      const single = loadConfig(api);
      expect([single.redisClusterNodes, single.redisSentinels]).to.deep.equal([undefined, undefined]);
      // waymark bump and demo-api read the same settings
      expect(loadBumpTarget({ WAYMARK_REDIS_CLUSTER_NODES: '127.0.0.1:7000' }).redisClusterNodes).to.deep.equal(['127.0.0.1:7000']);
    });
    const wrong: Array<[string, Record<string, string>, RegExp]> = [
      ['WAYMARK_REDIS_SENTINELS', { WAYMARK_REDIS_CLUSTER_NODES: 'a:7000', WAYMARK_REDIS_SENTINELS: 's:26379', WAYMARK_REDIS_SENTINEL_NAME: 'm' }, /not both/],
      ['WAYMARK_REDIS_CLUSTER_NODES', { WAYMARK_REDIS_CLUSTER_NODES: 'a:7000,b' }, /host:port.*"b"/],
      ['WAYMARK_REDIS_CLUSTER_NODES', { WAYMARK_REDIS_CLUSTER_NODES: 'a:70000' }, /host:port/],
      ['WAYMARK_REDIS_CLUSTER_NODES', { WAYMARK_REDIS_CLUSTER_NODES: 'redis://a:7000' }, /host:port/],
      ['WAYMARK_REDIS_CLUSTER_NODES', { WAYMARK_REDIS_CLUSTER_NODES: 'a:7000,,b:7000' }, /host:port/],
      ['WAYMARK_REDIS_SENTINELS', { WAYMARK_REDIS_SENTINELS: 's 1:26379', WAYMARK_REDIS_SENTINEL_NAME: 'm' }, /host:port/],
      ['WAYMARK_REDIS_SENTINEL_NAME', { WAYMARK_REDIS_SENTINELS: 's:26379' }, /is required/],
      ['WAYMARK_REDIS_SENTINEL_NAME', { WAYMARK_REDIS_SENTINEL_NAME: 'mymaster' }, /only used with WAYMARK_REDIS_SENTINELS/],
      ['WAYMARK_REDIS_SENTINEL_NAME', { WAYMARK_REDIS_SENTINELS: 's:26379', WAYMARK_REDIS_SENTINEL_NAME: 'my master' }, /letters/],
      ['WAYMARK_REDIS_URL', { WAYMARK_REDIS_CLUSTER_NODES: 'a:7000', WAYMARK_REDIS_URL: 'redis://a:6379/3' }, /only database 0/],
      ['WAYMARK_REDIS_URL', { WAYMARK_REDIS_CLUSTER_NODES: 'a:7000', WAYMARK_REDIS_URL: 'http://a:6379' }, /redis:\/\//],
    ];
    for (const [setting, env, message] of wrong) {
      it(`names ${setting} for ${JSON.stringify(env)}, in serve and in bump`, function () {
        const err = configError({ ...api, ...env });
        expect(err.setting).to.equal(setting);
        expect(err.message).to.match(message).and.not.include('\n');
        expect(() => loadBumpTarget(env)).to.throw(ConfigError).with.property('setting', setting);
      });
    }
  });
  it('reports every problem in one line', function () {
    const err = configError({ WAYMARK_LOG_LEVEL: 'loud', WAYMARK_FETCH_CONCURRENCY: 'x' });
    expect(err.message).to.include('WAYMARK_API_URL').and.include('WAYMARK_LOG_LEVEL').and.include('WAYMARK_FETCH_CONCURRENCY');
    expect(err.message).not.to.include('\n');
  });
});
