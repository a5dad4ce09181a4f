import { expect } from 'chai';
import { WaymarkError } from '../lib/protocol/errors.js';
import { parseCredentials, parseWatchArgs, resolveApiUrl, validatePath } from '../lib/protocol/validation.js';
import { DEFAULTS } from '../lib/protocol/config.js';

const limits = { forwardHeaders: DEFAULTS.forwardHeaders, maxHeaderBytes: 8192, maxPathBytes: 2048 };

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    expect(err).to.be.instanceOf(WaymarkError);
    return (err as WaymarkError).code;
  }
}

describe('path grammar and resolution', function () {
  for (const ok of ['/users/1', '/posts?page=2', '/a/b/c?x=1&y=%20z', '/', '/caf%C3%A9', '/a.b/c..d/...', '/v?next=/a/../b']) {
    it(`accepts ${JSON.stringify(ok)}`, function () {
      expect(validatePath(ok, 2048)).to.equal(ok);
    });
  }
  const bad = [
    'users/1', 'http://evil.test/', '//evil.test', '/\\evil', '\\\\evil', '/\t/evil', '/a\nb', '/a\rb', '/a\0b', '/a b',
    '/..', '/a/..', '/a/./b', '/%2e%2e/x', '/%2E./x', '/.%2e/x', '/%252e%252e/x', '/a%2fb', '/a%2Fb', '/a%5cb', '/a%00b',
    '/a%0d%0ab', '/a%zz', '/a%2', '/a//b', '/a#frag', '/caf\u00e9', '/a\u2028b',
  ];
  for (const p of bad) {
    it(`rejects ${JSON.stringify(p)} as invalid_path`, function () {
      expect(codeOf(() => validatePath(p, 2048))).to.equal('invalid_path');
    });
  }
  it('rejects a path over the byte limit, accepts one at it', function () {
    expect(codeOf(() => validatePath(`/${'a'.repeat(2047)}`, 2048))).to.equal(undefined);
    expect(codeOf(() => validatePath(`/${'a'.repeat(2048)}`, 2048))).to.equal('invalid_path');
  });
  it('rejects a non-string as invalid_argument', function () {
    expect(codeOf(() => validatePath(undefined, 2048))).to.equal('invalid_argument');
    expect(codeOf(() => validatePath(['/a'], 2048))).to.equal('invalid_argument');
  });
  it('keeps the API base path as the prefix', function () {
    expect(resolveApiUrl('http://api.test:8000/v1', '/users/1?x=1')).to.equal('http://api.test:8000/v1/users/1?x=1');
    expect(resolveApiUrl('http://api.test', '/users/1')).to.equal('http://api.test/users/1');
    expect(codeOf(() => resolveApiUrl('http://api.test/v1', '/../admin'))).to.equal('invalid_path');
  });
});

describe('watch arguments', function () {
  it('turns a token into Authorization: Bearer and lower-cases header names', function () {
    const h = parseCredentials({ token: 'abc', headers: { 'Accept-Language': 'fr' } }, limits);
    expect(h).to.deep.equal({ authorization: 'Bearer abc', 'accept-language': 'fr' });
  });
  it('lets kwargs win over the positional options', function () {
    const r = parseWatchArgs(['/a', { token: 'positional', snapshot: true }], { token: 'kw' }, limits);
    expect(r).to.deep.equal({ path: '/a', headers: { authorization: 'Bearer kw' }, snapshot: true, revalidateMs: 0 });
  });
  it('accepts the path in kwargs', function () {
    expect(parseWatchArgs([], { path: '/k' }, limits).path).to.equal('/k');
  });
  it('counts forwarded header bytes against the limit', function () {
    const small = { ...limits, maxHeaderBytes: 100 };
    expect(codeOf(() => parseCredentials({ headers: { cookie: 'c'.repeat(90) } }, small))).to.equal(undefined);
    expect(codeOf(() => parseCredentials({ headers: { cookie: 'c'.repeat(91) } }, small))).to.equal('invalid_argument');
  });
  it('refuses accept-encoding: Waymark sets it and pushes bodies decoded', function () {
    const withIt = { ...limits, forwardHeaders: [...limits.forwardHeaders, 'accept-encoding'] };
    expect(codeOf(() => parseCredentials({ headers: { 'Accept-Encoding': 'zstd' } }, withIt))).to.equal('header_not_allowed');
  });
  it('rejects a header given twice in two cases', function () {
    expect(codeOf(() => parseCredentials({ headers: { accept: 'a', Accept: 'b' } }, limits))).to.equal('invalid_argument');
  });
});

describe('caller disclosure', function () {
  it('answers no_caller when the router did not disclose the caller', async function () {
    const { callerOf } = await import('../lib/protocol/validation.js');
    expect(codeOf(() => callerOf({}))).to.equal('no_caller');
    expect(codeOf(() => callerOf(undefined))).to.equal('no_caller');
    expect(codeOf(() => callerOf({ caller: '12' }))).to.equal('no_caller');
    expect(callerOf({ caller: 12 })).to.equal(12);
  });
});
