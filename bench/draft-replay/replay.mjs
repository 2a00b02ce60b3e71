// Replays recorded greedy outputs (bench/results/greedy-outputs.json, from record-outputs.mjs)
// through drafter strategies and draft-length policies, without the model: since greedy output is
// fixed, τ is exact and the speedup S = tokens / Σ cost(K+1) follows from the cost table below
// (relative forward cost by T, measured on the 2-core machine). Run from the project root after
// `npm run build`: node bench/draft-replay/replay.mjs
import { NgramDrafter, DEFAULT_NGRAM_OPTIONS, ANPD_PAPER_OPTIONS } from '../../dist/src/draft/ngram-drafter.js';
import { DraftLengthController, DEFAULT_CONTROLLER_OPTIONS } from '../../dist/src/draft/draft-length-controller.js';
import { readFileSync } from 'node:fs';
const data = JSON.parse(readFileSync('bench/results/greedy-outputs.json', 'utf8'));
// cost[T] relative to a plain (padded) step; from calibration-like numbers
const COST = [0, 1, 1.02, 1.15, 1.3, 1.42, 1.55, 1.68, 1.8, 1.93, 2.05, 2.2, 2.35, 2.5, 2.65, 2.8, 2.95, 3.1];
function simulate(item, mkDrafter, policy) {
  const d = mkDrafter(item.prompt);
  const out = item.output;
  let i = 0,
    rounds = 0,
    time = 0;
  const ctl = policy.controller
    ? new DraftLengthController({ ...DEFAULT_CONTROLLER_OPTIONS, ...policy.controller, forwardCost: COST })
    : null;
  while (i < out.length) {
    const k = Math.min(ctl ? ctl.current() : policy.k, out.length - i - 1);
    const draft = k > 0 ? [...d.propose(k)] : [];
    let acc = 0;
    while (acc < draft.length && draft[acc] === out[i + acc]) acc++;
    ctl?.record(draft.length, acc);
    d.commit(out.slice(i, i + acc + 1));
    i += acc + 1;
    rounds++;
    time += COST[draft.length + 1];
  }
  return { tokens: out.length, rounds, time };
}
const drafters = {
  paper: (p) => new NgramDrafter(p, ANPD_PAPER_OPTIONS),
  hybrid: (p) => new NgramDrafter(p, DEFAULT_NGRAM_OPTIONS),
  copyOnly4: (p) => new NgramDrafter(p, { ...DEFAULT_NGRAM_OPTIONS, minCount: [1e9, 1e9, 1e9, 1e9], copyMinMatch: 3 }),
  hybridM6: (p) => new NgramDrafter(p, { ...DEFAULT_NGRAM_OPTIONS, copyMinMatch: 6 }),
  hybridGated: (p) => new NgramDrafter(p, { ...DEFAULT_NGRAM_OPTIONS, minCount: [2, 1, 1, 1, 1, 1, 1], minShare: 0.3 }),
  hybridN3: (p) => new NgramDrafter(p, { ...DEFAULT_NGRAM_OPTIONS, n: 3 }),
  hybridN8: (p) => new NgramDrafter(p, { ...DEFAULT_NGRAM_OPTIONS, n: 8 }),
};
const policies = {
  k1: { k: 1 },
  k2: { k: 2 },
  k3: { k: 3 },
  k5: { k: 5 },
  k7: { k: 7 },
  k10: { k: 10 },
  adapt7: { controller: { draftTokensMax: 7 } },
  adapt12: { controller: { draftTokensMax: 12 } },
};
const cats = [...new Set(data.map((d) => d.category))];
const rows = [];
for (const [dn, mk] of Object.entries(drafters))
  for (const [pn, pol] of Object.entries(policies)) {
    const r = { name: `${dn}/${pn}` };
    for (const c of cats) {
      let tok = 0,
        rounds = 0,
        time = 0;
      for (const item of data.filter((d) => d.category === c)) {
        const s = simulate(item, mk, pol);
        tok += s.tokens;
        rounds += s.rounds;
        time += s.time;
      }
      r[c] = `τ${(tok / rounds).toFixed(2)} S${(tok / time).toFixed(2)}`;
    }
    rows.push(r);
  }
console.table(rows);
