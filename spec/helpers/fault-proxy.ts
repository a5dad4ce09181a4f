import net from 'node:net';

/**
 * A TCP proxy on loopback that fault specs put between Waymark and a dependency (Redis, the
 * router, the API). Modes apply to traffic from the moment they are set:
 * - `pass`: forward both ways;
 * - `delay`: forward both ways, each chunk `delayMs` late;
 * - `blackhole`: keep connections open but forward nothing (a peer that is up but silent);
 * - `refuse`: stop listening, so new connections are refused; existing ones are cut.
 * `cut()` destroys every open connection at once (a network reset) whatever the mode.
 */
export type FaultMode = 'pass' | 'delay' | 'blackhole' | 'refuse';

export class FaultProxy {
  private server?: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private mode: FaultMode = 'pass';
  private delayMs = 0;
  private _port = 0;
  /** Connections accepted since start, for specs to assert reconnects happened. */
  connections = 0;

  constructor(private readonly target: { host: string; port: number }) {}

  get port(): number {
    return this._port;
  }

  /** `redis://` or `ws://` URL of the proxy, keeping the target URL's scheme and path. */
  url(targetUrl: string): string {
    const u = new URL(targetUrl);
    u.hostname = '127.0.0.1';
    u.port = String(this._port);
    return u.toString();
  }

  async start(): Promise<this> {
    await this.listen(0);
    return this;
  }

  async set(mode: FaultMode, delayMs = 0): Promise<void> {
    const was = this.mode;
    this.mode = mode;
    this.delayMs = delayMs;
    if (mode === 'refuse' && was !== 'refuse') {
      this.cut();
      await new Promise<void>((resolve) => this.server!.close(() => resolve()));
      this.server = undefined;
    } else if (mode !== 'refuse' && was === 'refuse') {
      await this.listen(this._port);
    }
  }

  cut(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  async stop(): Promise<void> {
    this.cut();
    if (this.server) await new Promise<void>((resolve) => this.server!.close(() => resolve()));
    this.server = undefined;
  }

  private listen(port: number): Promise<void> {
    const server = net.createServer((client) => this.accept(client));
    this.server = server;
    return new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        this._port = (server.address() as net.AddressInfo).port;
        resolve();
      });
    });
  }

  private accept(client: net.Socket): void {
    this.connections++;
    const upstream = net.connect(this.target.port, this.target.host);
    this.sockets.add(client);
    this.sockets.add(upstream);
    const close = () => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    const pipe = (from: net.Socket, to: net.Socket) => {
      from.on('data', (chunk: Buffer) => {
        if (this.mode === 'blackhole') return;
        if (this.mode === 'delay' && this.delayMs > 0) {
          // Pause so chunks stay in order behind the delay.
          from.pause();
          setTimeout(() => {
            if (!to.destroyed) to.write(chunk);
            from.resume();
          }, this.delayMs);
        } else if (!to.destroyed) {
          to.write(chunk);
        }
      });
    };
    pipe(client, upstream);
    pipe(upstream, client);
  }
}
