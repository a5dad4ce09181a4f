// The dev router in a process of its own, so its CPU is measured apart from everything else.
import { startDevRouter } from '../dev/router.js';

const [authid, ticket, cost] = process.argv.slice(2);
// `cost`: CPU microseconds per delivered event (see DevRouterOptions.routeCostUs).
const router = await startDevRouter({ port: 0, backendTickets: { [authid]: ticket }, routeCostUs: Number(cost ?? 0) });
process.send!({ ready: true, url: router.url });
process.on('SIGTERM', () => { void router.close().then(() => process.exit(0)); });
