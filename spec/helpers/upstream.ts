import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SeenRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
}

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/** The default API: JSON that names the bearer token, so each session's body is its own. */
export const echoToken: Handler = (req, res) => {
  const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
  if (!token) {
    res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"no token"}');
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json', 'set-cookie': 'sid=secret', etag: '"v1"', 'x-internal': 'nope' })
    .end(JSON.stringify({ path: req.url, token, version: upstreamVersion.value }));
};

/** Bumped by specs that need the API's answer to change. */
export const upstreamVersion = { value: 1 };

/** A real HTTP server on 127.0.0.1, port 0, that records every request. */
export class Upstream {
  readonly requests: SeenRequest[] = [];
  handler: Handler = echoToken;
  /** requests being answered right now, and the most seen at once */
  active = 0;
  maxActive = 0;
  private server?: Server;

  constructor(private readonly host = '127.0.0.1') {}

  get port(): number {
    return (this.server!.address() as AddressInfo).port;
  }

  get url(): string {
    return `http://${this.host}:${this.port}`;
  }

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      this.requests.push({ method: req.method ?? '', path: req.url ?? '', headers: req.headers });
      this.active += 1;
      this.maxActive = Math.max(this.maxActive, this.active);
      res.on('close', () => { this.active -= 1; });
      this.handler(req, res);
    });
    await new Promise<void>((resolve) => this.server!.listen(0, this.host, resolve));
    return this;
  }

  requestsFor(path: string): SeenRequest[] {
    return this.requests.filter((r) => r.path === path);
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    await new Promise<void>((resolve) => { s.close(() => resolve()); s.closeAllConnections(); });
  }
}
