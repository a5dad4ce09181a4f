// `npx mocha` runs every spec; `npx mocha dist/spec/x.spec.js` runs only the files named
// (a .mocharc.json `spec` list would be added to them instead).
const named = process.argv.slice(2).some((a) => /\.spec\.js$/.test(a));
module.exports = {
  spec: named ? [] : ['dist/spec/**/*.spec.js'],
  require: ['dist/spec/helpers/root-hooks.js'],
  timeout: 20000,
  reporter: 'spec',
};
