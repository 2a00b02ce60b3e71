#!/usr/bin/env bash
# Two builds of this project side by side on a lent GPU machine (no network, no Node.js): the
# forward table and single-stream decode (plain and ANPD, bench prompts, 128 new tokens) of build A
# (this tree's dist) and build B (a previous commit's whole tree, built, carried under
# .gpu/base-tree), alternated A B A B, with each run's token ids compared across the builds.
# Needs the carries of docs/gpu.md ("Benchmarking on a GPU machine"): .gpu/base, dist, the CUDA
# provider unpacked beside the binding, the float16 model at $MODEL (default /tmp/m16).
#   REPS=2 bash bench/versions/gpu.sh
set -u -o pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
source .gpu/base/unpack.sh >/dev/null
ort=$PWD/node_modules/onnxruntime-node/bin/napi-v6/linux/x64
# The addons were linked with another machine's rpath: the binding's library is found here instead.
export LD_LIBRARY_PATH=$ort:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export ANPD_CACHE_DIR=/tmp/anpd-cache
model=${MODEL:-/tmp/m16}
log=$out/versions.log
for rep in $(seq 1 "${REPS:-2}"); do
  for build in A B; do
    root=$PWD; [ "$build" = B ] && root=$PWD/.gpu/base-tree
    echo "== rep $rep build $build ($(date +%T))" | tee -a "$log"
    timeout 150 node "$root/dist/bench/device-bench.js" --execution-provider cuda --model "$model" --reps 20 \
      --tokens-out "/tmp/tok-$build-$rep.json" --out "$out/decode-$build-$rep.json" 2>&1 | grep -v '^{' | tail -4 | tee -a "$log"
  done
  cmp -s "/tmp/tok-A-$rep.json" "/tmp/tok-B-$rep.json" && echo "rep $rep: A == B, identical token ids" | tee -a "$log" || echo "rep $rep: token ids DIFFER between A and B" | tee -a "$log"
done
