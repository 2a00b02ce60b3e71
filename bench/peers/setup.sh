#!/usr/bin/env bash
# Installs the peers for `npm run bench:peers` into an ignored cache (default .cache/peers), once:
#   - a Python venv with torch, transformers and gguf (transformers reads the same GGUF);
#   - llama.cpp from the source that the llama-cpp-python sdist vendors, built with cmake:
#     its shared libraries and the llama-lookup example;
#   - llama-cpp-python from that same sdist, bound to those libraries (LLAMA_CPP_LIB_PATH), so
#     llama.cpp is compiled once and the Python binding and llama-lookup run the same code;
#   - node-llama-cpp (npm) with its prebuilt linux-x64 CPU binary only (no CUDA/Vulkan packages).
# Re-running is cheap: each step is skipped when its output exists. Nothing here is committed.
set -euo pipefail

PEERS_DIR="${1:-.cache/peers}"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
# Versions that the committed results were measured with; override to try others.
TORCH_SPEC="${TORCH_SPEC:-torch==2.15.0}"
TRANSFORMERS_SPEC="${TRANSFORMERS_SPEC:-transformers==5.24.0}"
GGUF_SPEC="${GGUF_SPEC:-gguf==0.19.0}"
ACCELERATE_SPEC="${ACCELERATE_SPEC:-accelerate==1.15.0}"
NODE_LLAMA_CPP_VERSION="${NODE_LLAMA_CPP_VERSION:-3.21.1}"
JOBS="${JOBS:-2}"

mkdir -p "$PEERS_DIR"
PEERS_DIR="$(cd "$PEERS_DIR" && pwd)"
VENV="$PEERS_DIR/venv"
SRC="$PEERS_DIR/src"
BUILD="$PEERS_DIR/llama.cpp-build"
PY="$VENV/bin/python"

step() { printf '\n== peers setup: %s\n' "$*" >&2; }

if [ ! -x "$PY" ]; then
  step "python venv at $VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install --upgrade pip
fi

SDIST_DIR="$SRC/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
if [ ! -d "$SDIST_DIR/vendor/llama.cpp" ]; then
  step "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION source (sdist from PyPI)"
  mkdir -p "$SRC"
  "$PY" -m pip download --no-deps --no-binary :all: -d "$SRC" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  tar -xzf "$SRC/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$SRC"
fi

if [ ! -x "$BUILD/bin/llama-lookup" ] || [ ! -f "$BUILD/bin/libllama.so" ]; then
  step "building llama.cpp (vendored by llama-cpp-python) with cmake, -j$JOBS: several minutes on 2 cores"
  cmake -S "$SDIST_DIR/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON
  cmake --build "$BUILD" -j"$JOBS" --target llama-lookup llama-bench llama-simple
fi

# The package has no libraries of its own: it loads them from LLAMA_CPP_LIB_PATH.
if [ "$(LLAMA_CPP_LIB_PATH="$BUILD/bin" "$PY" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null)" != "$LLAMA_CPP_PYTHON_VERSION" ]; then
  step "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION bound to the libraries above (no second llama.cpp build)"
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$PY" -m pip install "$SDIST_DIR"
fi

if ! "$PY" -c 'import torch, transformers, gguf, accelerate' >/dev/null 2>&1; then
  step "torch, transformers, gguf and accelerate (transformers needs it to read a GGUF) from PyPI (torch's Linux wheel brings CUDA libraries: ~3 GB once)"
  "$PY" -m pip install --progress-bar on "$TORCH_SPEC" "$TRANSFORMERS_SPEC" "$GGUF_SPEC" "$ACCELERATE_SPEC" numpy
fi

NLC="$PEERS_DIR/node-llama-cpp"
if [ "$(node -p "require('$NLC/node_modules/node-llama-cpp/package.json').version" 2>/dev/null)" != "$NODE_LLAMA_CPP_VERSION" ]; then
  step "node-llama-cpp $NODE_LLAMA_CPP_VERSION with its prebuilt linux-x64 CPU binary (npm)"
  mkdir -p "$NLC"
  printf '{"name":"peer-node-llama-cpp","private":true,"type":"module"}\n' > "$NLC/package.json"
  # Optional packages would bring every GPU variant (CUDA: hundreds of MB); the CPU one is named.
  # Its postinstall would try to download or build llama.cpp: the prebuilt binary needs neither.
  (cd "$NLC" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --omit=optional --no-audit --no-fund \
    "node-llama-cpp@$NODE_LLAMA_CPP_VERSION" "@node-llama-cpp/linux-x64@$NODE_LLAMA_CPP_VERSION")
fi

LLAMA_CPP_LIB_PATH="$BUILD/bin" "$PY" -c 'import llama_cpp, torch, transformers, gguf; print("peers ready: llama-cpp-python", llama_cpp.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' >&2
