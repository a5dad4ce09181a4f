import { expect } from 'chai';
import type { Socket } from 'node:net';
import { brotliCompressSync, constants, createBrotliCompress, createGzip, deflateRawSync, deflateSync, gzipSync, type Gzip } from 'node:zlib';
import { DEFAULT_ACCEPT, isApiDownError, UndiciFetcher } from '../lib/engine/fetcher.js';
import { mimeInfo } from '../lib/engine/response-body.js';
import type { FetchResult, WatchResult } from '../lib/protocol/types.js';
import { PROC_WATCH } from '../lib/protocol/uris.js';
import { sleep } from './helpers/env.js';
import { startWaymark } from './helpers/harness.js';
import { RawHttpServer, respond, type RawRequest } from './helpers/raw-http.js';
import { ClientPool } from './helpers/wamp-client.js';

/**
 * Faults real HTTP APIs cause, at the fetch layer, on a raw `net` server (issue 10 faults 1, 2,
 * 3, 4; issue 16 faults 6, 7): content codings, charsets, repeated headers, the default Accept,
 * unparsable answers and a reset on a reused kept-alive connection.
 */
describe('faults: HTTP answers', function () {
  const json = '{"name":"Zoë","n":1}';
  const latin1 = Buffer.from([0x63, 0x61, 0x66, 0xc3, 0xa9]); // "café" in UTF-8, read as Latin-1
  const big = Array.from({ length: 30_000 }, (_, i) => `line ${i}`).join('\n'); // ~300 kB: decoded off the event loop
  const ALLOW = ['content-type', 'etag', 'last-modified', 'cache-control', 'vary', 'location', 'content-encoding', 'content-length'];

  /** 100 MiB of zeros through a compressor, written to the socket as it comes (chunked): the server never holds it. */
  function streamBomb(socket: Socket, coding: string, compressor: Gzip | ReturnType<typeof createBrotliCompress>): void {
    socket.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: ${coding}\r\ntransfer-encoding: chunked\r\n\r\n`);
    compressor.on('data', (c: Buffer) => socket.write(`${c.length.toString(16)}\r\n`) && socket.write(c) && socket.write('\r\n'));
    compressor.on('end', () => socket.write('0\r\n\r\n'));
    const zeros = Buffer.alloc(1 << 20);
    let left = 100;
    const pump = (): void => {
      while (left > 0) {
        left--;
        if (!compressor.write(zeros)) { compressor.once('drain', pump); return; }
      }
      compressor.end();
    };
    pump();
  }

  const ok = (body: Buffer | string, ...headers: Array<[string, string]>) => (_r: RawRequest, s: Socket) => respond(s, 200, headers, body);

  const server = new RawHttpServer({
    // content codings
    '/gzip': ok(gzipSync(json), ['content-type', 'application/json'], ['content-encoding', 'gzip']),
    '/x-gzip': ok(gzipSync(json), ['content-type', 'application/json'], ['content-encoding', 'x-gzip']),
    '/deflate-zlib': ok(deflateSync(json), ['content-type', 'application/json'], ['content-encoding', 'deflate']),
    '/deflate-raw': ok(deflateRawSync(json), ['content-type', 'application/json'], ['content-encoding', 'deflate']),
    '/br': ok(brotliCompressSync(json), ['content-type', 'application/json'], ['content-encoding', 'br']),
    '/gzip-then-br': ok(brotliCompressSync(gzipSync(json)), ['content-type', 'application/json'], ['content-encoding', 'gzip, br']),
    '/gzip-then-br-lines': ok(brotliCompressSync(gzipSync(json)), ['content-type', 'application/json'], ['Content-Encoding', 'GZIP'], ['Content-Encoding', 'br']),
    '/gzip-identity': ok(gzipSync(json), ['content-type', 'application/json'], ['content-encoding', 'identity, gzip']),
    '/gzip-latin1': ok(gzipSync(latin1), ['content-type', 'text/plain; charset=iso-8859-1'], ['content-encoding', 'gzip']),
    '/gzip-bomb': (_r, s) => streamBomb(s, 'gzip', createGzip()),
    '/br-bomb': (_r, s) => streamBomb(s, 'br', createBrotliCompress({ params: { [constants.BROTLI_PARAM_QUALITY]: 4 } })),
    '/gzip-300k': ok(gzipSync(big), ['content-type', 'text/plain'], ['content-encoding', 'gzip']),
    '/br-300k': ok(brotliCompressSync(big), ['content-type', 'text/plain'], ['content-encoding', 'br']),
    '/gzip-1000': ok(gzipSync('a'.repeat(1000)), ['content-type', 'text/plain'], ['content-encoding', 'gzip']),
    '/gzip-1001': ok(gzipSync('a'.repeat(1001)), ['content-type', 'text/plain'], ['content-encoding', 'gzip']),
    '/gzip-corrupt': ok(Buffer.from('this is not gzip at all'), ['content-type', 'application/json'], ['content-encoding', 'gzip']),
    '/gzip-truncated': ok(gzipSync(json).subarray(0, 12), ['content-type', 'application/json'], ['content-encoding', 'gzip']),
    // bytes after the last member (PHP's newline after ob_gzhandler output): browsers ignore them
    '/gzip-trailing-newline': ok(Buffer.concat([gzipSync(json), Buffer.from('\n')]), ['content-type', 'application/json'], ['content-encoding', 'gzip']),
    '/gzip-trailing-text': ok(Buffer.concat([gzipSync(json.slice(0, 5)), gzipSync(json.slice(5)), Buffer.from('\r\n<!-- 0.2 ms -->\r\n')]), ['content-type', 'application/json'], ['content-encoding', 'x-gzip']),
    // ...but a whole member is still checked: a bad CRC, or a second member that is broken
    '/gzip-bad-crc-trailing': ok(Buffer.concat([gzipSync(json).map((b, i, a) => (i === a.length - 8 ? b ^ 1 : b)), Buffer.from('\n')]), ['content-type', 'application/json'], ['content-encoding', 'gzip']),
    '/gzip-broken-second-member': ok(Buffer.concat([gzipSync(json), gzipSync(json).subarray(0, 14)]), ['content-type', 'application/json'], ['content-encoding', 'gzip']),
    '/br-corrupt': ok(Buffer.from('not brotli, not at all'), ['content-type', 'application/json'], ['content-encoding', 'br']),
    '/zstd': ok(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]), ['content-type', 'application/json'], ['content-encoding', 'zstd']),
    '/gzip-then-compress': ok(Buffer.from([0x1f, 0x9d, 9, 9]), ['content-type', 'application/json'], ['content-encoding', 'gzip, compress']),
    '/gzip-304': (_r, s) => respond(s, 304, [['etag', '"v1"'], ['content-encoding', 'gzip']]),
    '/gzip-401': (_r, s) => respond(s, 401, [['content-type', 'application/json'], ['content-encoding', 'gzip']], gzipSync('{"error":"unauthenticated"}')),
    // charsets
    '/latin1': ok(Buffer.from([0xc3, 0xa9]), ['content-type', 'text/plain; charset=iso-8859-1']),
    '/latin1-quoted': ok(Buffer.from([0xc3, 0xa9]), ['content-type', 'TEXT/Plain;Charset="ISO-8859-1"']),
    '/cp1252': ok(Buffer.from([0x80, 0x92, 0x9f]), ['content-type', 'text/plain; charset=windows-1252']),
    '/latin1-80': ok(Buffer.from([0x80, 0x20, 0xe9]), ['content-type', 'text/plain; charset=latin1']),
    '/utf16le-json': ok(Buffer.from(json, 'utf16le'), ['content-type', 'application/json; charset=utf-16le']),
    '/utf16-json-bom': ok(Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(json, 'utf16le')]), ['content-type', 'application/json']),
    '/utf16be-json-bom': ok(Buffer.concat([Buffer.from([0xfe, 0xff]), Buffer.from(json, 'utf16le').swap16()]), ['content-type', 'application/json; charset=utf-16']),
    '/utf8-bom-json': ok(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(json)]), ['content-type', 'application/json']),
    '/shift-jis': ok(Buffer.from([0x93, 0xfa, 0x96, 0x7b]), ['content-type', 'text/plain; charset=Shift_JIS']),
    '/unknown-charset': ok(Buffer.from([0xc3, 0xa9]), ['content-type', 'text/plain; charset=x-no-such-charset']),
    '/replacement-charset': ok(Buffer.from([0xc3, 0xa9]), ['content-type', 'text/plain; charset=iso-2022-kr']),
    '/utf8-invalid': ok(Buffer.from([0x61, 0xff, 0x62]), ['content-type', 'application/json; charset=utf-8']),
    '/binary-charset': ok(Buffer.from([0xc3, 0xa9]), ['content-type', 'application/octet-stream; charset=utf-8']),
    // repeated headers
    '/ct-twice': ok(json, ['Content-Type', 'application/json'], ['Content-Type', 'application/json']),
    '/ct-conflict': ok(json, ['content-type', 'text/html'], ['content-type', 'application/json']),
    '/ct-comma': ok(json, ['content-type', 'text/html, application/json']),
    '/ct-wildcard': ok(json, ['content-type', 'application/json'], ['content-type', '*/*']),
    '/ct-invalid-last': ok(json, ['content-type', 'application/json'], ['content-type', 'nonsense']),
    '/ct-charset-carry': ok(Buffer.from([0xc3, 0xa9]), ['content-type', 'text/plain; charset=iso-8859-1'], ['content-type', 'text/plain']),
    '/ct-charset-reset': ok(Buffer.from('é'), ['content-type', 'text/html; charset=iso-8859-1'], ['content-type', 'text/plain']),
    '/repeats': ok(json, ['content-type', 'application/json'], ['etag', '"a"'], ['etag', '"b"'], ['cache-control', 'no-cache'], ['cache-control', 'max-age=0'], ['vary', 'accept'], ['vary', 'authorization'], ['last-modified', 'Mon, 30 Nov 2026 10:00:00 GMT'], ['last-modified', 'Mon, 30 Nov 2026 11:00:00 GMT']),
    // what the request carries; an app that tells API clients from browsers by Accept
    '/echo': (r, s) => respond(s, 200, [['content-type', 'application/json']], JSON.stringify(r.headers)),
    '/laravel/me': (r, s) => laravelExpectsJson(r.headers.accept) ? respond(s, 401, [['content-type', 'application/json']], '{"message":"Unauthenticated."}') : respond(s, 302, [['location', '/login']]),
    '/rails/me': (r, s) => railsWantsJson(r.headers.accept) ? respond(s, 401, [['content-type', 'application/json']], '{"error":"You need to sign in"}') : respond(s, 302, [['location', '/users/sign_in']]),
    // unparsable answers
    '/huge-head': (_r, s) => s.write(`HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(70_000)}\r\ncontent-length: 2\r\n\r\n{}`),
    '/many-headers': (_r, s) => s.write(`HTTP/1.1 200 OK\r\n${Array.from({ length: 2000 }, (_, i) => `x-h${i}: ${i}\r\n`).join('')}content-length: 2\r\n\r\n{}`),
    '/bad-status': (_r, s) => s.write('HTTX/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}'),
    '/bad-header': (_r, s) => s.write('HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 2\r\n\r\n{}'),
    '/cl-conflict': (_r, s) => s.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc'),
    '/short-keepalive': (_r, s) => { s.write('HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcde'); setTimeout(() => s.end(), 20); },
    '/short-close': (_r, s) => { s.write('HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 10\r\n\r\nabcde'); setTimeout(() => s.end(), 20); },
    '/chunks-cut': (_r, s) => { s.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabcde\r\n'); setTimeout(() => s.end(), 20); },
    '/bad-chunk': (_r, s) => s.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n'),
  });

  /** Laravel Request::expectsJson() without X-Requested-With: wantsJson(), the first acceptable type (by q, Symfony AcceptHeader) contains /json or +json. */
  function laravelExpectsJson(accept: string | undefined): boolean {
    if (!accept) return false;
    const types = accept.split(',').map((t, i) => {
      const [type, ...params] = t.split(';').map((x) => x.trim());
      const q = params.find((p) => p.startsWith('q='));
      return { type, q: q ? Number(q.slice(2)) : 1, i };
    }).sort((a, b) => b.q - a.q || a.i - b.i);
    return /\/json|\+json/.test(types[0]?.type ?? '');
  }

  /** Rails MimeNegotiation#formats for a non-XHR request: an Accept that lists *\/* after or before a comma is a browser's (BROWSER_LIKE_ACCEPTS) and means HTML. */
  function railsWantsJson(accept: string | undefined): boolean {
    if (!accept || /,\s*\*\/\*|\*\/\*\s*,/.test(accept)) return false;
    return laravelExpectsJson(accept);
  }

  let fetcher: UndiciFetcher;
  let small: UndiciFetcher;
  const get = (f: UndiciFetcher, path: string, headers: Record<string, string> = {}): Promise<FetchResult> => f.fetch({ path, headers, reason: 'spec' });

  before(async function () {
    await server.start();
    fetcher = new UndiciFetcher({ apiUrl: server.url, responseHeaders: ALLOW, maxBodyBytes: 1 << 20, timeoutMs: 5000, connections: 4 });
    small = new UndiciFetcher({ apiUrl: server.url, responseHeaders: ALLOW, maxBodyBytes: 1000, timeoutMs: 2000, connections: 1 });
  });
  after(async function () {
    await fetcher.close();
    await small.close();
    await server.stop();
  });

  describe('content codings (issue 10 fault 2)', function () {
    it('asks for gzip, deflate and br', async function () {
      const r = await get(fetcher, '/echo');
      expect(JSON.parse(r.body)['accept-encoding']).to.equal('gzip, deflate, br');
    });

    for (const path of ['/gzip', '/x-gzip', '/deflate-zlib', '/deflate-raw', '/br', '/gzip-then-br', '/gzip-then-br-lines', '/gzip-identity', '/gzip-trailing-newline', '/gzip-trailing-text']) {
      it(`decodes ${path.slice(1)} to the JSON text, without content-encoding or content-length`, async function () {
        const r = await get(fetcher, path);
        expect(r).to.deep.include({ status: 200, body: json, encoding: 'utf8' });
        expect(r.error).to.equal(undefined);
        expect(r.headers).to.deep.equal({ 'content-type': 'application/json' });
      });
    }

    it('decodes first, then reads the declared charset', async function () {
      const r = await get(fetcher, '/gzip-latin1');
      expect(r).to.deep.include({ body: 'cafÃ©', encoding: 'utf8' });
    });

    it('keeps the status of a compressed error answer (a gzipped 401 is still read)', async function () {
      const r = await get(fetcher, '/gzip-401');
      expect(r).to.deep.include({ status: 401, body: '{"error":"unauthenticated"}', encoding: 'utf8' });
    });

    for (const [path, coding] of [['/gzip-bomb', 'gzip'], ['/br-bomb', 'br']]) {
      it(`a ${coding} bomb (100 MiB of zeros) is too_large on its decoded size, in bounded memory`, async function () {
        this.timeout(15_000);
        let peak = 0;
        const base = process.memoryUsage().arrayBuffers;
        const sample = setInterval(() => { peak = Math.max(peak, process.memoryUsage().arrayBuffers - base); }, 2);
        const t0 = Date.now();
        const r = await get(fetcher, path);
        clearInterval(sample);
        peak = Math.max(peak, process.memoryUsage().arrayBuffers - base);
        console.log(`      ${coding}-bomb: decoded_size=100MiB limit=${1 << 20} result=${r.error?.code} took_ms=${Date.now() - t0} peak_array_buffers_mb=${(peak / 2 ** 20).toFixed(1)}`);
        expect(r).to.deep.include({ status: 200, body: '' });
        expect(r.error?.code).to.equal('too_large');
        expect(peak, 'memory held while decoding').to.be.below(40 * 2 ** 20);
      });
    }

    for (const path of ['/gzip-300k', '/br-300k']) {
      it(`decodes a body larger than what is decoded inline (${path.slice(1)})`, async function () {
        const r = await get(fetcher, path);
        expect(r).to.deep.include({ status: 200, encoding: 'utf8' });
        expect(r.body).to.equal(big);
      });
    }

    it('holds the limit exactly on the decoded size: 1000 bytes pass, 1001 are too_large', async function () {
      const a = await get(small, '/gzip-1000');
      expect(a).to.deep.include({ status: 200, body: 'a'.repeat(1000), encoding: 'utf8' });
      const b = await get(small, '/gzip-1001');
      expect(b).to.deep.include({ status: 200, body: '' });
      expect(b.error?.code).to.equal('too_large');
    });

    for (const path of ['/gzip-corrupt', '/gzip-truncated', '/br-corrupt', '/gzip-bad-crc-trailing', '/gzip-broken-second-member']) {
      it(`${path.slice(1)}: invalid_response with the upstream status, no body, no crash`, async function () {
        const r = await get(fetcher, path);
        expect(r).to.deep.include({ status: 200, body: '' });
        expect(r.error?.code).to.equal('invalid_response');
        expect(r.headers['content-type']).to.equal('application/json');
        expect(isApiDownError(r.error?.code)).to.equal(false);
      });
    }

    for (const [path, coding] of [['/zstd', 'zstd'], ['/gzip-then-compress', 'gzip, compress']]) {
      it(`a coding Waymark cannot undo (${coding}): the bytes as base64 and the content-encoding that names it`, async function () {
        const r = await get(fetcher, path);
        expect(r).to.deep.include({ status: 200, encoding: 'base64' });
        expect(r.headers['content-encoding']).to.equal(coding);
        expect(r.error).to.equal(undefined);
      });
    }

    it('an empty body with a content-encoding (a 304) stays empty', async function () {
      const r = await get(fetcher, '/gzip-304');
      expect(r).to.deep.include({ status: 304, body: '' });
      expect(r.error).to.equal(undefined);
    });
  });

  describe('charsets (issue 10 fault 3)', function () {
    const cases: Array<[string, string]> = [
      ['/latin1', 'Ã©'],
      ['/latin1-quoted', 'Ã©'],
      ['/latin1-80', '€ é'], // iso-8859-1 and latin1 are windows-1252 by the WHATWG Encoding standard
      ['/cp1252', '€’Ÿ'],
      ['/utf16le-json', json],
      ['/utf16-json-bom', json],
      ['/utf16be-json-bom', json], // the BOM wins over the declared charset
      ['/utf8-bom-json', json],
      ['/shift-jis', '日本'],
      ['/ct-charset-carry', 'Ã©'],
      ['/ct-charset-reset', 'é'],
    ];
    for (const [path, text] of cases) {
      it(`${path.slice(1)}: ${JSON.stringify(text)}`, async function () {
        const r = await get(fetcher, path);
        expect(r).to.deep.include({ status: 200, body: text, encoding: 'utf8' });
      });
    }

    for (const path of ['/unknown-charset', '/replacement-charset', '/utf8-invalid', '/binary-charset']) {
      it(`${path.slice(1)}: the raw bytes as base64, never read as UTF-8`, async function () {
        const r = await get(fetcher, path);
        expect(r.encoding).to.equal('base64');
        expect(r.body).to.equal((path === '/utf8-invalid' ? Buffer.from([0x61, 0xff, 0x62]) : Buffer.from([0xc3, 0xa9])).toString('base64'));
      });
    }
  });

  describe('repeated headers (issue 16 fault 6)', function () {
    for (const path of ['/ct-twice', '/ct-conflict', '/ct-comma', '/ct-wildcard', '/ct-invalid-last']) {
      it(`${path.slice(1)}: JSON text, content-type application/json (Fetch "extract a MIME type")`, async function () {
        const r = await get(fetcher, path);
        expect(r).to.deep.include({ status: 200, body: json, encoding: 'utf8' });
        expect(r.headers['content-type']).to.equal('application/json');
      });
    }

    // The Fetch standard's own examples for "extract a MIME type" (header lines as undici gives them).
    const examples: Array<[string | string[], string, string | undefined]> = [
      ['text/plain;charset=gbk, text/html', 'text/html', 'utf-8'],
      ['text/html;charset=gbk;a=b, text/html;x=y', 'text/html;x=y; charset=gbk', 'gbk'],
      [['text/html;charset=gbk;a=b', 'text/html;x=y'], 'text/html;x=y; charset=gbk', 'gbk'],
      [['text/html;charset=gbk', 'x/x', 'text/html;x=y'], 'text/html;x=y', 'utf-8'],
      [['text/html', 'cannot-parse'], 'text/html', 'utf-8'],
      [['text/html', '*/*'], 'text/html', 'utf-8'],
      [['text/html', ''], 'text/html', 'utf-8'],
      [['application/json', 'application/json'], 'application/json', 'utf-8'],
      [['image/png', 'text/plain; charset="Shift_JIS"'], 'text/plain; charset="Shift_JIS"', 'shift_jis'],
      [['text/plain', 'image/png'], 'image/png', undefined],
    ];
    for (const [value, header, decoder] of examples) {
      it(`extracts ${JSON.stringify(value)} as ${header}`, function () {
        const info = mimeInfo(value);
        expect(info.header).to.equal(header);
        expect(info.decoder?.encoding).to.equal(decoder);
      });
    }

    it('a charset carried over from an earlier Content-Type of the same type is pushed with it', async function () {
      const r = await get(fetcher, '/ct-charset-carry');
      expect(r.headers['content-type']).to.equal('text/plain; charset=iso-8859-1');
    });

    it('singletons keep their last line (etag, last-modified, and the validators); lists are joined with ", "', async function () {
      const r = await get(fetcher, '/repeats');
      expect(r.headers).to.deep.include({ etag: '"b"', 'last-modified': 'Mon, 30 Nov 2026 11:00:00 GMT', 'cache-control': 'no-cache, max-age=0', vary: 'accept, authorization' });
      expect(r.validators).to.deep.equal({ etag: '"b"', lastModified: 'Mon, 30 Nov 2026 11:00:00 GMT' });
    });
  });

  describe('Accept (issue 16 fault 7)', function () {
    it(`sends Accept: ${DEFAULT_ACCEPT} when the watch forwards none`, async function () {
      expect(JSON.parse((await get(fetcher, '/echo')).body).accept).to.equal('application/json');
    });

    for (const app of ['laravel', 'rails']) {
      it(`a ${app}-style app answers an unauthenticated fetch 401, not a 302 to its login page`, async function () {
        const r = await get(fetcher, `/${app}/me`, { authorization: 'Bearer expired' });
        expect(r.status).to.equal(401);
      });
    }

    it('a forwarded accept replaces the default (and an HTML accept gets the login redirect)', async function () {
      expect(JSON.parse((await get(fetcher, '/echo', { accept: 'text/csv' })).body).accept).to.equal('text/csv');
      const r = await get(fetcher, '/laravel/me', { accept: 'text/html' });
      expect(r.status).to.equal(302);
      expect(r.headers.location).to.equal('/login');
    });
  });

  describe('unparsable answers (issue 10 fault 4)', function () {
    for (const path of ['/huge-head', '/many-headers', '/bad-status', '/bad-header', '/cl-conflict']) {
      it(`${path.slice(1)}: status 0, invalid_response (not unreachable), and not "API down"`, async function () {
        const r = await get(fetcher, path);
        expect(r.status).to.equal(0);
        expect(r.error?.code).to.equal('invalid_response');
        expect(isApiDownError(r.error?.code)).to.equal(false);
      });
    }

    it('bad chunked framing: the upstream status, invalid_response', async function () {
      const r = await get(fetcher, '/bad-chunk');
      expect(r).to.deep.include({ status: 200, body: '' });
      expect(r.error?.code).to.equal('invalid_response');
    });

    for (const path of ['/short-keepalive', '/short-close', '/chunks-cut']) {
      it(`${path.slice(1)}: a body cut short by the connection closing is no answer: status 0, unreachable`, async function () {
        const r = await get(fetcher, path);
        expect(r).to.deep.include({ status: 0, body: '' });
        expect(r.error?.code).to.equal('unreachable');
      });
    }

    it('the fetcher keeps serving after each of them', async function () {
      const rs = await Promise.all(Array.from({ length: 6 }, () => get(fetcher, '/ct-twice')));
      for (const r of rs) expect(r).to.deep.include({ status: 200, body: json });
    });

    it('isApiDownError: timeout and unreachable are the API down; too_large and invalid_response are answers', function () {
      expect([undefined, 'timeout', 'unreachable', 'too_large', 'invalid_response'].map((c) => isApiDownError(c as never))).to.deep.equal([false, true, true, false, false]);
    });
  });
});

/** A reset on a reused kept-alive connection (issue 10 fault 1, the fetcher's half). */
describe('faults: a kept-alive connection closed under a request', function () {
  type Script = (req: RawRequest, socket: Socket) => void;
  const answer: Script = (_r, s) => respond(s, 200, [['content-type', 'application/json']], '{"ok":true}');
  const reset: Script = (_r, s) => s.resetAndDestroy();
  const fin: Script = (_r, s) => s.end();

  /** A server that plays `script(connection, nth)` and a one-connection fetcher, so the second request reuses the first one's socket. */
  async function rig(script: (req: RawRequest) => Script) {
    const server = await new RawHttpServer({ '/r': (req, s) => script(req)(req, s) }).start();
    const fetcher = new UndiciFetcher({ apiUrl: server.url, responseHeaders: ['content-type'], maxBodyBytes: 1000, timeoutMs: 2000, connections: 1 });
    const get = () => fetcher.fetch({ path: '/r', headers: {}, reason: 'spec' });
    return { server, get, stop: async () => { await fetcher.close(); await server.stop(); } };
  }

  for (const [name, kill] of [['reset (RST)', reset], ['closed (FIN)', fin]] as const) {
    it(`the second request on a kept-alive connection is ${name} before any byte: resent at once, once, on a new connection`, async function () {
      const t = await rig((req) => (req.connection === 1 && req.nth === 2 ? kill : answer));
      try {
        expect((await t.get()).status).to.equal(200);
        const t0 = Date.now();
        const r = await t.get();
        expect(r).to.deep.include({ status: 200, body: '{"ok":true}' });
        expect(r.error).to.equal(undefined);
        expect(Date.now() - t0, 'at once').to.be.below(1000);
        expect(t.server.requests.map((q) => `${q.connection}.${q.nth}`)).to.deep.equal(['1.1', '1.2', '2.1']);
      } finally {
        await t.stop();
      }
    });
  }

  it('every pooled connection reset at once (the API restarted): each request is resent and answered', async function () {
    const server = await new RawHttpServer({ '/r': (req, s) => (req.connection <= 4 && req.nth === 2 ? s.resetAndDestroy() : answer(req, s)) }).start();
    const fetcher = new UndiciFetcher({ apiUrl: server.url, responseHeaders: [], maxBodyBytes: 1000, timeoutMs: 2000, connections: 4 });
    const get = () => fetcher.fetch({ path: '/r', headers: {}, reason: 'spec' });
    try {
      for (const r of await Promise.all([get(), get(), get(), get()])) expect(r.status).to.equal(200);
      expect(server.connections).to.equal(4);
      const rs = await Promise.all(Array.from({ length: 8 }, get));
      expect(rs.map((r) => r.status)).to.deep.equal(Array(8).fill(200));
      expect(server.requests.filter((q) => q.connection <= 4 && q.nth === 2).length, 'requests reset').to.equal(4);
    } finally {
      await fetcher.close();
      await server.stop();
    }
  });

  it('a connection the server closed while idle is not used (undici checks before writing): no resend needed', async function () {
    const t = await rig((req) => (req.connection === 1 ? (r, s) => { answer(r, s); setTimeout(() => s.end(), 20); } : answer));
    try {
      expect((await t.get()).status).to.equal(200);
      await sleep(100);
      expect((await t.get()).status).to.equal(200);
      expect(t.server.requests.map((q) => `${q.connection}.${q.nth}`)).to.deep.equal(['1.1', '2.1']);
    } finally {
      await t.stop();
    }
  });

  it('a reset on a new connection is not resent: unreachable, one connection', async function () {
    const t = await rig(() => reset);
    try {
      const r = await t.get();
      expect(r.status).to.equal(0);
      expect(r.error?.code).to.equal('unreachable');
      expect(isApiDownError(r.error?.code)).to.equal(true);
      expect(t.server.requests.length).to.equal(1);
    } finally {
      await t.stop();
    }
  });

  it('a resend that fails too is not resent again: unreachable after exactly two tries', async function () {
    const t = await rig((req) => (req.connection === 1 && req.nth === 1 ? answer : reset));
    try {
      expect((await t.get()).status).to.equal(200);
      const r = await t.get();
      expect(r.error?.code).to.equal('unreachable');
      expect(t.server.requests.map((q) => `${q.connection}.${q.nth}`)).to.deep.equal(['1.1', '1.2', '2.1']);
      // and the pool still works afterwards
      t.server.requests.length = 0;
    } finally {
      await t.stop();
    }
  });

  it('a request that times out is not resent', async function () {
    const t = await rig((req) => (req.nth === 2 ? () => undefined : answer));
    try {
      expect((await t.get()).status).to.equal(200);
      const r = await t.get();
      expect(r.error?.code).to.equal('timeout');
      expect(t.server.requests.length).to.equal(2);
    } finally {
      await t.stop();
    }
  });
});

/** The same faults through a real component, router and Redis: what a browser's Update holds. */
describe('faults: HTTP answers, end to end', function () {
  const json = '{"id":1,"name":"Zoë"}';
  const server = new RawHttpServer({
    '/gzip': (_r, s) => respond(s, 200, [['content-type', 'application/json'], ['content-encoding', 'gzip']], gzipSync(json)),
    '/latin1': (_r, s) => respond(s, 200, [['content-type', 'text/plain; charset=iso-8859-1']], Buffer.from([0xc3, 0xa9])),
    '/ct-twice': (_r, s) => respond(s, 200, [['content-type', 'application/json'], ['content-type', 'application/json']], json),
    // Laravel's auth middleware: 401 for a JSON client, a redirect to the login page for a browser
    '/n': (_r, s) => respond(s, 200, [['content-type', 'application/json']], String(Math.random())),
    '/me': (r, s) => ((r.headers.accept ?? '').includes('json') ? respond(s, 401, [['content-type', 'application/json']], '{"message":"Unauthenticated."}') : respond(s, 302, [['location', '/login']])),
  });
  const pool = new ClientPool();

  it('gzip, a declared charset and a repeated Content-Type arrive as text; a login check answers 401 and suspends the watch', async function () {
    await server.start();
    const wm = await startWaymark(server.url);
    try {
      const alice = await pool.open();
      const watch = (path: string) => alice.call<WatchResult>(PROC_WATCH, [path, { token: 'expired', snapshot: true }]);
      expect((await watch('/gzip')).snapshot).to.deep.include({ status: 200, body: json, encoding: 'utf8', headers: { 'content-type': 'application/json' } });
      expect((await watch('/latin1')).snapshot).to.deep.include({ status: 200, body: 'Ã©', encoding: 'utf8' });
      expect((await watch('/ct-twice')).snapshot).to.deep.include({ status: 200, body: json, encoding: 'utf8' });
      expect((await watch('/me')).snapshot).to.include({ status: 401 });
      const before = server.requests.filter((q) => q.path === '/me').length;
      for (let i = 0; i < 3; i++) await wm.bump('/me');
      await watch('/n');
      await wm.bump('/n'); // bumps arrive in order: once /n's Update is here, /me's bumps were handled
      await alice.waitForUpdates(1);
      await sleep(100);
      expect(server.requests.filter((q) => q.path === '/me').length, 'fetches with the dead token after 3 bumps').to.equal(before);
    } finally {
      await pool.closeAll();
      await wm.close();
      await server.stop();
    }
  });
});
