#!/usr/bin/env bash
# Two builds of this project side by side on this machine's CPU, alternated A B A B (a refactor
# must move nothing): single-stream decode (anpd generate --stats, 128 new tokens, --ignore-eos,
# plain and ANPD, prompts of ~256 and ~1,000 tokens cut from bench/prompts) and batched steps
# (anpd serve --batch-slots 4, 4 concurrent GenerateStream calls, plain and ANPD). Each build is a
# checkout with `npm run build` done (dist/ and its native addon); they share ANPD_CACHE_DIR.
#   bash bench/versions/cpu.sh BASE_DIR NEW_DIR [REPS] > results.jsonl
set -euo pipefail
base=$1; new=$2; reps=${3:-5}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# Real text, no chat template: plain decoding's cost does not depend on what the tokens say.
node -e '
  const fs = require("fs"); const dir = process.argv[1];
  const text = ["document-qa", "summarization", "code-editing", "open-chat"].flatMap((f) => JSON.parse(fs.readFileSync(`${dir}/${f}.json`, "utf8")).map((p) => p.prompt)).join("\n\n");
  fs.writeFileSync(process.argv[2] + "/p256.txt", text.slice(0, 1000)); fs.writeFileSync(process.argv[2] + "/p1024.txt", text.slice(0, 4100));
' "$here/../prompts" "$tmp"
for rep in $(seq 1 "$reps"); do
  for build in "$base" "$new"; do
    for len in 256 1024; do
      for spec in off ngram; do
        stats=$(node "$build/dist/src/cli/main.js" generate --prompt-file "$tmp/p$len.txt" --no-chat --max-new-tokens 128 --ignore-eos \
          --speculation "$spec" --threads 2 --stats 2>&1 >/dev/null | tail -1)
        echo "{\"kind\":\"single\",\"build\":\"$build\",\"len\":$len,\"spec\":\"$spec\",\"rep\":$rep,\"stats\":$stats}"
      done
    done
    port=50777
    node "$build/dist/src/cli/main.js" serve --port $port --batch-slots 4 --engine-replicas 1 --threads 2 > "$tmp/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do node "$build/dist/src/cli/main.js" health --address 127.0.0.1:$port >/dev/null 2>&1 && break; sleep 1; done
    for spec in off ngram; do
      echo "{\"kind\":\"batched\",\"build\":\"$build\",\"rep\":$rep,\"res\":$(node "$here/stream-load.mjs" $port 4 $spec 96)}"
    done
    kill -TERM $pid; wait $pid || true
  done
done
