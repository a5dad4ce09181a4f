import winston from 'winston';
import type { LogFormat } from '../protocol/config.js';

export type Logger = winston.Logger;

// Defence in depth: the code never passes credentials to the logger, and this format makes sure
// that a slip (a header object, an error message quoting a header) still prints nothing secret.
const SECRET_KEYS = /^(token|authorization|cookie|headers|ticket|password|secret|routerticket|bumpsecret)$/i;
const SECRET_TEXT = /(bearer|basic)\s+[^\s"',;]+/gi;
const MAX_STRING = 512;

function scrub(value: unknown, depth: number): unknown {
  if (typeof value === 'string') {
    const s = value.replace(SECRET_TEXT, '$1 [redacted]');
    return s.length > MAX_STRING ? `${s.slice(0, MAX_STRING)}...(${s.length} chars)` : s;
  }
  if (value === null || typeof value !== 'object' || depth > 4) return value;
  if (value instanceof Error) return scrub(value.message, depth);
  if (Array.isArray(value)) return value.map((v) => scrub(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = SECRET_KEYS.test(k) ? '[redacted]' : scrub(v, depth + 1);
  return out;
}

const redact = winston.format((info) => {
  for (const key of Object.keys(info)) {
    if (key === 'level' || key === 'timestamp') continue;
    info[key] = SECRET_KEYS.test(key) ? '[redacted]' : scrub(info[key], 0);
  }
  return info;
});

/** The URL with any password replaced, for printing and logging. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(invalid url)';
  }
}

export interface LoggerOptions {
  level?: string;
  format?: LogFormat;
  /** where log lines go; stderr by default so `waymark watch` keeps stdout for Updates */
  stream?: NodeJS.WritableStream;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const { level = 'info', format = 'json', stream = process.stderr } = opts;
  const shape = format === 'pretty'
    ? winston.format.printf(({ level: lvl, message, timestamp, module, ...rest }) => {
      const extra = Object.keys(rest).length ? ` ${JSON.stringify(rest)}` : '';
      return `${String(timestamp).slice(11, 23)} ${lvl.padEnd(5)} ${module ? `[${module}] ` : ''}${message}${extra}`;
    })
    : winston.format.json();
  return winston.createLogger({
    level,
    format: winston.format.combine(redact(), winston.format.timestamp(), shape),
    transports: [new winston.transports.Stream({ stream })],
  });
}

/** A logger that drops everything, for library use without a logger. */
export function silentLogger(): Logger {
  return winston.createLogger({ silent: true, transports: [new winston.transports.Console({ silent: true })] });
}
