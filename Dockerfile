# The gRPC server on the default model (converted at build time). Deploy manifests: deploy/.
FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY proto ./proto
COPY src ./src
COPY bench ./bench
COPY test ./test
RUN npm run build && node dist/src/cli/main.js fetch-model
EXPOSE 50051
ENV ANPD_HOST=0.0.0.0 ANPD_PORT=50051
ENTRYPOINT ["node", "dist/src/cli/main.js"]
CMD ["serve"]
