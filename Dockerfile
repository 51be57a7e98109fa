# One image for all six services: `orca serve <service>` (the Deployments' args) or `orca up`.
# syntax=docker/dockerfile:1
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY gen ./gen
COPY services ./services
COPY bench ./bench
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production ORCA_HOST=0.0.0.0 ORCA_DATA_DIR=/tmp/orca-data
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY proto ./proto
COPY services/policy/defaults ./services/policy/defaults
USER 10001:10001
EXPOSE 50051 50052 50053 50054 50055 50056 9451 9452 9453 9454 9455 9456
ENTRYPOINT ["node", "dist/services/cli/orca.js"]
CMD ["up"]
