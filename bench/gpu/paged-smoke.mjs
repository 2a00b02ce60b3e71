// Issue 30 diagnosis: does the paged graph (anpd convert --attention paged) run on ORT's CUDA provider?
// One sequence: a 7-token prefill, then 3 decode steps; prints argmax ids and times.
//   node bench/gpu/paged-smoke.mjs /tmp/mp
import { readFileSync } from 'node:fs';
const { DeviceSession, nativeAddon, ONNX_TYPES } = await import('../../dist/src/runtime/native-run.js');
const dir = process.argv[2];
const m = JSON.parse(readFileSync(`${dir}/anpd-model.json`, 'utf8'));
const session = new DeviceSession(nativeAddon(), `${dir}/model.onnx`, {
  target: 'cuda',
  intraOpThreads: 1,
  cudaGraphs: false,
});
const bs = m.kvBlockSize,
  blocks = 8,
  bytes = blocks * bs * m.kvHeads * m.headDim * 2;
const caches = Array.from({ length: 2 * m.layers }, () => session.alloc(bytes));
const ids = session.alloc(512 * 8),
  cu = session.alloc(8),
  past = session.alloc(4),
  table = session.alloc(blocks * 4);
const index = session.alloc(512 * 8),
  logits = session.alloc(4 * m.vocab * 4),
  argmax = session.alloc(512 * 8);
session.write(
  table,
  0,
  Int32Array.from({ length: blocks }, (_, i) => i),
);
const i32 = ONNX_TYPES.int32,
  i64 = ONNX_TYPES.int64;
function forward(tokens, pastLen) {
  const T = tokens.length;
  session.write(ids, 0, BigInt64Array.from(tokens.map(BigInt)));
  session.write(cu, 0, Int32Array.of(0, T));
  session.write(past, 0, Int32Array.of(pastLen));
  session.write(index, 0, BigInt64Array.of(BigInt(T - 1)));
  const inputs = {
    input_ids: { data: ids, dims: [1, T], type: i64 },
    cumulative_sequence_length: { data: cu, dims: [2], type: i32 },
    past_seqlens: { data: past, dims: [1], type: i32 },
    block_table: { data: table, dims: [1, blocks], type: i32 },
    attention_metadata: { data: Int32Array.of(T, blocks * bs), dims: [2], type: i32 },
    logits_index: { data: index, dims: [1], type: i64 },
  };
  const outputs = {
    logits: { data: logits, dims: [1, 1, m.vocab], type: ONNX_TYPES.float32 },
    argmax: { data: argmax, dims: [1, 1], type: i64 },
  };
  const dims = [blocks, bs, m.kvHeads, m.headDim];
  for (let l = 0; l < m.layers; l++) {
    const k = { data: caches[2 * l], dims, type: ONNX_TYPES.float16 },
      v = { data: caches[2 * l + 1], dims, type: ONNX_TYPES.float16 };
    inputs[`key_cache.${l}`] = k;
    inputs[`value_cache.${l}`] = v;
    outputs[`key_cache_out.${l}`] = k;
    outputs[`value_cache_out.${l}`] = v;
  }
  const t0 = performance.now();
  session.run(inputs, outputs, -1);
  const out = new BigInt64Array(1);
  session.read(argmax, 0, out);
  return { id: Number(out[0]), ms: +(performance.now() - t0).toFixed(2) };
}
let r = forward([1, 9690, 198, 2683, 359, 253, 5356], 0);
const got = [r];
let len = 7;
for (let i = 0; i < 6; i++) {
  r = forward([r.id], len);
  len++;
  got.push(r);
}
console.log('paged', JSON.stringify(got));
