#!/usr/bin/env bash
# Load test with ghz (real ghz, through server reflection: no proto file) against a running server.
#   bash bench/ghz.sh [HOST:PORT]       → bench/results/ghz-{unary,stream,bidi}.json
# Installs ghz with `go install` when it is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
ADDRESS="${1:-localhost:50051}"
GHZ_VERSION="v0.121.0"
export PATH="$PATH:$(go env GOPATH 2>/dev/null)/bin"
if ! command -v ghz >/dev/null; then
  echo "installing ghz $GHZ_VERSION" >&2
  go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
fi
mkdir -p bench/results
PROMPT='{"role":"user","content":"Why is the sky blue? Answer in two sentences."}'
REQUEST="\"messages\":{\"messages\":[$PROMPT]},\"stopping\":{\"max_new_tokens\":48}"

# Unary: 4 workers over 2 connections.
ghz --insecure --call llm.v1.TextGeneration.Generate -c 4 --connections 2 -n 40 -t 120s --count-errors \
  -d "{\"request_id\":\"{{.UUID}}\",$REQUEST}" -O json -o bench/results/ghz-unary.json "$ADDRESS"
# Server streaming: the whole stream is one sample.
ghz --insecure --call llm.v1.TextGeneration.GenerateStream -c 4 -n 40 -t 120s --count-errors \
  -d "{\"request_id\":\"{{.UUID}}\",$REQUEST}" -O json -o bench/results/ghz-stream.json "$ADDRESS"
# Bidi: each call multiplexes 4 generations (fresh request_id per message), then half-closes;
# the server ends the call once all four finished.
ghz --insecure --call llm.v1.TextGeneration.GenerateBidi -c 2 -n 10 -t 300s --count-errors \
  --stream-dynamic-messages --stream-call-count 4 \
  -d "{\"generate\":{\"request_id\":\"{{newUUID}}\",$REQUEST}}" -O json -o bench/results/ghz-bidi.json "$ADDRESS"

for f in unary stream bidi; do
  node -e '
    const r = require(process.argv[1]);
    const ms = (ns) => (ns / 1e6).toFixed(0);
    const p = Object.fromEntries((r.latencyDistribution ?? []).map((d) => [d.percentage, ms(d.latency)]));
    console.log(`${process.argv[2]}: ${r.count} calls, ${r.rps.toFixed(2)} calls/s, mean ${ms(r.average)} ms, p50 ${p[50]} ms, p99 ${p[99]} ms, status ${JSON.stringify(r.statusCodeDistribution)}`);
  ' "$PWD/bench/results/ghz-$f.json" "$f"
done
