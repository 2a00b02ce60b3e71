#!/usr/bin/env bash
# Issue 33 (ORT's fpA_intB weight-only kernels on and off, one machine, one run) and issue 34 (the
# prefix cache on CUDA), when no llama.cpp build is at hand: after the carries of docs/gpu.md
# (.gpu/base + dist, gguf1, gguf2 → issue33-prep.sh smollm2, cuda1..3 → issue33-prep.sh cuda):
#   bash bench/gpu/weight-gemm-ab.sh [model dirs...]     (default: /tmp/m16 /tmp/big16 /tmp/b8-16)
# Per model: one decode step alone with the kernels on and off, twice in turns; decode plain vs
# ANPD with them on (outputs checked identical); then the prefix cache's cold vs warm check.
set -u -o pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
source .gpu/base/unpack.sh >/dev/null
export LD_LIBRARY_PATH=$PWD/node_modules/onnxruntime-node/bin/napi-v6/linux/x64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
log=$out/wgemm.log
say() { echo "== $* ($(date +%T))" | tee -a "$log"; }
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$log"
for dir in ${*:-/tmp/m16 /tmp/big16 /tmp/b8-16}; do
  for i in $(seq 60); do [ -f "$dir/anpd-model.json" ] && break; sleep 3; done
  [ -f "$dir/anpd-model.json" ] || { say "no $dir"; continue; }
  name=$(basename "$dir")
  say "$name"
  for w in on off on off; do
    timeout 100 node dist/bench/gpu/step-profile.js --model "$dir" --weight-gemm $w --steps 300 2>&1 | tail -1 | tee -a "$log"
  done
  timeout ${DECODE_TIMEOUT:-120} node dist/bench/device-bench.js --execution-provider cuda --model "$dir" --skip-table \
    --prompts ${PROMPTS:-4} --max-new-tokens 64 --out "$out/decode-$name.json" 2>&1 | grep -v '^{' | tail -4 | tee -a "$log"
done
[ -f /tmp/m16/anpd-model.json ] && { say prefix-cache; timeout 200 node dist/bench/gpu/prefix-cache-check.js --model /tmp/m16 --questions 3 --out "$out/prefix-cache.json" 2>&1 | tail -14 | tee -a "$log"; }
say done
