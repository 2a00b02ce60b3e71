/**
 * Models past ONNX's 2 GiB protobuf limit (an 8B GGUF at 4 bits is ~4.5 GB of weights) are written
 * with their weights in model.onnx.data (ONNX external data). The default model converted that way
 * must load and decode exactly as the one-file conversion does.
 */
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { NO_SPECULATION } from '../src/contract.js';
import { convertGguf, ONNX_DATA_FILE, ONNX_FILE } from '../src/convert/convert-gguf.js';
import { DEFAULT_GRAPH_OPTIONS } from '../src/convert/decoder-graph.js';
import { createEngine } from '../src/engine/create-engine.js';
import { generateOnce } from '../tools/generate-once.js';
import { defaultEngine, defaultGguf, TEST_FORWARD_COST } from './support/default-model.js';

const dir = mkdtempSync(join(tmpdir(), 'anpd-external-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

test('a model converted with its weights in model.onnx.data decodes token for token as the one-file model', async (t) => {
  const out = join(dir, 'model');
  const result = convertGguf(await defaultGguf(), out, DEFAULT_GRAPH_OPTIONS, undefined, { inlineBytesMax: 0 });
  t.true(existsSync(join(out, ONNX_DATA_FILE)));
  const graphBytes = statSync(join(out, ONNX_FILE)).size;
  const dataBytes = statSync(join(out, ONNX_DATA_FILE)).size;
  t.true(graphBytes < 2_000_000, `model.onnx keeps the graph and small tensors only (${graphBytes} bytes)`);
  t.true(dataBytes > 60_000_000, `the weights are in ${ONNX_DATA_FILE} (${dataBytes} bytes)`);
  t.true(result.onnxBytes >= graphBytes + dataBytes);

  const external = await createEngine(
    out,
    { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 1024 },
    { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } },
  );
  const inline = await defaultEngine();
  try {
    for (const prompt of ['Name three rivers in Europe.', 'Write a Python function that adds two numbers.']) {
      const a = await generateOnce(inline, prompt, NO_SPECULATION, 24);
      const b = await generateOnce(external, prompt, NO_SPECULATION, 24);
      t.deepEqual(b.tokens, a.tokens, prompt);
    }
  } finally {
    await external.dispose();
  }
});
