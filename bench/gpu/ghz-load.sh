#!/usr/bin/env bash
# Issue 30: ghz against `anpd serve` on the GPU with continuous batching (the paged graph), at 16
# and 64 concurrent calls, each a code-editing prompt generating 64 tokens (ignore_eos: every call
# the same length, so aggregate tok/s = OK calls × 64 / wall time). Needs the h200-run.sh setup
# (node, the CUDA provider, /tmp/mp converted) and ghz at /tmp/ghz. Writes $OUT/ghz-c*.json.
set -u -o pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
model=${PAGED_MODEL:-/tmp/mp}
node -e "
const p = JSON.parse(require('fs').readFileSync('bench/prompts/code-editing.json', 'utf8'))[0].prompt;
process.stdout.write(JSON.stringify({ request_id: '{{.UUID}}', messages: { messages: [{ role: 'user', content: p }] },
  stopping: { max_new_tokens: 64, ignore_eos: true } }));" > /tmp/ghz-request.json
node dist/src/cli/main.js serve --model "$model" --execution-provider ${EP:-cuda} --batch-slots ${BATCH_SLOTS:-64} --kv-capacity 2048 --port 50071 --log-level warn > /tmp/serve.log 2>&1 &
server=$!
for i in $(seq 1 120); do node dist/src/cli/main.js health --address 127.0.0.1:50071 >/dev/null 2>&1 && break; sleep 0.5; done
for c in ${CONCURRENCY:-16 64}; do
  n=$((c * 4))
  ${GHZ:-/tmp/ghz} --insecure -O json --call llm.v1.TextGeneration.Generate -c $c -n $n -t 120s -D /tmp/ghz-request.json 127.0.0.1:50071 > "$out/ghz-c$c.json"
  node -e "
const r = JSON.parse(require('fs').readFileSync('$out/ghz-c$c.json', 'utf8'));
const ok = r.statusCodeDistribution?.OK ?? 0, s = r.total / 1e9;
const pct = (q) => (r.latencyDistribution ?? []).find((l) => l.percentage === q)?.latency / 1e6;
console.log(JSON.stringify({ concurrency: $c, calls: r.count, ok, seconds: +s.toFixed(2), rps: +r.rps.toFixed(1), aggregateTokPerS: +(ok * 64 / s).toFixed(1), latencyMsP50: pct(50), latencyMsP99: pct(99), status: r.statusCodeDistribution }));"
done
kill $server; wait $server 2>/dev/null
tail -3 /tmp/serve.log
