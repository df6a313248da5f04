# runwatch: build on Node 24 LTS, ship only dist/, config/ and production dependencies.
FROM node:24-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npx tsc -p tsconfig.build.json && npm prune --omit=dev

FROM node:24-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY config ./config
# events on stdout, logs on stderr; secrets come from env or *_FILE (Docker/Kubernetes secrets)
USER node
ENTRYPOINT ["node", "/app/dist/cli.js"]
CMD ["--help"]
