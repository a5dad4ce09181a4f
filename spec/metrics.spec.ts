import { expect } from 'chai';
import { waitFor } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { freePort } from './helpers/spawn.js';
import { echoToken, Upstream } from './helpers/upstream.js';
import { ClientPool } from './helpers/wamp-client.js';
import { PROC_WATCH } from '../lib/protocol/uris.js';

/** Prometheus text -> { 'name{labels}': value } for the samples (comments dropped). */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

/**
 * Observability (contract section 8, issue 6 item 4): after real bumps through Redis, every
 * series an operator needs is present and moved: watches, sessions, bumps received, fetches by
 * status class, the fetch latency histogram, publishes, deduplicated / coalesced /
 * unchanged-skipped counts, queue depth, and the Redis and router connection state.
 */
describe('observability: /metrics after real bumps', function () {
  this.timeout(20_000);
  let api: Upstream;
  let wm: Harness;
  let metricsUrl: string;
  const pool = new ClientPool();
  let release: () => void = () => undefined;

  beforeEach(async function () {
    api = await new Upstream().start();
    // /slow/* waits for the spec to let it go, so a fetch can be held in flight
    const gate = new Promise<void>((resolve) => { release = resolve; });
    api.handler = (req, res) => {
      if (req.url === '/missing') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('no');
      } else if (req.url?.startsWith('/slow/')) {
        void gate.then(() => echoToken(req, res));
      } else {
        echoToken(req, res);
      }
    };
    const port = await freePort();
    // one fetch at a time, so a second group waits in the queue
    wm = await startWaymark(api.url, { WAYMARK_ADMIN_PORT: String(port), WAYMARK_FETCH_CONCURRENCY: '1' });
    metricsUrl = `http://127.0.0.1:${port}/metrics`;
  });
  afterEach(async function () {
    release();
    await pool.closeAll();
    await wm.close();
    await api.close();
  });

  const scrape = async () => samples(await (await fetch(metricsUrl)).text());

  it('every series an operator needs is there and non-zero', async function () {
    const alice = await pool.open();
    const alice2 = await pool.open();
    // two sessions with one token on one path: one fetch serves both (dedupe)
    await alice.call(PROC_WATCH, ['/users/1', { token: 'alice' }]);
    await alice2.call(PROC_WATCH, ['/users/1', { token: 'alice' }]);
    await alice.call(PROC_WATCH, ['/missing', { token: 'alice' }]);
    await alice.call(PROC_WATCH, ['/slow/1', { token: 'alice' }]);
    await alice.call(PROC_WATCH, ['/slow/2', { token: 'alice' }]);

    const before = await scrape();
    expect(before.get('waymark_router_connected')).to.equal(1);
    expect(before.get('waymark_redis_subscribed')).to.equal(1);
    expect(before.get('waymark_watches')).to.equal(5);
    expect(before.get('waymark_sessions')).to.equal(2);
    expect(before.get('waymark_bumps_received_total')).to.equal(0);
    // every status class is exported from the start, so rate() and alerts work before the first one
    for (const c of ['2xx', '3xx', '4xx', '5xx', 'error']) expect(before.get(`waymark_fetches_total{class="${c}"}`), c).to.equal(0);

    await wm.bump(JSON.stringify({ paths: ['/users/1', '/missing'] }));
    await alice2.waitForUpdates(1);
    await alice.waitForUpdates(2);
    // the same answer again: nothing new to push
    await wm.bump('/users/1');
    await waitFor('the unchanged result to be skipped', async () => ((await scrape()).get('waymark_unchanged_skipped_total') ?? 0) >= 2);

    // /slow/1 holds the only fetch slot; /slow/2 queues behind it; /slow/1 again coalesces
    await wm.bump('/slow/1');
    await waitFor('the /slow/1 fetch to be in flight', () => api.active > 0);
    await wm.bump('/slow/2');
    await wm.bump('/slow/1');
    const held = await waitFor('a queued fetch and a coalesced bump', async () => {
      const m = await scrape();
      return (m.get('waymark_queue_depth') ?? 0) >= 1 && (m.get('waymark_bumps_coalesced_total') ?? 0) >= 1 ? m : null;
    });
    release();
    await waitFor('both slow paths pushed', () => alice.updates.filter((u) => u.path.startsWith('/slow/')).length >= 2);

    const after = await scrape();
    const report = [...after].filter(([k]) => !/^waymark_(process|nodejs)_/.test(k) && !/_bucket\{/.test(k));
    console.log(`      ${report.map(([k, v]) => `${k} ${v}`).join('\n      ')}`);
    const nonZero: Array<[string, Map<string, number>]> = [
      ['waymark_watches', after],
      ['waymark_sessions', after],
      ['waymark_bumps_received_total', after],
      ['waymark_fetches_total{class="2xx"}', after],
      ['waymark_fetches_total{class="4xx"}', after],
      ['waymark_fetch_duration_seconds_count', after],
      ['waymark_fetch_duration_seconds_sum', after],
      ['waymark_publishes_total', after],
      ['waymark_fetches_deduplicated_total', after],
      ['waymark_bumps_coalesced_total', after],
      ['waymark_unchanged_skipped_total', after],
      ['waymark_queue_depth', held],
      ['waymark_redis_subscribed', after],
      ['waymark_router_connected', after],
    ];
    for (const [name, m] of nonZero) expect(m.get(name), name).to.be.a('number').and.be.above(0);
    expect(after.get('waymark_bumps_received_total')).to.equal(5);
    expect(after.get('waymark_fetches_deduplicated_total')).to.be.at.least(1);
    // drained again once the gate opened
    expect(after.get('waymark_queue_depth')).to.equal(0);
    // every bucket line is a waymark_ series too
    const text = await (await fetch(metricsUrl)).text();
    for (const line of text.split('\n')) if (line && !line.startsWith('#')) expect(line).to.match(/^waymark_/);
  });

  it('the connection gauges fall to 0 when the component stops', async function () {
    // scraped through the registry: the admin port closes with the component
    const m0 = samples(await wm.waymark.metrics.registry.metrics());
    expect(m0.get('waymark_router_connected')).to.equal(1);
    expect(m0.get('waymark_redis_subscribed')).to.equal(1);
    await wm.waymark.stop();
    // the router's close and Redis's arrive as events, just after stop() resolves
    await waitFor('both gauges at 0', async () => {
      const m = samples(await wm.waymark.metrics.registry.metrics());
      return m.get('waymark_router_connected') === 0 && m.get('waymark_redis_subscribed') === 0;
    }, 5_000);
  });
});
