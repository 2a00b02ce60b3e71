/**
 * A SmolLM2-1.7B-shaped llama checkpoint with random Q4_0 weights, written as GGUF with the
 * tokenizer metadata of a real GGUF (so both engines load it): for measuring how the per-step cost
 * grows with model size on a GPU. Outputs are meaningless; speed is not. Made on the GPU machine
 * (about 1 GB: too big to carry there).
 *   node dist/bench/gpu/random-gguf.js --tokenizer-from REAL.gguf --out BIG.gguf [--layers 24 --hidden 2048 --ffn 8192 --heads 32 --kv-heads 32 --type Q4_0]
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { GgmlType, readGguf } from '../../src/convert/gguf-reader.js';
import { randomLlamaGguf } from '../../test/support/random-gguf.js';

function main(): void {
  const { values } = parseArgs({
    options: {
      'tokenizer-from': { type: 'string' },
      out: { type: 'string' },
      layers: { type: 'string', default: '24' },
      hidden: { type: 'string', default: '2048' },
      ffn: { type: 'string', default: '8192' },
      heads: { type: 'string', default: '32' },
      'kv-heads': { type: 'string', default: '32' },
      type: { type: 'string', default: 'Q4_0' },
    },
  });
  if (values['tokenizer-from'] === undefined || values.out === undefined)
    throw new Error('--tokenizer-from REAL.gguf and --out FILE are required');
  const type = GgmlType[values.type as keyof typeof GgmlType];
  if (type === undefined) throw new Error(`--type: unknown ggml type ${values.type}`);
  const [layers, hidden, ffn, heads, kvHeads] = [
    values.layers,
    values.hidden,
    values.ffn,
    values.heads,
    values['kv-heads'],
  ].map(Number) as [number, number, number, number, number];
  const file = randomLlamaGguf(readGguf(values['tokenizer-from']), { layers, hidden, ffn, heads, kvHeads }, () => type);
  // In pieces: one write takes at most 2 GiB, and an 8B shape is ~4 GB.
  const fd = openSync(values.out, 'w');
  try {
    for (let at = 0; at < file.length; at += 1 << 30)
      writeSync(fd, file.subarray(at, Math.min(file.length, at + (1 << 30))));
  } finally {
    closeSync(fd);
  }
  process.stderr.write(
    `${values.out}: ${layers} layers, hidden ${hidden}, ffn ${ffn}, ${heads}/${kvHeads} heads, ${values.type}, ${(file.length / 1e9).toFixed(2)} GB\n`,
  );
}

main();
