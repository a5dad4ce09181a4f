import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/** The component's Prometheus series, one registry per instance (no global state). */
export class Metrics {
  readonly registry = new Registry();
  readonly bumpsReceived = new Counter({ name: 'waymark_bumps_received_total', help: 'Bumps received from Redis', registers: [this.registry] });
  readonly bumpsMalformed = new Counter({ name: 'waymark_bumps_malformed_total', help: 'Bump messages dropped as malformed', registers: [this.registry] });
  readonly bumpRequests = new Counter({
    name: 'waymark_bump_requests_total', help: 'POST /bump requests on the admin port by response status', labelNames: ['status'], registers: [this.registry],
  });
  readonly fetches = new Counter({
    name: 'waymark_fetches_total', help: 'Upstream fetches by status class', labelNames: ['class'], registers: [this.registry],
  });
  readonly publishes = new Counter({ name: 'waymark_publishes_total', help: 'Updates published', registers: [this.registry] });
  readonly publishesFailed = new Counter({ name: 'waymark_publishes_failed_total', help: 'Updates not published (router connection down or lost before the acknowledgement); refetched after the rejoin', registers: [this.registry] });
  /** read at scrape time; the component points it at its publisher */
  publishBacklog: () => { inFlight: number; waiting: number } = () => ({ inFlight: 0, waiting: 0 });
  readonly publishesInFlight = new Gauge({
    name: 'waymark_publishes_in_flight', help: 'Updates sent to the router and not yet acknowledged', registers: [this.registry],
    collect: () => { this.publishesInFlight.set(this.publishBacklog().inFlight); },
  });
  readonly publishesWaiting = new Gauge({
    name: 'waymark_publishes_waiting', help: 'Updates held back while the router connection\'s send buffer is over its high-water mark (2 MiB)', registers: [this.registry],
    collect: () => { this.publishesWaiting.set(this.publishBacklog().waiting); },
  });
  readonly unchangedSkipped = new Counter({ name: 'waymark_unchanged_skipped_total', help: 'Updates not published because nothing changed', registers: [this.registry] });
  readonly deduplicated = new Counter({ name: 'waymark_fetches_deduplicated_total', help: 'Watches served by a fetch made for another watch with the same path and credentials', registers: [this.registry] });
  readonly coalesced = new Counter({ name: 'waymark_bumps_coalesced_total', help: 'Bumps folded into a fetch already queued or in flight', registers: [this.registry] });
  readonly fetchSeconds = new Histogram({
    name: 'waymark_fetch_duration_seconds', help: 'Upstream fetch latency', registers: [this.registry],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  });
  readonly queueDepth = new Gauge({ name: 'waymark_queue_depth', help: 'Fetches waiting for a slot', registers: [this.registry] });
  readonly watches = new Gauge({ name: 'waymark_watches', help: 'Watches held by this instance', registers: [this.registry] });
  readonly sessions = new Gauge({ name: 'waymark_sessions', help: 'Sessions with at least one watch', registers: [this.registry] });
  readonly routerConnected = new Gauge({ name: 'waymark_router_connected', help: '1 while joined to the router', registers: [this.registry] });
  readonly routerJoins = new Counter({ name: 'waymark_router_joins_total', help: 'Sessions joined on the router, the first one included', registers: [this.registry] });
  readonly sessionsReconciled = new Counter({ name: 'waymark_sessions_reconciled_total', help: 'Sessions whose watches were dropped after a rejoin because they left while Waymark was disconnected', registers: [this.registry] });
  readonly redisConnected = new Gauge({ name: 'waymark_redis_subscribed', help: '1 while subscribed to the bump channel', registers: [this.registry] });
  readonly redisReconnects = new Counter({ name: 'waymark_redis_reconnects_total', help: 'Redis reconnect attempts', registers: [this.registry] });
  readonly resyncs = new Counter({ name: 'waymark_resyncs_total', help: 'Refetches of every watch because bumps may have been lost', labelNames: ['reason'], registers: [this.registry] });
  readonly breakerState = new Gauge({ name: 'waymark_api_breaker_state', help: 'API circuit breaker: 0 closed, 1 open, 2 half-open', labelNames: ['origin'], registers: [this.registry] });
  readonly breakerRejected = new Counter({ name: 'waymark_fetches_rejected_total', help: 'Fetches failed fast by an open circuit breaker', registers: [this.registry] });
  readonly watchesMoved = new Counter({ name: 'waymark_watches_moved_total', help: 'Watches this instance took over from another instance (each refetched once)', registers: [this.registry] });
  readonly peersLeft = new Counter({ name: 'waymark_peer_instances_left_total', help: 'Other instances seen leaving the router (clients told to re-watch)', registers: [this.registry] });
  readonly bumpForms = new Counter({
    name: 'waymark_bump_forms_total', help: 'Bumps received by what they name (a bump naming several counts once for each)', labelNames: ['form'], registers: [this.registry],
  });
  readonly bumpRootPrefix = new Counter({ name: 'waymark_bumps_root_prefix_total', help: 'Bumps with the prefix "/", which refetches every watch', registers: [this.registry] });
  readonly tagsDropped = new Counter({ name: 'waymark_tags_dropped_total', help: 'Response tags dropped: over WAYMARK_MAX_TAGS_PER_RESPONSE or malformed', registers: [this.registry] });
  readonly revalidations = new Counter({
    name: 'waymark_revalidations_total', help: 'Revalidation requests by result: not_modified (304), unchanged, changed (published), failed', labelNames: ['result'], registers: [this.registry],
  });
  readonly sharedFetches = new Counter({
    name: 'waymark_shared_fetches_total', help: 'Fetches made once for every watch of a public share (contract 12) by result: shared (served every member), not_modified (304), ended (not shareable: only the asking member got it, the others refetched on their own)', labelNames: ['result'], registers: [this.registry],
  });
  readonly revalidatingGroups = new Gauge({ name: 'waymark_revalidating_groups', help: 'Path and credential groups with a revalidation timer', registers: [this.registry] });
  readonly peers = new Gauge({ name: 'waymark_peer_instances', help: 'Other instances of this service known to be joined', registers: [this.registry] });

  constructor() {
    // Every status class exists from the start at 0, so rate() and alerts on e.g. 5xx work
    // before the first such fetch.
    for (const c of ['2xx', '3xx', '4xx', '5xx', 'error']) this.fetches.inc({ class: c }, 0);
    for (const f of ['path', 'prefix', 'tag']) this.bumpForms.inc({ form: f }, 0);
    for (const r of ['not_modified', 'unchanged', 'changed', 'failed']) this.revalidations.inc({ result: r }, 0);
    for (const r of ['shared', 'not_modified', 'ended']) this.sharedFetches.inc({ result: r }, 0);
    // process CPU, heap and event-loop lag, as waymark_process_* / waymark_nodejs_*
    collectDefaultMetrics({ register: this.registry, prefix: 'waymark_' });
  }

  static statusClass(status: number): string {
    return status === 0 ? 'error' : `${Math.floor(status / 100)}xx`;
  }
}
