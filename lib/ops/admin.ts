import { createServer, type RequestListener, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface AdminState {
  /** true while joined to the router and subscribed to Redis */
  ready(): boolean;
  /** Prometheus text exposition */
  metrics(): Promise<string> | string;
  /** `POST /bump` (lib/bump-endpoint.ts); absent, the path is 404 like any unknown one */
  bump?: RequestListener;
}

/** `/healthz` (alive), `/readyz` (joined and subscribed), `/metrics` and optionally `POST /bump` on the admin port. */
export class AdminServer {
  private server?: Server;
  private closing?: Promise<void>;

  constructor(private readonly host: string, private readonly port: number, private readonly state: AdminState) {}

  get address(): AddressInfo | undefined {
    return this.server?.address() as AddressInfo | undefined;
  }

  async start(): Promise<void> {
    if (this.server) return;
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (path === '/bump') {
        // off unless WAYMARK_BUMP_SECRET is set: then it does not exist, whatever the method
        if (this.state.bump) this.state.bump(req, res);
        else res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      } else if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
      } else if (path === '/healthz') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      } else if (path === '/readyz') {
        const ready = this.state.ready();
        res.writeHead(ready ? 200 : 503, { 'content-type': 'text/plain' }).end(ready ? 'ready\n' : 'not ready\n');
      } else if (path === '/metrics') {
        // Only a process started with --expose-gc (the benchmark) can ask for a collection first,
        // so heap figures measure live objects rather than garbage.
        const gc = (globalThis as { gc?: () => void }).gc;
        if (gc && /[?&]gc=1\b/.test(req.url ?? '')) gc();
        Promise.resolve(this.state.metrics()).then(
          (text) => res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(text),
          () => res.writeHead(500).end(),
        );
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      }
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, this.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  stop(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      if (!this.server?.listening) return resolve();
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
    return this.closing;
  }
}
