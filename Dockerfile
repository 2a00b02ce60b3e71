# Runs the CLI on the default model. The gRPC server entry point replaces CMD when it lands.
FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY bench ./bench
COPY test ./test
RUN npm run build && node dist/src/cli/main.js fetch-model
ENTRYPOINT ["node", "dist/src/cli/main.js"]
CMD ["generate", "What is the capital of France?"]
