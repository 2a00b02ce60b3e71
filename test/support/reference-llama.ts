/**
 * An independent, plain-JS forward pass of the llama family, written from the architecture's
 * definition (RMSNorm, rotary embedding on adjacent pairs as llama.cpp's GGUF layout stores Q/K,
 * grouped-query causal attention, SwiGLU MLP, tied LM head). Slow and simple on purpose: it checks
 * the ONNX graph, not the weights, so it takes the weights the converter produced, dequantized.
 */
import type { GgufFile } from '../../src/convert/gguf-reader.js';
import { readHyperParams } from '../../src/convert/llama-graph.js';
import { dequantize, dequantizeNBits, toNBits, toNBitsParts } from '../../src/convert/quantize.js';

interface Layer {
  attnNorm: Float32Array;
  ffnNorm: Float32Array;
  q: Float32Array; k: Float32Array; v: Float32Array; o: Float32Array;
  gate: Float32Array; up: Float32Array; down: Float32Array;
}

function matvec(w: Float32Array, rows: number, cols: number, x: Float32Array): Float32Array {
  const y = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const base = r * cols;
    for (let c = 0; c < cols; c++) s += w[base + c]! * x[c]!;
    y[r] = s;
  }
  return y;
}

function rmsNorm(x: Float32Array, w: Float32Array, eps: number): Float32Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * inv * w[i]!);
}

export class ReferenceLlama {
  private readonly hp;
  private readonly layers: Layer[] = [];
  private readonly embd: Float32Array;
  private readonly head: Float32Array;
  private readonly outNorm: Float32Array;
  private readonly keys: Float32Array[][] = [];
  private readonly values: Float32Array[][] = [];

  /**
   * weights 'converted' (default): the matrices as the converter packs them for MatMulNBits
   * (fused q/k/v and gate/up in one width), dequantized — checks the graph. 'exact': the GGUF's own
   * values, dequantized as ggml does — measures what the packing costs.
   */
  constructor(file: GgufFile, layerCount?: number, weights: 'converted' | 'exact' = 'converted') {
    this.hp = readHyperParams(file);
    const t = (n: string) => file.tensors.get(n)!;
    const exact = weights === 'exact';
    const nbits = (n: string) => (exact ? dequantize(file, t(n)) : dequantizeNBits(toNBits(file, t(n))));
    const fused = (names: string[]) => (exact ? names.map((n) => dequantize(file, t(n))) : toNBitsParts(file, names.map(t)).map(dequantizeNBits));
    const count = layerCount ?? this.hp.layers;
    for (let l = 0; l < count; l++) {
      const p = `blk.${l}`;
      const [q, k, v] = fused([`${p}.attn_q.weight`, `${p}.attn_k.weight`, `${p}.attn_v.weight`]) as [Float32Array, Float32Array, Float32Array];
      const [gate, up] = fused([`${p}.ffn_gate.weight`, `${p}.ffn_up.weight`]) as [Float32Array, Float32Array];
      this.layers.push({
        attnNorm: dequantize(file, t(`${p}.attn_norm.weight`)),
        ffnNorm: dequantize(file, t(`${p}.ffn_norm.weight`)),
        q, k, v, o: nbits(`${p}.attn_output.weight`),
        gate, up, down: nbits(`${p}.ffn_down.weight`),
      });
      this.keys.push([]);
      this.values.push([]);
    }
    this.embd = dequantize(file, t('token_embd.weight'));
    this.head = file.tensors.has('output.weight') ? nbits('output.weight') : nbits('token_embd.weight');
    this.outNorm = dequantize(file, t('output_norm.weight'));
  }

  private rope(x: Float32Array, heads: number, pos: number): void {
    const d = this.hp.headDim;
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < d / 2; i++) {
        const angle = pos * this.hp.ropeTheta ** ((-2 * i) / d);
        const c = Math.cos(angle), s = Math.sin(angle);
        const a = h * d + 2 * i, b = a + 1;
        const x0 = x[a]!, x1 = x[b]!;
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
      }
    }
  }

  /** Feeds one token at the next position; returns its logits. */
  step(token: number): Float32Array {
    const { hidden, heads, kvHeads, headDim, ffn, vocab, rmsEps } = this.hp;
    const pos = this.keys[0]!.length;
    let x = this.embd.slice(token * hidden, (token + 1) * hidden);
    for (let l = 0; l < this.layers.length; l++) {
      const L = this.layers[l]!;
      const h = rmsNorm(x, L.attnNorm, rmsEps);
      const q = matvec(L.q, heads * headDim, hidden, h);
      const k = matvec(L.k, kvHeads * headDim, hidden, h);
      const v = matvec(L.v, kvHeads * headDim, hidden, h);
      this.rope(q, heads, pos);
      this.rope(k, kvHeads, pos);
      this.keys[l]!.push(k);
      this.values[l]!.push(v);
      const attn = new Float32Array(heads * headDim);
      const group = heads / kvHeads;
      for (let hh = 0; hh < heads; hh++) {
        const kvh = Math.floor(hh / group);
        const scores = this.keys[l]!.map((kp) => {
          let s = 0;
          for (let i = 0; i < headDim; i++) s += q[hh * headDim + i]! * kp[kvh * headDim + i]!;
          return s / Math.sqrt(headDim);
        });
        const m = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - m));
        const z = e.reduce((a, b) => a + b, 0);
        this.values[l]!.forEach((vp, j) => {
          for (let i = 0; i < headDim; i++) attn[hh * headDim + i] = attn[hh * headDim + i]! + (e[j]! / z) * vp[kvh * headDim + i]!;
        });
      }
      const o = matvec(L.o, hidden, heads * headDim, attn);
      x = x.map((xv, i) => xv + o[i]!);
      const h2 = rmsNorm(x, L.ffnNorm, rmsEps);
      const g = matvec(L.gate, ffn, hidden, h2);
      const u = matvec(L.up, ffn, hidden, h2);
      const a = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]!);
      const d = matvec(L.down, hidden, ffn, a);
      x = x.map((xv, i) => xv + d[i]!);
    }
    return matvec(this.head, vocab, hidden, rmsNorm(x, this.outNorm, rmsEps));
  }
}
