import { ERROR_URIS, type ErrorCode } from './uris.js';

/**
 * An error a client caused. It carries the WAMP error URI of the contract so the RPC layer can
 * answer with exactly that URI and a readable message in args[0].
 */
export class WaymarkError extends Error {
  readonly code: ErrorCode;
  readonly uri: string;

  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.uri = ERROR_URIS[code];
    Object.setPrototypeOf(this, new.target.prototype);
  }
}

/** A bad setting. `setting` names the environment variable; the CLI prints one line and exits 2. */
export class ConfigError extends Error {
  readonly setting: string;

  constructor(setting: string, message: string) {
    super(`${setting}: ${message}`);
    this.name = 'ConfigError';
    this.setting = setting;
    Object.setPrototypeOf(this, ConfigError.prototype);
  }
}
