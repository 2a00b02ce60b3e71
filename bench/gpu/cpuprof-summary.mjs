// Self time by function of a V8 CPU profile (node --cpu-prof): where a thread's time goes.
//   node bench/gpu/cpuprof-summary.mjs FILE.cpuprofile [TOP]
import { readFileSync } from 'node:fs';

const [file, topArg] = process.argv.slice(2);
if (file === undefined) throw new Error('usage: cpuprof-summary.mjs FILE.cpuprofile [TOP]');
const profile = JSON.parse(readFileSync(file, 'utf8'));
const top = Number(topArg ?? 40);
const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
const byFunction = new Map();
let totalUs = 0;
profile.samples.forEach((id, i) => {
  const us = profile.timeDeltas[i] ?? 0;
  const { functionName, url, lineNumber } = nodes.get(id).callFrame;
  const key = `${functionName || '(anonymous)'} ${url.split('/').slice(-2).join('/')}:${lineNumber + 1}`;
  byFunction.set(key, (byFunction.get(key) ?? 0) + us);
  totalUs += us;
});
console.log(`${file}: ${(totalUs / 1e3).toFixed(0)} ms sampled`);
for (const [key, us] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top))
  console.log(`${(us / 1e3).toFixed(1).padStart(9)} ms ${((100 * us) / totalUs).toFixed(1).padStart(5)}%  ${key}`);
