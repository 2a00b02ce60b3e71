/**
 * Writes a greedy regression reference (test/support/greedy-reference.ts says when that is allowed):
 *   npm run build && node dist/test/support/record-greedy-reference.js --provider cpu   (ORT's attention kernel)
 *   npm run build && node dist/test/support/record-greedy-reference.js --provider cpu-native-attention
 *   npm run build && node dist/test/support/record-greedy-reference.js --provider webgpu   (on lavapipe)
 * cpu, cpu-native-attention: plain greedy on every exactness prompt with the tests' engine, with
 * ORT's attention kernel or the native runner's own. webgpu: the lavapipe test's
 * child process on its prompts (WEBGPU_PROMPTS).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { NO_SPECULATION } from '../../src/contract.js';
import { projectRoot } from '../../src/paths.js';
import { ensureDefaultModel } from '../../src/registry/model-cache.js';
import { DEFAULT_MODEL } from '../../src/registry/model-registry.js';
import { generateOnce } from '../../tools/generate-once.js';
import { cpuEngine } from './default-model.js';
import { type GreedyReference, REFERENCE_FILES, type ReferenceCase, sha256, topTwoGaps } from './greedy-reference.js';
import { exactnessPrompts } from './prompt-set.js';
import { ensureLavapipe } from './lavapipe.js';
import { runWebgpuChild, WEBGPU_PROMPTS } from './webgpu-run.js';

/** As the exactness test: long enough to pass the prompt-copying start of most answers. */
const MAX_NEW_TOKENS = 96;

const { values } = parseArgs({ options: { provider: { type: 'string', default: 'cpu' } } });
const provider = values.provider;
if (provider !== 'cpu' && provider !== 'cpu-native-attention' && provider !== 'webgpu')
  throw new Error(`--provider must be cpu, cpu-native-attention or webgpu, not ${provider}`);

function cpuFlags(): string[] {
  const info = readFileSync('/proc/cpuinfo', 'utf8');
  const flags = new Set(/^flags\s*:(.*)$/m.exec(info)?.[1]?.trim().split(/\s+/) ?? []);
  return ['avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'amx_int8'].filter((f) => flags.has(f));
}

const modelDir = await ensureDefaultModel();
const manifest = JSON.parse(readFileSync(join(modelDir, 'anpd-model.json'), 'utf8')) as {
  converterVersion: number;
  weights: string;
  norms: string;
};
const ortVersion = (
  JSON.parse(readFileSync(join(projectRoot(), 'node_modules', 'onnxruntime-node', 'package.json'), 'utf8')) as {
    version: string;
  }
).version;
const provenance = {
  producedBy: `npm run build && node dist/test/support/record-greedy-reference.js --provider ${provider}`,
  date: new Date().toISOString().slice(0, 10),
  model: {
    gguf: DEFAULT_MODEL.ggufSha256,
    convertedAs: basename(modelDir),
    converterVersion: manifest.converterVersion,
    weights: manifest.weights,
    norms: manifest.norms,
  },
  onnxruntimeNode: ortVersion,
  node: process.version,
  cpu: { model: cpus()[0]?.model ?? 'unknown', cores: cpus().length, flags: cpuFlags() },
  decoding: 'plain greedy (speculation off), chat template applied, stops at EOS',
  regenerate:
    'Only with a converter or runtime change that moves outputs on purpose, explained in the note on the issue that makes it; never to make a failing test pass.',
};

const cases: ReferenceCase[] = [];
if (provider !== 'webgpu') {
  const engine = await cpuEngine(provider === 'cpu' ? 'onnxruntime' : 'native');
  for (const p of exactnessPrompts()) {
    const { tokens } = await generateOnce(engine, p.prompt, NO_SPECULATION, MAX_NEW_TOKENS);
    cases.push({
      id: p.id,
      promptSha256: sha256(p.prompt),
      maxNewTokens: MAX_NEW_TOKENS,
      tokens,
      gaps: await topTwoGaps(engine, p.prompt, tokens),
    });
    process.stderr.write(`${p.id}: ${tokens.length} tokens\n`);
  }
  await engine.dispose();
} else {
  const lavapipe = ensureLavapipe();
  if (!lavapipe.ok) throw new Error(`lavapipe: ${lavapipe.reason}`);
  const child = await runWebgpuChild(lavapipe.env, WEBGPU_PROMPTS);
  child.results.forEach((r, i) => {
    const p = WEBGPU_PROMPTS[i]!;
    cases.push({
      id: p.id,
      promptSha256: sha256(p.text),
      maxNewTokens: p.maxNewTokens,
      tokens: r.plain,
      gaps: r.plainGaps,
    });
  });
  Object.assign(provenance, {
    device:
      'WebGPU execution provider on Mesa lavapipe (Vulkan on the CPU), run as test/webgpu-lavapipe.test.ts runs it',
    lavapipe: lavapipe.versions,
  });
}
const reference: GreedyReference = { provenance, cases };
// One case per line: diffs of a re-recorded reference show which prompts moved.
const casesJson = reference.cases.map((c) => `  ${JSON.stringify(c)}`).join(',\n');
writeFileSync(
  join(projectRoot(), REFERENCE_FILES[provider]),
  `{\n "provenance": ${JSON.stringify(reference.provenance)},\n "cases": [\n${casesJson}\n ]\n}\n`,
);
process.stderr.write(`wrote ${REFERENCE_FILES[provider]} (${cases.length} cases)\n`);
