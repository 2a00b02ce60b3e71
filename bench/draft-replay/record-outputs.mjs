// Records plain greedy outputs (128 new tokens) of every bench prompt for replay.mjs.
// Run from the project root after `npm run build`: node bench/draft-replay/record-outputs.mjs
import { ensureDefaultModel } from '../../dist/src/registry/model-cache.js';
import { createEngine } from '../../dist/src/engine/create-engine.js';
import { NO_SPECULATION } from '../../dist/src/contract.js';
import { readFileSync, writeFileSync } from 'node:fs';
const e = await createEngine(await ensureDefaultModel(), undefined, { forwardCost: { mode: 'defer' } });
const out = [];
for (const c of ['summarization', 'code-editing', 'document-qa', 'open-chat']) {
  for (const p of JSON.parse(readFileSync(`bench/prompts/${c}.json`, 'utf8'))) {
    const prompt = e.tokenizePrompt({ kind: 'text', text: p.prompt, chat: true });
    const toks = [];
    for await (const ev of e.generate({
      prompt: { kind: 'tokens', tokenIds: prompt },
      maxNewTokens: 128,
      speculation: NO_SPECULATION,
    }))
      if (ev.type === 'delta') toks.push(...ev.tokenIds);
    out.push({ id: p.id, category: c, prompt, output: toks });
  }
}
writeFileSync('bench/results/greedy-outputs.json', JSON.stringify(out));
console.log('done', out.length);
