// Sums an ORT profile's kernel times by operator (node dist/… is not needed: plain Node).
//   node bench/gpu/profile-summary.mjs PROFILE.json [TOP]
import { readFileSync } from 'node:fs';
const events = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const top = Number(process.argv[3] ?? 12);
const byOp = new Map();
let runs = 0;
for (const e of events) {
  if (e.cat === 'Session' && e.name === 'model_run') runs++;
  if (e.cat !== 'Node' || !String(e.name).endsWith('_kernel_time')) continue;
  const op = e.args?.op_name ?? '?';
  const o = byOp.get(op) ?? { us: 0, n: 0 };
  o.us += e.dur;
  o.n++;
  byOp.set(op, o);
}
const total = [...byOp.values()].reduce((s, o) => s + o.us, 0);
console.log(
  JSON.stringify({ file: process.argv[2], runs, kernelMsPerRun: +(total / 1000 / Math.max(1, runs)).toFixed(3) }),
);
for (const [op, o] of [...byOp].sort((a, b) => b[1].us - a[1].us).slice(0, top))
  console.log(
    `${op.padEnd(36)} ${(o.us / 1000 / Math.max(1, runs)).toFixed(3)} ms/run  ${(o.n / Math.max(1, runs)).toFixed(0)} nodes/run`,
  );
