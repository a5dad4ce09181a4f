import * as zlib from 'node:zlib';
import {
  brotliDecompress, brotliDecompressSync, gunzip, gunzipSync, inflate, inflateRaw, inflateRawSync, inflateSync, type InputType, type ZlibOptions,
} from 'node:zlib';

/**
 * How an upstream response body becomes an Update's `body` and `encoding`: the Content-Type
 * (repeated or not) read as the Fetch standard reads it, the declared charset decoded with the
 * WHATWG decoders built into Node, and content codings (gzip, deflate, br) undone under the body
 * size limit. Kept apart from the fetcher so the HTTP client stays one thing.
 */

/** Codings Waymark can undo, in the form sent as `Accept-Encoding` (RFC 9110 12.5.3). */
export const ACCEPT_ENCODING = 'gzip, deflate, br';

// Essences that are text whatever their charset: every text/*, JSON and XML and their +json/+xml
// structured-syntax suffixes (RFC 6839), and the script and form types browsers read as text.
const TEXT_ESSENCE = /^(text\/|application\/(json|xml|javascript|ecmascript|x-www-form-urlencoded)\b|[^/]+\/[^;]*\+(json|xml)\b)/;

/** What one Content-Type value means for the body: the header pushed, and how to decode. */
export interface MimeInfo {
  /** the Content-Type value to push: the upstream value, or the one chosen among repeats */
  header: string;
  /** decoder for the body; undefined for a binary type, null for text in a charset Node lacks */
  decoder: TextDecoder | null | undefined;
}

const decoders = new Map<string, TextDecoder | null>();
const utf8 = decoderFor('utf-8')!;
const utf16le = decoderFor('utf-16le')!;
const utf16be = decoderFor('utf-16be')!;

/** A fatal TextDecoder for a WHATWG label (case and whitespace as the Encoding standard allows), or null when Node has none. */
function decoderFor(label: string): TextDecoder | null {
  let d = decoders.get(label);
  if (d === undefined) {
    try {
      d = new TextDecoder(label, { fatal: true });
    } catch {
      d = null; // unknown label, or one Node does not implement (replacement, x-user-defined)
    }
    if (decoders.size >= 64) decoders.clear();
    decoders.set(label, d);
  }
  return d;
}

interface ParsedMime {
  essence: string;
  charset?: string;
  raw: string;
}

const HTTP_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** WHATWG MIME Sniffing 4.4 "parse a MIME type", keeping only what Waymark reads (the charset). */
function parseMime(input: string): ParsedMime | undefined {
  const s = input.trim();
  const semi = s.indexOf(';');
  const head = (semi < 0 ? s : s.slice(0, semi)).trimEnd();
  const slash = head.indexOf('/');
  if (slash <= 0) return undefined;
  const type = head.slice(0, slash);
  const subtype = head.slice(slash + 1);
  if (!HTTP_TOKEN.test(type) || !HTTP_TOKEN.test(subtype)) return undefined;
  const mime: ParsedMime = { essence: head.toLowerCase(), raw: s };
  let i = semi < 0 ? s.length : semi;
  while (i < s.length) {
    i++; // past ';'
    while (s[i] === ' ' || s[i] === '\t') i++;
    let end = i;
    while (end < s.length && s[end] !== ';' && s[end] !== '=') end++;
    const name = s.slice(i, end).toLowerCase();
    i = end;
    if (i >= s.length) break;
    if (s[i] === ';') continue;
    i++; // past '='
    let value: string;
    if (s[i] === '"') {
      value = '';
      i++;
      while (i < s.length && s[i] !== '"') {
        if (s[i] === '\\' && i + 1 < s.length) i++;
        value += s[i++];
      }
      while (i < s.length && s[i] !== ';') i++;
    } else {
      end = s.indexOf(';', i);
      if (end < 0) end = s.length;
      value = s.slice(i, end).trimEnd();
      i = end;
      if (value === '') continue;
    }
    // the first charset parameter wins (WHATWG: a parameter already present is not replaced)
    if (name === 'charset' && mime.charset === undefined) mime.charset = value;
  }
  return mime;
}

/** Split a combined header value on commas outside quoted strings (Fetch "get, decode, and split"). */
function splitValues(value: string): string[] {
  const out: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '"') quoted = !quoted;
    else if (c === '\\' && quoted) i++;
    else if (c === ',' && !quoted) {
      out.push(value.slice(start, i));
      start = i + 1;
    }
  }
  out.push(value.slice(start));
  return out;
}

/**
 * Fetch standard, "extract a MIME type" (fetch.spec.whatwg.org): over every value of every
 * Content-Type line, the last one that parses and is not `*\/*` wins; a charset carries over from
 * an earlier value of the same essence. Identical repeats are therefore one value, and a
 * conflicting pair the last valid one, as in browsers.
 */
function extractMime(values: readonly string[]): { mime: ParsedMime; inheritedCharset?: string } | undefined {
  let mime: ParsedMime | undefined;
  let charset: string | undefined;
  let essence: string | undefined;
  let inherited: string | undefined;
  for (const line of values) {
    for (const value of splitValues(line)) {
      const m = parseMime(value);
      if (!m || m.essence === '*/*') continue;
      mime = m;
      inherited = undefined;
      if (m.essence !== essence) {
        charset = m.charset;
        essence = m.essence;
      } else if (m.charset === undefined && charset !== undefined) {
        inherited = charset;
        m.charset = charset;
      }
    }
  }
  return mime && { mime, inheritedCharset: inherited };
}

function infoFor(value: string | readonly string[]): MimeInfo {
  let mime: ParsedMime | undefined;
  let header: string;
  if (typeof value === 'string' && !value.includes(',')) {
    // one line without a comma (the usual case): parsed alone, pushed as it came
    mime = parseMime(value);
    header = value;
  } else {
    const extracted = extractMime(typeof value === 'string' ? [value] : value);
    mime = extracted?.mime;
    header = !extracted ? (typeof value === 'string' ? value : value.join(', '))
      : extracted.inheritedCharset === undefined ? extracted.mime.raw : `${extracted.mime.raw}; charset=${extracted.inheritedCharset}`;
  }
  // unparsable or not text: binary (the header still goes as received, so a client sees what came)
  if (!mime || !TEXT_ESSENCE.test(mime.essence)) return { header, decoder: undefined };
  // RFC 8259 8.1: JSON without a charset is UTF-8; text/* without one is read as UTF-8 too (the
  // ISO-8859-1 default of RFC 2616 is gone since RFC 7231 appendix B).
  return { header, decoder: mime.charset === undefined ? utf8 : decoderFor(mime.charset.trim().toLowerCase()) };
}

const mimes = new Map<string, MimeInfo>();

/** The memoised MimeInfo of a Content-Type as undici gives it (a string, or an array for repeated lines). */
export function mimeInfo(value: string | readonly string[]): MimeInfo {
  const key = typeof value === 'string' ? value : value.join('\n');
  let info = mimes.get(key);
  if (info === undefined) {
    info = infoFor(value);
    if (mimes.size >= 256) mimes.clear();
    mimes.set(key, info);
  }
  return info;
}

/**
 * The Update's body for these bytes: text as `utf8` when the type is text and the bytes decode
 * in its charset, else the bytes as `base64`.
 * - A byte order mark wins over the declared charset (WHATWG Encoding "decode": UTF-8, UTF-16LE,
 *   UTF-16BE) and is not part of the text.
 * - Decoding is fatal: bytes that are not valid in the charset (UTF-8 included) are never
 *   patched with U+FFFD; the body goes as base64 so every byte survives.
 * - A charset Node has no decoder for (an unknown label, `replacement`, `x-user-defined`) gives
 *   base64 too: the bytes are never reinterpreted as UTF-8.
 */
export function encodeBody(info: MimeInfo | undefined, bytes: Buffer): { body: string; encoding: 'utf8' | 'base64' } {
  let decoder = info?.decoder;
  if (decoder !== undefined && bytes.length >= 2) {
    const b0 = bytes[0];
    if (b0 === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) decoder = utf8;
    else if (b0 === 0xfe && bytes[1] === 0xff) decoder = utf16be;
    else if (b0 === 0xff && bytes[1] === 0xfe) decoder = utf16le;
  }
  if (decoder) {
    try {
      // Node 20's one-shot windows-1252 path (every iso-8859-1/latin1/ascii label) decodes as
      // ISO-8859-1, 0x80-0x9F included ("€" comes out as U+0080); its streaming path maps them
      // as the WHATWG index says. A single-byte decoder keeps no state, so the flush is empty.
      if (decoder.encoding === 'windows-1252') return { body: decoder.decode(bytes, { stream: true }) + decoder.decode(), encoding: 'utf8' };
      return { body: decoder.decode(bytes), encoding: 'utf8' };
    } catch {
      // not valid in its charset: base64 keeps every byte
    }
  }
  return { body: bytes.toString('base64'), encoding: 'base64' };
}

/** At most this many stacked codings are undone; more is no real server's doing. */
const MAX_CODINGS = 4;

/**
 * The codings of a Content-Encoding value in the order they were applied, without `identity`;
 * undefined when one is not one Waymark can undo (RFC 9110 8.4: `gzip`, `x-gzip`, `deflate`, `br`).
 */
export function parseCodings(value: string | readonly string[]): string[] | undefined {
  const codings: string[] = [];
  for (const line of typeof value === 'string' ? [value] : value) {
    for (const part of line.split(',')) {
      const c = part.trim().toLowerCase();
      if (c === '' || c === 'identity') continue;
      if (c !== 'gzip' && c !== 'x-gzip' && c !== 'deflate' && c !== 'br') return undefined;
      codings.push(c);
    }
  }
  return codings.length > MAX_CODINGS ? undefined : codings;
}

/** Thrown by decodeCodings: `tooLarge` when a decoded size passes the limit, else the data is corrupt. */
export class CodingError extends Error {
  constructor(readonly tooLarge: boolean, message: string) {
    super(message);
    this.name = 'CodingError';
  }
}

type Inflate = (buf: InputType, options: ZlibOptions, cb: (err: Error | null, out: Buffer) => void) => void;
type InflateSync = (buf: InputType, options: ZlibOptions) => Buffer;

/** RFC 1950 header check, as browsers tell zlib-wrapped "deflate" from the raw deflate some servers send. */
function isZlibWrapped(b: Buffer): boolean {
  return b.length >= 2 && (b[0] & 0x0f) === 8 && ((b[0] << 8) | b[1]) % 31 === 0;
}

/**
 * Output decoded on the event loop before handing over to zlib's thread pool. A typical API body
 * decodes in ~10 us synchronously against ~35 us of CPU for the thread-pool round trip; 256 KiB
 * bounds the time one decode can hold the loop (~0.15 ms).
 */
const SYNC_OUTPUT_BYTES = 256 * 1024;

function codingError(coding: string, err: Error, maxBytes: number): CodingError {
  const code = (err as { code?: string }).code;
  return code === 'ERR_BUFFER_TOO_LARGE'
    ? new CodingError(true, `the decoded body is over ${maxBytes} bytes`)
    : new CodingError(false, `the ${coding} body could not be decoded (${code ?? err.name})`);
}

function undo(coding: string, input: Buffer, maxBytes: number): Buffer | Promise<Buffer> {
  const wrapped = coding === 'deflate' && isZlibWrapped(input);
  const fnSync: InflateSync = coding === 'br' ? brotliDecompressSync : coding === 'deflate' ? (wrapped ? inflateSync : inflateRawSync) : gunzipSync;
  // maxOutputLength stops zlib as soon as its output passes the limit, so a decompression
  // bomb costs at most the limit plus one 16 KiB chunk of memory, never its decoded size.
  const syncLimit = Math.min(Math.max(1, maxBytes), SYNC_OUTPUT_BYTES);
  try {
    const out = fnSync(input, { maxOutputLength: syncLimit });
    if (out.length > maxBytes) throw new CodingError(true, `the decoded body is over ${maxBytes} bytes`);
    return out;
  } catch (err) {
    if (err instanceof CodingError) throw err;
    if ((err as { code?: string }).code !== 'ERR_BUFFER_TOO_LARGE' || syncLimit >= maxBytes) throw codingError(coding, err as Error, maxBytes);
  }
  const fn: Inflate = coding === 'br' ? brotliDecompress : coding === 'deflate' ? (wrapped ? inflate : inflateRaw) : gunzip;
  return new Promise((resolve, reject) => {
    fn(input, { maxOutputLength: maxBytes }, (err, out) => (err ? reject(codingError(coding, err, maxBytes)) : resolve(out)));
  });
}

/**
 * Undo `codings` (as parseCodings gives them, in the order applied) on a received body, last
 * applied first (RFC 9110 8.4). Every stage's output is held to `maxBytes`. An empty body stays
 * empty (a 304 or 204 may carry the header of the representation). Rejects with CodingError.
 */
export async function decodeCodings(bytes: Buffer, codings: readonly string[], maxBytes: number): Promise<Buffer> {
  let out = bytes;
  for (let i = codings.length - 1; i >= 0 && out.length > 0; i--) {
    const coding = codings[i];
    try {
      out = await undo(coding, out, maxBytes);
    } catch (err) {
      if (!(err instanceof CodingError) || err.tooLarge || coding === 'br' || coding === 'deflate') throw err;
      const members = gzipMembers(out, maxBytes);
      if (!members) throw err;
      out = members;
    }
  }
  return out;
}

/** zlib.crc32 is in Node from 20.15 / 22.2; without it a member is checked by its ISIZE alone. */
const crc32 = (zlib as { crc32?: (data: Buffer) => number }).crc32;

/**
 * The whole gzip members at the start of `input` (RFC 1952 2.2), each checked against its
 * footer (CRC32, ISIZE), with bytes after the last member that do not start another one ignored.
 * Some servers append bytes to a gzipped body (a PHP script's newline after `ob_gzhandler`
 * output); zlib's gunzip refuses them while browsers show the body (Chromium's
 * GzipSourceStream ignores extra bytes after the footer), and deflate and br already stop at
 * their stream's end. Undefined when the first member is not whole and valid, or when what
 * follows a member starts another one that is not.
 * @throws CodingError `tooLarge` when the decoded size passes `maxBytes`
 */
function gzipMembers(input: Buffer, maxBytes: number): Buffer | undefined {
  const out: Buffer[] = [];
  let size = 0;
  let at = 0;
  while (at < input.length) {
    // ID1 ID2 CM=8 (deflate) FLG MTIME(4) XFL OS, then the optional fields FLG names
    if (input[at] !== 0x1f || input[at + 1] !== 0x8b) break; // not another member: the extra bytes
    if (input.length - at < 18 || input[at + 2] !== 8) return undefined;
    const flg = input[at + 3];
    let p = at + 10;
    if (flg & 4) p = p + 2 <= input.length ? p + 2 + input.readUInt16LE(p) : input.length + 1; // FEXTRA
    if (flg & 8) p = p < input.length ? input.indexOf(0, p) + 1 || input.length + 1 : p; // FNAME
    if (flg & 16) p = p < input.length ? input.indexOf(0, p) + 1 || input.length + 1 : p; // FCOMMENT
    if (flg & 2) p += 2; // FHCRC
    if (p >= input.length) return undefined;
    let member: { buffer: Buffer; engine: { bytesWritten: number } };
    try {
      member = inflateRawSync(input.subarray(p), { info: true, maxOutputLength: Math.max(1, maxBytes - size) }) as unknown as typeof member;
    } catch (err) {
      if ((err as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') throw new CodingError(true, `the decoded body is over ${maxBytes} bytes`);
      return undefined;
    }
    const footer = p + member.engine.bytesWritten;
    if (footer + 8 > input.length) return undefined;
    const data = member.buffer;
    if (input.readUInt32LE(footer + 4) !== data.length % 2 ** 32) return undefined;
    if (crc32 && input.readUInt32LE(footer) !== crc32(data) >>> 0) return undefined;
    size += data.length;
    if (size > maxBytes) throw new CodingError(true, `the decoded body is over ${maxBytes} bytes`);
    out.push(data);
    at = footer + 8;
  }
  return out.length > 0 ? Buffer.concat(out) : undefined;
}
