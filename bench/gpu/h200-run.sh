#!/usr/bin/env bash
# The GPU run of issue 18 on a lent H200 machine (no network, no Node.js), from the repo root, after
# the carries described in docs/gpu.md ("Benchmarking on a GPU machine"): .gpu/base (node, ORT,
# node_modules), dist (with the native addon), the CUDA provider unpacked beside the binding, the
# float16 model converted to /tmp/m16 and llama.cpp built with CUDA under /tmp/b/llama.cpp/build.
# Writes its logs and JSON results to $OUT. Steps: smoke, forward table, decode (CUDA graphs on /
# off, token ids compared), the peers run against llama.cpp, concurrency.
#   bash bench/gpu/h200-run.sh [steps...]   (default: all)
set -u -o pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
source .gpu/base/unpack.sh >/dev/null
ort=$PWD/node_modules/onnxruntime-node/bin/napi-v6/linux/x64
export LD_LIBRARY_PATH=$ort:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
model=${MODEL:-/tmp/m16}; gguf=${GGUF:-/tmp/model.gguf}; llama=${LLAMA_BIN:-/tmp/b/llama.cpp/build/bin}
log=$out/run.log
steps=${*:-smoke table decode peers replicas}
say() { echo "== $* ($(date +%T))" | tee -a "$log"; }
for step in $steps; do
  case $step in
    smoke)
      say smoke
      timeout 120 node --input-type=module -e "
        const { createEngine } = await import('./dist/src/engine/create-engine.js');
        const { NO_SPECULATION, DEFAULT_SPECULATION } = await import('./dist/src/engine/engine.js');
        const { generateOnce } = await import('./dist/bench/generate-once.js');
        const e = await createEngine('$model', { executionProvider: 'cuda', intraOpThreads: 4, kvCapacity: 2048 });
        console.log(JSON.stringify(e.info));
        for (const s of [NO_SPECULATION, DEFAULT_SPECULATION, NO_SPECULATION]) {
          const t0 = performance.now(); const r = await generateOnce(e, 'Write a haiku about the sea.', s, 64);
          console.log(s.mode, r.tokens.length, 'tokens', (performance.now() - t0).toFixed(1), 'ms', JSON.stringify(r.final.stats), e.tokenizer.decode(r.tokens).slice(0, 160));
        }
        await e.dispose();" 2>&1 | tee -a "$log" || { say smoke FAILED; exit 1; } ;;
    table)
      say table
      timeout 120 node dist/bench/device-bench.js --execution-provider cuda --model "$model" --skip-decode --reps 30 --out "$out/table-graphs.json" 2>&1 | tail -3 | tee -a "$log"
      timeout 120 node dist/bench/device-bench.js --execution-provider cuda --cuda-graphs off --model "$model" --skip-decode --reps 30 --out "$out/table-nographs.json" 2>&1 | tail -3 | tee -a "$log" ;;
    decode)
      say decode
      timeout 240 node dist/bench/device-bench.js --execution-provider cuda --model "$model" --skip-table --tokens-out /tmp/tok-graphs.json --out "$out/decode-graphs.json" 2>&1 | grep -v '^{' | tee -a "$log"
      timeout 240 node dist/bench/device-bench.js --execution-provider cuda --cuda-graphs off --model "$model" --skip-table --tokens-out /tmp/tok-nographs.json --out "$out/decode-nographs.json" 2>&1 | grep -v '^{' | tee -a "$log"
      cmp -s /tmp/tok-graphs.json /tmp/tok-nographs.json && say "graphs == no graphs: identical token ids" || say "graphs vs no graphs: token ids DIFFER" ;;
    peers)
      say peers "(llama build rc: $(cat /tmp/b/build.rc 2>/dev/null || echo none))"
      timeout 300 node dist/bench/gpu-peers.js --model "$model" --gguf "$gguf" --llama-bin "$llama" --out "$out/peers.json" 2>&1 | grep -v '^{' | tee -a "$log" ;;
    replicas)
      say replicas
      timeout 240 node dist/bench/replicas-bench.js --execution-provider cuda --model "$model" --replicas 1,2,4 --streams 1,4,16,64 --max-new-tokens 64 --out "$out/replicas.json" 2>&1 | grep -v '^{' | tee -a "$log" ;;
  esac
done
say done
