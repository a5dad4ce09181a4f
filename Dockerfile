# Waymark image: `docker build -t waymark .`, then `docker run waymark serve` (the default)
# or `docker run waymark demo-api --host 0.0.0.0 --port 8000`.

# ---- build: install everything, compile TypeScript, drop devDependencies ----
FROM node:20-bookworm-slim AS build
WORKDIR /app

COPY package.json package-lock.json ./
# --ignore-scripts: this image's npm 10 does not know package.json's "allowScripts" and would
# run install scripts (fox-wamp's sqlite3 would try to compile). Nothing Waymark runs needs one.
RUN npm ci --ignore-scripts --no-audit --no-fund

COPY tsconfig.json ./
COPY lib ./lib
COPY dev ./dev
COPY bin ./bin
COPY scripts ./scripts
# Compile only what runs (lib/ and dev/): the project tsconfig also includes spec/ and bench/.
RUN printf '{ "extends": "./tsconfig.json", "include": ["lib/**/*.ts", "dev/**/*.ts"] }\n' > tsconfig.docker.json \
 && npx tsc -p tsconfig.docker.json \
 && node scripts/build-browser.mjs \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

# ---- runtime: production dependencies and compiled code, non-root ----
FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app

COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/lib ./dist/lib
COPY --from=build /app/dist/dev ./dist/dev
# the browser demo that `demo-api --router-url` serves: its page and the client bundle
COPY --from=build /app/dist/browser ./dist/browser
COPY --from=build /app/dev/demo ./dev/demo
COPY --from=build /app/bin ./bin

USER node
# admin port: /metrics, /healthz, /readyz, POST /bump (bind it with WAYMARK_ADMIN_HOST=0.0.0.0)
EXPOSE 8081
# Healthy = ready: joined to the router and subscribed to Redis (/readyz), asked from inside the
# container on the admin port the process was given. `demo-api` containers override it (compose
# does); with WAYMARK_ADMIN_PORT=0 there is nothing to ask: run with --no-healthcheck.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.WAYMARK_ADMIN_PORT || 8081) + '/readyz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "bin/waymark.js"]
CMD ["serve"]
