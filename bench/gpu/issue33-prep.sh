#!/usr/bin/env bash
# Issue 33's GPU run, the steps between carries (docs/gpu.md, "Benchmarking on a GPU machine"):
#   bash bench/gpu/issue33-prep.sh llama     # after carrying .gpu/base .gpu/llama dist: llama.cpp CUDA build, in the background
#   bash bench/gpu/issue33-prep.sh smollm2   # after .gpu/gguf1 and .gpu/gguf2: /tmp/model.gguf; converts it and
#                                            # writes and converts the 1.7B- and 8B-shaped random models, in the background
#   bash bench/gpu/issue33-prep.sh gemma     # after .gpu/gemma0..4: /tmp/gemma.gguf, converted in the background
#   bash bench/gpu/issue33-prep.sh cuda      # after .gpu/cuda1..3: the CUDA provider beside the binding
#   bash bench/gpu/issue33-prep.sh wait      # until the background work is done (its logs on stdout)
# Each carry's files are copied to /tmp at once (the next call's carry replaces the folder).
set -u -o pipefail
source .gpu/base/unpack.sh >/dev/null
mkdir -p /tmp/i33
bg() { setsid nohup bash -c "$1" > "/tmp/i33/$2.log" 2>&1 < /dev/null & echo "started $2"; }
# Carried folders stay on a warm machine: copy a file again only when it differs (a re-split part,
# or a copy a timeout cut short), through a temporary name so a half copy is never taken.
for d in gguf1 gguf2 gemma0 gemma1 gemma2 gemma3 gemma4 cuda1 cuda2 cuda3; do
  for f in .gpu/$d/*; do
    [ -f "$f" ] || continue
    b=$(basename "$f"); [ "$b" = part ] && b=$d.part
    cmp -s "$f" "/tmp/i33/$b" || { cp "$f" "/tmp/i33/$b.tmp" && mv "/tmp/i33/$b.tmp" "/tmp/i33/$b"; }
  done
done
need() { for f in "$@"; do [ -f "/tmp/i33/$f" ] || { echo "missing /tmp/i33/$f: carry its folder first" >&2; exit 1; }; done; }
ls /tmp/i33
case ${1:-} in
  llama)
    bg "mkdir -p /tmp/b && tar -xJf .gpu/llama/llamacpp-src.tar.xz -C /tmp/b && cd /tmp/b/llama.cpp \
      && cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
           -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DCMAKE_BUILD_TYPE=Release \
      && cmake --build build -j12 --target llama-bench llama-simple llama-lookup; echo rc \$? > /tmp/b/build.rc" llama ;;
  smollm2)
    need gguf1.part gguf2.part
    cat /tmp/i33/gguf1.part /tmp/i33/gguf2.part > /tmp/model.gguf
    bg "node dist/src/cli/main.js convert /tmp/model.gguf /tmp/m16 --dtype float16 \
      && node dist/bench/gpu/random-gguf.js --tokenizer-from /tmp/model.gguf --out /tmp/big.gguf \
      && node dist/src/cli/main.js convert /tmp/big.gguf /tmp/big16 --dtype float16 \
      && node dist/bench/gpu/random-gguf.js --tokenizer-from /tmp/model.gguf --out /tmp/b8.gguf \
           --layers 32 --hidden 4096 --ffn 14336 --heads 32 --kv-heads 8 \
      && node dist/src/cli/main.js convert /tmp/b8.gguf /tmp/b8-16 --dtype float16; echo rc \$?" models ;;
  gemma)
    need part0 part1 part2 part3 part4
    cat /tmp/i33/part0 /tmp/i33/part1 /tmp/i33/part2 /tmp/i33/part3 /tmp/i33/part4 > /tmp/gemma.gguf
    bg "node dist/src/cli/main.js convert /tmp/gemma.gguf /tmp/g16 --dtype float16; echo rc \$?" gemma ;;
  cuda)
    need cuda.xz.part0 cuda.xz.part1 cuda.xz.part2 unpack-cuda.sh sha256 libonnxruntime_providers_shared.so
    bash /tmp/i33/unpack-cuda.sh /tmp/i33 ;;
  wait)
    for i in $(seq 100); do
      pgrep -f "random-gguf|cli/main.js convert|cmake" > /dev/null || break
      sleep 3
    done
    tail -n 3 /tmp/i33/*.log; cat /tmp/b/build.rc 2>/dev/null ;;
esac
