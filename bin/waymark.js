#!/usr/bin/env node
import { main } from '../dist/lib/cli.js';

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
  // Exit even if a library keeps a handle open; every resource was closed by then.
  setImmediate(() => process.exit(code));
});
