import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

/** One request as the raw server read it. */
export interface RawRequest {
  path: string;
  /** lower-case names; a repeated header keeps its last value */
  headers: Record<string, string>;
  /** 1-based number of the connection it came on, in accept order */
  connection: number;
  /** 1-based number of the request on that connection */
  nth: number;
}

export type RawHandler = (req: RawRequest, socket: Socket) => void;

/**
 * An HTTP/1.1 server on a bare `net` socket, for answers node:http will not send: resets at a
 * chosen moment, repeated or oversized headers, broken framing, hand-made bodies. GET only (a
 * request ends at its blank line). Each path maps to a handler that writes the raw answer.
 */
export class RawHttpServer {
  readonly requests: RawRequest[] = [];
  connections = 0;
  private server?: Server;
  private readonly sockets = new Set<Socket>();

  constructor(private readonly routes: Record<string, RawHandler>) {}

  get url(): string {
    return `http://127.0.0.1:${(this.server!.address() as AddressInfo).port}`;
  }

  async start(): Promise<this> {
    this.server = createServer((socket) => {
      const connection = ++this.connections;
      let nth = 0;
      let buffered = '';
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => undefined);
      socket.on('data', (d) => {
        buffered += d.toString('latin1');
        let end: number;
        while ((end = buffered.indexOf('\r\n\r\n')) >= 0) {
          const [line, ...fields] = buffered.slice(0, end).split('\r\n');
          buffered = buffered.slice(end + 4);
          const headers: Record<string, string> = {};
          for (const f of fields) {
            const colon = f.indexOf(':');
            headers[f.slice(0, colon).trim().toLowerCase()] = f.slice(colon + 1).trim();
          }
          const req: RawRequest = { path: line.split(' ')[1], headers, connection, nth: ++nth };
          this.requests.push(req);
          const route = this.routes[req.path.split('?')[0]];
          if (route) route(req, socket);
          else socket.write('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n');
        }
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    return this;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }
}

/** Write a whole answer: status line, the header lines in order (repeats allowed), Content-Length unless given, the body. */
export function respond(socket: Socket, status: number, headers: Array<[string, string]>, body: Buffer | string = ''): void {
  const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const lines = headers.map(([n, v]) => `${n}: ${v}\r\n`).join('');
  const length = headers.some(([n]) => /^(content-length|transfer-encoding)$/i.test(n)) ? '' : `content-length: ${bytes.length}\r\n`;
  socket.write(Buffer.concat([Buffer.from(`HTTP/1.1 ${status} X\r\n${lines}${length}\r\n`, 'latin1'), bytes]));
}
