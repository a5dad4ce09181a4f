#!/usr/bin/env node
// Builds the browser bundle of `waymark/client` (lib/client/client.ts with autobahn-js inside):
//   dist/browser/waymark-client.js         ES module: import { connectWaymark } from '.../waymark-client.js'
//   dist/browser/waymark-client.global.js  classic <script>: window.Waymark.connectWaymark
// `npm run build` and `npm test` run it; `waymark dev` serves the ES module to the demo page.
import { build } from 'esbuild';
import { mkdir, stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const outdir = `${root}dist/browser`;

// autobahn's package.json already maps `ws` and the rawsocket transport to nothing for browsers,
// and its WebSocket transport uses the browser's own WebSocket. What is left is Node-only or
// unused by Waymark, which speaks only wamp.2.json:
//   msgpack5, cbor  binary serializers (cbor alone pulls in Node streams and Buffer); stubs that
//                   throw if ever used, so autobahn still loads without warnings
//   crypto-js,      WAMP-CRA and WAMP-cryptosign authentication: browsers join Waymark's realm
//   tweetnacl       anonymously (role frontend), so these would be 90 KiB of dead weight; stubs
//                   that throw if an authentication method needing them is ever used
//   when            an optional promise library autobahn probes for; absent means native Promises
//   crypto          Node's module, probed by tweetnacl/crypto-js only when window.crypto is missing
const unused = (what) => `() => { throw new Error('waymark/client (browser bundle) does not include ${what}'); }`;
const STUBS = {
  msgpack5: `module.exports = function () {
    const no = () => { throw new Error('waymark/client (browser bundle) speaks wamp.2.json only: msgpack is not bundled'); };
    return { encode: no, decode: no };
  };`,
  cbor: `const no = () => { throw new Error('waymark/client (browser bundle) speaks wamp.2.json only: cbor is not bundled'); };
  module.exports = { encodeAsync: no, decodeFirstSync: no };`,
  'crypto-js': `const no = ${unused('WAMP-CRA authentication')};
  module.exports = { PBKDF2: no, HmacSHA256: no, algo: {}, enc: {} };`,
  tweetnacl: `const no = ${unused('WAMP-cryptosign authentication')};
  module.exports = { randomBytes: no, sign: { detached: no, keyPair: { fromSeed: no } } };`,
  when: `throw new Error('not bundled');`,
  crypto: `module.exports = {};`,
};

const stubs = {
  name: 'waymark-node-stubs',
  setup(b) {
    const filter = new RegExp(`^(${Object.keys(STUBS).join('|')})$`);
    b.onResolve({ filter }, (args) => ({ path: args.path, namespace: 'waymark-stub' }));
    b.onLoad({ filter: /.*/, namespace: 'waymark-stub' }, (args) => ({ contents: STUBS[args.path], loader: 'js' }));
  },
};

const common = {
  entryPoints: [`${root}lib/client/client.ts`],
  bundle: true,
  platform: 'browser',
  target: ['es2020'],
  // autobahn reads `global` (Node's name) to find WebSocket and its debug flag.
  define: { global: 'globalThis' },
  plugins: [stubs],
  sourcemap: true,
  minify: true,
  legalComments: 'linked',
  logLevel: 'warning',
};

await mkdir(outdir, { recursive: true });
await Promise.all([
  build({ ...common, format: 'esm', outfile: `${outdir}/waymark-client.js` }),
  build({ ...common, format: 'iife', globalName: 'Waymark', outfile: `${outdir}/waymark-client.global.js` }),
]);
for (const f of ['waymark-client.js', 'waymark-client.global.js']) {
  const { size } = await stat(`${outdir}/${f}`);
  console.log(`built dist/browser/${f} (${(size / 1024).toFixed(1)} KiB)`);
}
