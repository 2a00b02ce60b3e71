#!/usr/bin/env bash
# The GPU run of issue 18 on a lent H200 machine (no network, no Node.js), from the repo root, after
# the carries described in docs/gpu.md ("Benchmarking on a GPU machine"): .gpu/base (node, ORT,
# node_modules), dist (with the native addon), the CUDA provider unpacked beside the binding, the
# float16 model converted to /tmp/m16 and llama.cpp built with CUDA under /tmp/b/llama.cpp/build.
# Writes its logs and JSON results to $OUT. Steps: smoke, forward table, decode (CUDA graphs on /
# off, token ids compared), rows (decode by forward row count), the peers run against llama.cpp,
# scale (a 1.7B-shaped random model, both engines), concurrency; issue 30: llamabuild, load, llama, hostprof, gemma, bigload;
# issue 33: stepprof, wgemm.
#   ROWS="4 8" bash bench/gpu/h200-run.sh [steps...]   (default: all)
#   MODEL=/tmp/g16 GGUF=/tmp/gemma.gguf GREEDY="on off" TAG=-gemma bash bench/gpu/h200-run.sh peers
#     (another model; greedy decoding with the argmax on the device and with the logits brought back)
set -u -o pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
source .gpu/base/unpack.sh >/dev/null
ort=$PWD/node_modules/onnxruntime-node/bin/napi-v6/linux/x64
export LD_LIBRARY_PATH=$ort:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
model=${MODEL:-/tmp/m16}; gguf=${GGUF:-/tmp/model.gguf}; llama=${LLAMA_BIN:-/tmp/b/llama.cpp/build/bin}
log=$out/run.log
steps=${*:-smoke table decode rows peers scale replicas}
rows_list=${ROWS:-4 8 17}
say() { echo "== $* ($(date +%T))" | tee -a "$log"; }
for step in $steps; do
  case $step in
    smoke)
      say smoke
      timeout 120 node --input-type=module -e "
        const { createEngine } = await import('./dist/src/engine/create-engine.js');
        const { NO_SPECULATION, DEFAULT_SPECULATION } = await import('./dist/src/contract.js');
        const { generateOnce } = await import('./dist/tools/generate-once.js');
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
    rows)
      for r in 2 4 6 8 17; do
        say "rows $r"
        timeout 120 node dist/bench/device-bench.js --execution-provider cuda --model "$model" --rows-min $r --reps 30 --out /tmp/rows-$r.json 2>&1 | grep -v '^{' | tee -a "$log"
      done
      node -e "const fs=require('fs');const o={};for(const r of [2,4,6,8,17]){try{o[r]=JSON.parse(fs.readFileSync('/tmp/rows-'+r+'.json','utf8'))}catch{}};fs.writeFileSync('$out/rows.json',JSON.stringify(o,null,1))" ;;
    peers)
      say peers "(llama build rc: $(cat /tmp/b/build.rc 2>/dev/null || echo none))"
      for r in $rows_list; do
        for g in ${GREEDY:-on}; do
          timeout 200 node dist/bench/gpu-peers.js --model "$model" --gguf "$gguf" --llama-bin "$llama" --rows-min $r --greedy-on-device $g --out "$out/peers${TAG:-}-rows$r-greedy-$g.json" 2>&1 | grep -v '^{' | tee -a "$log"
        done
      done ;;
    scale)
      say scale
      [ -f /tmp/big.gguf ] || timeout 200 node dist/bench/gpu/random-gguf.js --tokenizer-from "$gguf" --out /tmp/big.gguf 2>&1 | tee -a "$log"
      [ -f /tmp/big16/anpd-model.json ] || timeout 300 node dist/src/cli/main.js convert /tmp/big.gguf /tmp/big16 --dtype float16 2>&1 | tail -1 | tee -a "$log"
      for r in $rows_list; do
        timeout 150 node dist/bench/device-bench.js --execution-provider cuda --model /tmp/big16 --rows-min $r --reps 20 --prompts 3 --max-new-tokens 64 --out /tmp/scale-$r.json 2>&1 | grep -v '^{' | tee -a "$log"
      done
      timeout 120 "$llama/llama-bench" -m /tmp/big.gguf -ngl 99 -p 512 -n 128 -o json > /tmp/scale-llama.json 2>/tmp/scale-llama.err; tail -2 /tmp/scale-llama.err | tee -a "$log"
      node -e "const fs=require('fs');const o={llamaBench:JSON.parse(fs.readFileSync('/tmp/scale-llama.json','utf8'))};for(const r of '$rows_list'.split(' ')){try{o['ours_rows'+r]=JSON.parse(fs.readFileSync('/tmp/scale-'+r+'.json','utf8'))}catch{}};fs.writeFileSync('$out/scale.json',JSON.stringify(o,null,1))" ;;
    batch)
      # Issue 30: batched device forwards (slot graphs, KV slab) against one sequence per forward, in one run.
      say batch
      ladder=""
      for k in ${SLOTS:-2 4 8 16 32 64}; do
        [ -f /tmp/m16-s$k/anpd-model.json ] || node dist/src/cli/main.js convert "$gguf" /tmp/m16-s$k --dtype float16 --slots $k 2>&1 | tail -1 | tee -a "$log"
        ladder="$ladder${ladder:+,}/tmp/m16-s$k"
      done
      timeout ${BATCH_TIMEOUT:-420} node dist/bench/replicas-bench.js --execution-provider cuda --model "$model" --batch-model "$ladder" --replicas 1 --streams ${STREAMS:-1,4,16,64} --max-new-tokens 64 --category ${CATEGORY:-code-editing} ${GENERATIONS:+--generations $GENERATIONS} --out "$out/batch${TAG:-}.json" 2>&1 | grep -v '^{' | tee -a "$log" ;;
    paged)
      # Issue 30: continuous batching on the paged graph vs one sequence per forward (and the slot graphs), one run.
      say paged
      [ -f /tmp/mp/anpd-model.json ] || node dist/src/cli/main.js convert "$gguf" /tmp/mp --dtype float16 --attention paged 2>&1 | tail -1 | tee -a "$log"
      ladder=""
      for k in ${SLOTS:-}; do ladder="$ladder${ladder:+,}/tmp/m16-s$k"; done
      graphs=on
      timeout 150 node dist/bench/device-batch-bench.js --model /tmp/mp --reps 30 --out "$out/batchstep-paged${TAG:-}.json" 2>&1 | grep -v '^{"date' | tee -a "$log" || graphs=off
      [ $graphs = off ] && { say "paged: CUDA graphs FAILED, measuring without"; timeout 150 node dist/bench/device-batch-bench.js --model /tmp/mp --cuda-graphs off --reps 30 --out "$out/batchstep-paged-nographs${TAG:-}.json" 2>&1 | tail -12 | tee -a "$log"; }
      timeout ${PAGED_TIMEOUT:-500} node dist/bench/replicas-bench.js --cuda-graphs $graphs --execution-provider cuda --model "$model" --paged-model /tmp/mp --batch-slots ${BATCH_SLOTS:-64} --batch-invariant ${INVARIANT:-off} ${ladder:+--batch-model $ladder} --replicas 1 --streams ${STREAMS:-1,4,16,64} --max-new-tokens 64 --category ${CATEGORY:-code-editing} ${GENERATIONS:+--generations $GENERATIONS} --out "$out/paged${TAG:-}.json" 2>&1 | grep -v '^{' | tee -a "$log" ;;
    batchstep)
      # One batched step's cost by width, CUDA graphs on and off (where a step's time goes).
      say batchstep
      ladder=$(for k in ${SLOTS:-2 4 8 16 32 64}; do printf '/tmp/m16-s%s,' $k; done); ladder=${ladder%,}
      for g in on off; do
        timeout 200 node dist/bench/device-batch-bench.js --model "$model" --batch-model "$ladder" --cuda-graphs $g --out "$out/batchstep-graphs-$g${TAG:-}.json" 2>&1 | grep -v '^{"date' | tee -a "$log"
      done
      [ -f /tmp/mp/anpd-model.json ] && timeout 200 node dist/bench/device-batch-bench.js --model /tmp/mp --out "$out/batchstep-paged${TAG:-}.json" 2>&1 | grep -v '^{"date' | tee -a "$log"
      # Per-node times of the 16-slot graph and the single-sequence graph (graphs off: ORT times each node).
      rm -rf /tmp/prof; mkdir -p /tmp/prof
      ANPD_ORT_PROFILE=/tmp/prof/p timeout 120 node dist/bench/device-batch-bench.js --model "$model" --batch-model /tmp/m16-s16 --cuda-graphs off --reps 20 >/dev/null 2>&1
      for f in /tmp/prof/*.json; do node bench/gpu/profile-summary.mjs "$f" 14 | tee -a "$log"; done ;;
    llamabuild)
      # llama.cpp with CUDA (the peer; ~5 min, and the call that runs it returns only when it ends).
      say llamabuild
      ( mkdir -p /tmp/b && tar -xJf .gpu/llama/llamacpp-src.tar.xz -C /tmp/b && cd /tmp/b/llama.cpp \
        && cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
             -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DCMAKE_BUILD_TYPE=Release > /tmp/b/cmake.log 2>&1 \
        && cmake --build build -j16 --target llama-server llama-bench llama-simple > /tmp/b/build.log 2>&1; echo $? > /tmp/b/build.rc )
      say "llamabuild rc $(cat /tmp/b/build.rc)"; tail -3 /tmp/b/build.log | tee -a "$log" ;;
    load)
      # Issue 30: continuous batching with packed prefill (paged graph, batch-invariant) against one
      # sequence per forward at 1 stream, 64 new tokens; code editing and summarization (~450-token prompts: TTFT).
      say load
      [ -f /tmp/mp/anpd-model.json ] || node dist/src/cli/main.js convert "$gguf" /tmp/mp --dtype float16 --attention paged 2>&1 | tail -1 | tee -a "$log"
      for cat in ${CATEGORIES:-code-editing summarization}; do
        timeout ${LOAD_TIMEOUT:-200} node dist/bench/replicas-bench.js --execution-provider cuda --model "$model" --paged-model /tmp/mp --batch-slots ${BATCH_SLOTS:-64} --batch-invariant ${INVARIANT:-on} --prefill-tokens-per-step ${PREFILL:-1024} --unbatched-streams 1 --replicas 1 --streams ${STREAMS:-1,16,64} --max-new-tokens 64 --kv-capacity 2048 --category $cat --out "$out/load-$cat${TAG:-}.json" 2>&1 | grep -v '^{"date' | tee -a "$log"
      done ;;
    llama)
      # llama-server (CUDA) under the same load: -np = streams, -np 64, and its n-gram speculation.
      say llama
      for cat in ${CATEGORIES:-code-editing summarization}; do
        timeout 150 node bench/gpu/llama-server-load.mjs --bin "$llama" --gguf "$gguf" --streams ${STREAMS:-1,16,64} --np streams --category $cat --max-new-tokens 64 --tag np-streams --out "$out/llama-$cat-np-streams.json" 2>&1 | grep -v '^{"date' | tee -a "$log"
      done
      timeout 120 node bench/gpu/llama-server-load.mjs --bin "$llama" --gguf "$gguf" --streams ${STREAMS:-1,16,64} --np 64 --category code-editing --max-new-tokens 64 --tag np64 --out "$out/llama-code-editing-np64.json" 2>&1 | grep -v '^{"date' | tee -a "$log"
      timeout 120 node bench/gpu/llama-server-load.mjs --bin "$llama" --gguf "$gguf" --streams ${STREAMS:-1,16,64} --np 64 --spec-type ngram-simple --category code-editing --max-new-tokens 64 --tag np64-ngram --out "$out/llama-code-editing-np64-ngram.json" 2>&1 | grep -v '^{"date' | tee -a "$log" ;;
    ab)
      # Builds against each other, in turns (A B C A B C …): AB lists name:dist-dir pairs (the previous
      # builds built here into .gpu/, ignored); paged, batch-invariant, 16 and 64 streams, each category.
      say ab
      for cat in ${CATEGORIES:-code-editing summarization}; do
        for rep in $(seq ${REPS:-3}); do
          for pair in ${AB:-prev:.gpu/dist-prev new:dist}; do
            v=${pair%%:*}; d=${pair#*:}
            timeout 120 node $d/bench/replicas-bench.js --execution-provider cuda --model "$model" --paged-model /tmp/mp --batch-slots 64 --batch-invariant on --prefill-tokens-per-step ${PREFILL:-2048} --unbatched-streams 0 --replicas 1 --streams ${STREAMS:-16,64} --generations ${GENERATIONS:-256} --max-new-tokens 64 --kv-capacity 2048 --category $cat --out "$out/ab-$cat-$v-$rep.json" 2>&1 | grep -o '"streams":[0-9]*,"mode":"[a-z]*","generations":[0-9]*,"aggregateTokPerS":[0-9.]*\(,"steadyTokPerS":[0-9.]*\)\?\|MISMATCH.*' | sed "s/^/$cat $v $rep /" | tee -a "$log"
          done
        done
      done ;;
    gemma)
      # Gemma 3 270M (sliding-window layers) on the paged graph against its GQA graph: long prompts
      # (~850 tokens, past the 512-token window) show whether PagedAttention's local_window_size
      # matches; then the load. GGUF at /tmp/gemma.gguf.
      say gemma
      for d in g16:"" gp:"--attention paged"; do
        [ -f /tmp/${d%%:*}/anpd-model.json ] || node dist/src/cli/main.js convert /tmp/gemma.gguf /tmp/${d%%:*} --dtype float16 ${d#*:} 2>&1 | tail -1 | tee -a "$log"
      done
      for cat in ${CATEGORIES:-long-context code-editing}; do
        timeout ${LOAD_TIMEOUT:-200} node dist/bench/replicas-bench.js --execution-provider cuda --model /tmp/g16 --paged-model /tmp/gp --batch-slots 64 --batch-invariant on --unbatched-streams 1 --replicas 1 --streams ${STREAMS:-1,16,64} --max-new-tokens 64 --kv-capacity 2048 --category $cat --out "$out/gemma-$cat.json" 2>&1 | grep -v '^{"date' | tee -a "$log"
      done ;;
    bigload)
      # The 1.7B-shaped random model (scale step's GGUF) on the paged graph: does batching hold at 13× the weights?
      say bigload
      [ -f /tmp/big.gguf ] || timeout 200 node dist/bench/gpu/random-gguf.js --tokenizer-from "$gguf" --out /tmp/big.gguf 2>&1 | tail -1 | tee -a "$log"
      for d in big16:"" bigp:"--attention paged"; do
        [ -f /tmp/${d%%:*}/anpd-model.json ] || timeout 300 node dist/src/cli/main.js convert /tmp/big.gguf /tmp/${d%%:*} --dtype float16 ${d#*:} 2>&1 | tail -1 | tee -a "$log"
      done
      timeout ${LOAD_TIMEOUT:-200} node dist/bench/replicas-bench.js --execution-provider cuda --model /tmp/big16 --paged-model /tmp/bigp --batch-slots 64 --batch-invariant on --unbatched-streams 1 --replicas 1 --streams ${STREAMS:-1,16,64} --max-new-tokens 64 --kv-capacity 2048 --category code-editing --out "$out/big-code-editing.json" 2>&1 | grep -v '^{"date' | tee -a "$log" ;;
    hostprof)
      # Where a 64-stream step's host time goes: a CPU profile of the bench process (ANPD and plain, paged).
      say hostprof
      mkdir -p "$out/prof"
      timeout 120 node --cpu-prof --cpu-prof-dir "$out/prof" dist/bench/replicas-bench.js --execution-provider cuda --model "$model" --paged-model /tmp/mp --batch-slots 64 --batch-invariant on --unbatched-streams 0 --replicas 1 --streams 64 --generations 256 --max-new-tokens 64 --kv-capacity 2048 --category code-editing 2>&1 | grep -v '^{"date' | tee -a "$log"
      for f in "$out"/prof/*.cpuprofile; do node bench/gpu/cpuprof-summary.mjs "$f" 30 >> "$out/hostprof.txt"; done ;;
    stepprof)
      # Issue 33: one decode step alone per model (64-token prefix, 1 token a forward at the 4-row
      # shape): its time with CUDA graphs on and off, ORT's per-node profile (graphs off) summed
      # by operator, and llama.cpp's `llama-bench` tg128 on the same GGUF (the peer's step).
      # PROFILE_MODELS lists name:dir:gguf triples (converted float16 graphs and their GGUFs).
      say stepprof
      for triple in ${PROFILE_MODELS:-smollm2:/tmp/m16:/tmp/model.gguf gemma3:/tmp/g16:/tmp/gemma.gguf big1p7:/tmp/big16:/tmp/big.gguf big8b:/tmp/b8-16:/tmp/b8.gguf}; do
        name=${triple%%:*}; rest=${triple#*:}; dir=${rest%%:*}; gg=${rest#*:}
        [ -x "$llama/llama-bench" ] && [ -f "$gg" ] && timeout 120 "$llama/llama-bench" -m "$gg" -ngl 99 -p 0 -n 128 -r 5 -o json > "$out/llama-$name.json" 2>/dev/null \
          && node -e "const r=JSON.parse(require('fs').readFileSync('$out/llama-$name.json','utf8'));console.log('llama-bench $name tg128', r.map(x=>x.avg_ts.toFixed(1)+' tok/s').join(', '))" | tee -a "$log"
        [ -f "$dir/anpd-model.json" ] || { say "stepprof: no $dir"; continue; }
        for g in on off; do
          timeout ${STEP_TIMEOUT:-300} node dist/bench/gpu/step-profile.js --model "$dir" --cuda-graphs $g --steps 400 --out "$out/step-$name-graphs-$g.json" 2>&1 | tail -1 | tee -a "$log"
        done
        rm -rf /tmp/prof; mkdir -p /tmp/prof
        ANPD_ORT_PROFILE=/tmp/prof/p timeout ${STEP_TIMEOUT:-300} node dist/bench/gpu/step-profile.js --model "$dir" --cuda-graphs off --steps 200 >/dev/null 2>&1
        for f in /tmp/prof/*.json; do node bench/gpu/profile-summary.mjs "$f" 30; done > "$out/profile-$name.txt" 2>&1
        grep -A12 '"file"' "$out/profile-$name.txt" | tee -a "$log"
      done ;;
    wgemm)
      # Issue 33: ORT's fpA_intB weight-only kernels (RuntimeOptions.experimental.weightOnlyGemm) on
      # and off, per model, in one run: llama-bench tg128, one decode step alone (graphs on), and the
      # peers table (plain and ANPD against llama-simple / llama-lookup; ours plain == ANPD checked).
      say wgemm "(llama build rc: $(cat /tmp/b/build.rc 2>/dev/null || echo none))"
      for triple in ${PROFILE_MODELS:-smollm2:/tmp/m16:/tmp/model.gguf big1p7:/tmp/big16:/tmp/big.gguf big8b:/tmp/b8-16:/tmp/b8.gguf gemma3:/tmp/g16:/tmp/gemma.gguf}; do
        name=${triple%%:*}; rest=${triple#*:}; dir=${rest%%:*}; gg=${rest#*:}
        [ -f "$dir/anpd-model.json" ] || { say "wgemm: no $dir"; continue; }
        timeout 120 "$llama/llama-bench" -m "$gg" -ngl 99 -p 0 -n 128 -r 5 -o json > "$out/llama-$name.json" 2>/dev/null \
          && node -e "const r=JSON.parse(require('fs').readFileSync('$out/llama-$name.json','utf8'));console.log('llama-bench $name tg128', r.map(x=>x.avg_ts.toFixed(1)+' tok/s').join(', '))" | tee -a "$log"
        for w in on off; do
          timeout 120 node dist/bench/gpu/step-profile.js --model "$dir" --weight-gemm $w --steps 400 2>&1 | tail -1 | tee -a "$log"
        done
        for w in ${WGEMM_PEERS-on}; do
          timeout ${PEERS_TIMEOUT:-200} node dist/bench/gpu-peers.js --model "$dir" --gguf "$gg" --llama-bin "$llama" --prompts ${PEERS_PROMPTS:-4} --weight-gemm $w --out "$out/peers-$name-wgemm-$w.json" 2>&1 | grep -v '^{' | grep -v '^\[gpu-peers\] prompt' | tail -14 | tee -a "$log"
        done
      done ;;
    replicas)
      say replicas
      timeout 240 node dist/bench/replicas-bench.js --execution-provider cuda --model "$model" --replicas 1,2 --streams 1,4,16,64 --max-new-tokens 64 ${REPLICA_ROWS:+--rows-min $REPLICA_ROWS} --out "$out/replicas.json" 2>&1 | grep -v '^{' | tee -a "$log" ;;
  esac
done
say done
