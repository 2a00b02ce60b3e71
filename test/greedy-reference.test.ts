/**
 * Plain greedy decoding on the cpu against its committed reference (test/support/greedy-reference.ts):
 * the exactness tests compare speculative with plain decoding of the same build, so a converter,
 * quantization or runtime change that damages both alike must fail here.
 */
import test from 'ava';
import { NO_SPECULATION } from '../src/contract.js';
import { DEFAULT_MODEL } from '../src/registry/model-registry.js';
import { generateOnce } from '../tools/generate-once.js';
import { cpuEngine } from './support/default-model.js';
import { compareWithReference, NEAR_TIE_GAP, readReference, sha256 } from './support/greedy-reference.js';
import { exactnessPrompts } from './support/prompt-set.js';

/** Near-tie differences forgiven in all (another CPU's rounding); more means something moved the logits. */
const NEAR_TIES_MAX = 3;
const FILES = { onnxruntime: 'cpu', native: 'cpu-native-attention' } as const;

test('the cpu references cover every exactness prompt, as written now, from the default model', (t) => {
  const prompts = exactnessPrompts();
  for (const file of Object.values(FILES)) {
    const reference = readReference(file);
    t.deepEqual(
      reference.cases.map((c) => [c.id, c.promptSha256]),
      prompts.map((p) => [p.id, sha256(p.prompt)]),
      `${file}: the prompt set changed: re-record the reference`,
    );
    t.is((reference.provenance['model'] as { gguf: string }).gguf, DEFAULT_MODEL.ggufSha256);
    for (const c of reference.cases) {
      t.true(c.tokens.length > 0, `${file} ${c.id}: an empty reference`);
      t.is(c.gaps.length, c.tokens.length + 1, `${file} ${c.id}: a gap for every output position and the one after`);
    }
  }
});

// ORT's kernel serves batched forwards and builds without the addon; the native one is the default.
for (const attention of ['onnxruntime', 'native'] as const) {
  test.serial(
    `plain greedy decoding on the cpu (${attention} attention kernel) reproduces the committed reference token for token`,
    async (t) => {
      const engine = await cpuEngine(attention);
      if (engine.info.attention !== attention) {
        // Only where the native runner is not built (the CI requires it: test/native-run.test.ts).
        t.log(`the engine runs the ${engine.info.attention} kernel here: the ${attention} reference is not checked`);
        t.pass();
        return;
      }
      const reference = readReference(FILES[attention]);
      const prompts = new Map(exactnessPrompts().map((p) => [p.id, p.prompt]));
      let identical = 0;
      const regressions: string[] = [];
      for (const expected of reference.cases) {
        const { tokens } = await generateOnce(engine, prompts.get(expected.id)!, NO_SPECULATION, expected.maxNewTokens);
        const result = compareWithReference(expected, tokens);
        if (result.kind === 'identical') identical++;
        else if (result.kind === 'near-tie') t.log(`forgiven (gap < ${NEAR_TIE_GAP}): ${result.message}`);
        else regressions.push(result.message);
      }
      t.log(`${identical}/${reference.cases.length} outputs identical to the reference`);
      t.is(
        regressions.length,
        0,
        `${regressions.length} of ${reference.cases.length} prompts regressed:\n${regressions.join('\n')}`,
      );
      t.true(
        reference.cases.length - identical <= NEAR_TIES_MAX,
        `${reference.cases.length - identical} outputs differ at near-ties`,
      );
    },
  );
}
