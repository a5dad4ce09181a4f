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
  for (const ok of ['/users/1', '/posts?page=2', '/a/b/c?x=1&y=%20z', '/', '/caf%C3%A9', '/a.b/c..d/...x', '/v?next=/a/../b']) {
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
  // Issue 10 fault 8: segments Tomcat, Jetty, Spring (path parameters stripped before dot-segment
  // resolution), IIS (overlong UTF-8, %u, trailing spaces) or a second decoding layer read as
  // `.`/`..`, in every encoding.
  const dotSegmentForms = [
    '/..;/admin/users', '/..;x=1/admin', '/.;/admin', '/..;/', '/..;', '/%2e%2e;/admin', '/%2E%2E;/admin', '/%2e%2e%3b/admin',
    '/..%3b/admin', '/..%3B/admin', '/.%2e;jsessionid=1/admin', '/%2e.;a=b/admin', '/..;jsessionid=ABC/admin', '/..%00/admin',
    '/..%00;/admin', '/%252e%252e%253b/admin', '/%252e%252e;/admin', '/..%253b/admin', '/%25252e%25252e%25253b/admin',
    '/%c0%ae%c0%ae/admin', '/%c0%ae%c0%ae;/admin', '/%25c0%25ae%25c0%25ae/admin', '/%e0%80%ae%e0%80%ae/admin', '/%c1%9c/admin',
    '/%u002e%u002e/admin', '/%25u002e%25u002e/admin', '/..%2f/admin', '/..%252f/admin', '/%25ff%252f../admin', '/a;/../admin',
    '/a;x=1/../admin', '/a/..;/..;/admin', '/a/;x/b', '/;/admin', '/;jsessionid=1', '/..%20/admin', '/..%20;/admin',
    '/.%20/admin', '/%2e%2e%3f/admin', '/..%23/admin', '/..%09/admin', '/v1/..;/..;/admin', '/a/.;x/b',
    // Windows drops trailing dots as well as spaces; NFKC makes fullwidth and two-dot leader forms ASCII
    '/..%20./admin', '/...%20/admin', '/...', '/...;x', '/.%20./admin', '/..../admin', '/%EF%BC%8E%EF%BC%8E/admin',
    '/%ef%bc%8e./admin', '/%E2%80%A5/admin', '/%E2%80%A5;/admin', '/..%EF%BC%8Fadmin', '/a%EF%BC%BCb', '/%25EF%25BC%258E%25EF%25BC%258E/admin',
  ];
  for (const p of dotSegmentForms) {
    it(`rejects the dot-segment form ${JSON.stringify(p)} as invalid_path`, function () {
      expect(codeOf(() => validatePath(p, 2048))).to.equal('invalid_path');
    });
  }
  for (const ok of ['/cars;color=red/2', '/a;b', '/x;/y', '/a;../b', '/users/1;v=2', '/a..;/b', '/a./b', '/v1.2', '/.well-known/x', '/%E2%80%A5x', '/caf%C3%A9', '/tags/%23vue', '/a%3Bb', '/search?q=..;&r=/..;/']) {
    it(`accepts the path parameter form ${JSON.stringify(ok)} (a named segment)`, function () {
      expect(codeOf(() => validatePath(ok, 2048))).to.equal(undefined);
    });
  }
  it('refuses every new form at the bump side too (bump-source uses the same grammar)', async function () {
    const { parseBumpMessage } = await import('../lib/bumps/bump-source.js');
    for (const p of dotSegmentForms) expect(parseBumpMessage(JSON.stringify({ path: p }), 2048).ok, p).to.equal(false);
  });
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

describe('RFC 3986 6.2.2 normalisation: one watch key per URI', function () {
  const same: Array<[string, string]> = [
    ['/caf%c3%a9', '/caf%C3%A9'], ['/caf%C3%a9', '/caf%C3%A9'], ['/%7Euser', '/~user'], ['/%7euser', '/~user'],
    ['/%41%42c', '/ABc'], ['/a%2Db%5Fc%2E', '/a-b_c.'], ['/a%2fb'.replace('%2fb', '%3ab'), '/a%3Ab'], ['/p?q=%7e&r=%c3%a9', '/p?q=~&r=%C3%A9'],
    ['/a%25', '/a%25'], ['/a%2b', '/a%2B'], ['/a"b', '/a%22b'], ['/a{b}|c^', '/a%7Bb%7D%7Cc%5E'], ['/p?ids[]=1', '/p?ids%5B%5D=1'],
  ];
  for (const [input, want] of same) {
    it(`${input} -> ${want}`, function () {
      expect(validatePath(input, 2048)).to.equal(want);
      // idempotent: the normal form is its own normal form
      expect(validatePath(want, 2048)).to.equal(want);
    });
  }
  it('keeps reserved escapes encoded (%2F, %3B, %3F are not the same URI as / ; ?)', function () {
    expect(validatePath('/a%3bb%3fc', 2048)).to.equal('/a%3Bb%3Fc');
    expect(validatePath('/q?x=%26y', 2048)).to.equal('/q?x=%26y');
  });
  it('a bump of either form names the same path (bump-source uses the same function)', async function () {
    const { parseBumpMessage } = await import('../lib/bumps/bump-source.js');
    const a = parseBumpMessage('/caf%c3%a9/%7Eme', 2048);
    const b = parseBumpMessage(JSON.stringify({ paths: ['/caf%C3%A9/~me'] }), 2048);
    expect(a.ok && a.paths).to.deep.equal(['/caf%C3%A9/~me']);
    expect(b.ok && b.paths).to.deep.equal(['/caf%C3%A9/~me']);
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
  // Issue 16 fault 8: values that cannot be sent as written are refused before any fetch.
  const badValues = ['tok-\u2713', 'caf\u00e9', 'a\u0100', 'x\ty'.replace('\t', '\u0085'), 'a\r\nb', 'a\nb', 'a\0b', 'a\x7fb', 'a\x01b', ' lead', 'trail ', '\ttab', '\ud83d\ude00'];
  for (const v of badValues) {
    it(`refuses the header value ${JSON.stringify(v)} (RFC 9110 5.5 field-value)`, function () {
      expect(codeOf(() => parseCredentials({ headers: { cookie: v } }, limits))).to.equal('invalid_argument');
    });
  }
  for (const v of [...badValues, 'a b', 'Bearer x', 'a\tb']) {
    it(`refuses the token ${JSON.stringify(v)} (visible ASCII, no spaces)`, function () {
      expect(codeOf(() => parseCredentials({ token: v }, limits))).to.equal('invalid_argument');
    });
  }
  it('accepts field values and tokens that are sent as written', function () {
    expect(parseCredentials({ headers: { cookie: 'sid=abc; theme=dark', accept: 'application/json, text/*;q=0.5', 'accept-language': '' } }, limits))
      .to.deep.equal({ cookie: 'sid=abc; theme=dark', accept: 'application/json, text/*;q=0.5', 'accept-language': '' });
    expect(parseCredentials({ headers: { authorization: 'Basic dXNlcjpwYXNz\tx' } }, limits)).to.have.property('authorization');
    for (const t of ['abc', 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-_', 'a+b/c==', 'A.B~C_D-E', '1|laravelSanctumToken', 'a:b,c;d@e"f']) {
      expect(parseCredentials({ token: t }, limits)).to.deep.equal({ authorization: `Bearer ${t}` });
    }
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
