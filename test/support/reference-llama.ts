/**
 * An independent, plain-JS forward pass of the llama family — llama (rope on adjacent pairs, as
 * llama.cpp's GGUF layout stores Q/K; Llama 3's rope_freqs), qwen2 (q/k/v biases), qwen3 (per-head
 * q/k RMSNorm) and gemma3 (scaled embeddings, per-head q/k norms, norms after attention and MLP,
 * GELU-tanh, sliding-window layers with their own rope base) — written from the architectures'
 * definitions: RMSNorm, rotary embedding, grouped-query causal attention, gated MLP, tied LM head.
 * Slow and simple on purpose: it checks the ONNX graph, not the weights, so it takes the weights
 * the converter produced, dequantized.
 */
import type { GgufFile } from '../../src/convert/gguf-reader.js';
import { readHyperParams } from '../../src/convert/decoder-graph.js';
import { dequantize, dequantizeNBits, toNBits, toNBitsParts } from '../../src/convert/quantize.js';

interface Layer {
  attnNorm: Float32Array;
  ffnNorm: Float32Array;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  o: Float32Array;
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
  qBias: Float32Array | undefined;
  kBias: Float32Array | undefined;
  vBias: Float32Array | undefined;
  qNorm: Float32Array | undefined;
  kNorm: Float32Array | undefined;
  postAttnNorm: Float32Array | undefined;
  postFfnNorm: Float32Array | undefined;
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

function add(x: Float32Array, y: Float32Array | undefined): Float32Array {
  return y === undefined ? x : x.map((v, i) => v + y[i]!);
}

function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
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
    const optional = (n: string) => (file.tensors.has(n) ? dequantize(file, t(n)) : undefined);
    const exact = weights === 'exact';
    const nbits = (n: string) => (exact ? dequantize(file, t(n)) : dequantizeNBits(toNBits(file, t(n))));
    const fused = (names: string[]) =>
      exact ? names.map((n) => dequantize(file, t(n))) : toNBitsParts(file, names.map(t)).map(dequantizeNBits);
    const count = layerCount ?? this.hp.layers;
    for (let l = 0; l < count; l++) {
      const p = `blk.${l}`;
      const [q, k, v] = fused([`${p}.attn_q.weight`, `${p}.attn_k.weight`, `${p}.attn_v.weight`]) as [
        Float32Array,
        Float32Array,
        Float32Array,
      ];
      const [gate, up] = fused([`${p}.ffn_gate.weight`, `${p}.ffn_up.weight`]) as [Float32Array, Float32Array];
      this.layers.push({
        attnNorm: dequantize(file, t(`${p}.attn_norm.weight`)),
        ffnNorm: dequantize(file, t(`${p}.ffn_norm.weight`)),
        q,
        k,
        v,
        o: nbits(`${p}.attn_output.weight`),
        gate,
        up,
        down: nbits(`${p}.ffn_down.weight`),
        qBias: optional(`${p}.attn_q.bias`),
        kBias: optional(`${p}.attn_k.bias`),
        vBias: optional(`${p}.attn_v.bias`),
        qNorm: optional(`${p}.attn_q_norm.weight`),
        kNorm: optional(`${p}.attn_k_norm.weight`),
        postAttnNorm: optional(`${p}.post_attention_norm.weight`),
        postFfnNorm: optional(`${p}.post_ffw_norm.weight`),
      });
      this.keys.push([]);
      this.values.push([]);
    }
    this.embd = dequantize(file, t('token_embd.weight'));
    this.head = file.tensors.has('output.weight') ? nbits('output.weight') : nbits('token_embd.weight');
    this.outNorm = dequantize(file, t('output_norm.weight'));
  }

  /** Rotates each head of x in place: adjacent pairs (llama) or the two halves (NeoX). */
  private rope(x: Float32Array, heads: number, pos: number, sliding: boolean): void {
    const d = this.hp.headDim;
    const theta = sliding ? this.hp.ropeThetaLocal : this.hp.ropeTheta;
    const scale = sliding ? 1 : this.hp.ropeScale;
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < d / 2; i++) {
        const angle = ((pos / scale) * theta ** ((-2 * i) / d)) / (this.hp.ropeFreqFactors?.[i] ?? 1);
        const c = Math.cos(angle),
          s = Math.sin(angle);
        const a = this.hp.ropeInterleaved ? h * d + 2 * i : h * d + i;
        const b = this.hp.ropeInterleaved ? a + 1 : a + d / 2;
        const x0 = x[a]!,
          x1 = x[b]!;
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
      }
    }
  }

  private headNorm(x: Float32Array, heads: number, w: Float32Array | undefined): Float32Array {
    if (w === undefined) return x;
    const d = this.hp.headDim;
    const out = new Float32Array(x.length);
    for (let h = 0; h < heads; h++) out.set(rmsNorm(x.subarray(h * d, (h + 1) * d), w, this.hp.rmsEps), h * d);
    return out;
  }

  /** Feeds one token at the next position; returns its logits. */
  step(token: number): Float32Array {
    const { hidden, heads, kvHeads, headDim, ffn, vocab, rmsEps } = this.hp;
    const pos = this.keys[0]!.length;
    let x = this.embd.slice(token * hidden, (token + 1) * hidden).map((v) => v * this.hp.embedScale);
    for (let l = 0; l < this.layers.length; l++) {
      const L = this.layers[l]!;
      const sliding = this.hp.slidingLayers[l] === true;
      const h = rmsNorm(x, L.attnNorm, rmsEps);
      const q = this.headNorm(add(matvec(L.q, heads * headDim, hidden, h), L.qBias), heads, L.qNorm);
      const k = this.headNorm(add(matvec(L.k, kvHeads * headDim, hidden, h), L.kBias), kvHeads, L.kNorm);
      const v = add(matvec(L.v, kvHeads * headDim, hidden, h), L.vBias);
      this.rope(q, heads, pos, sliding);
      this.rope(k, kvHeads, pos, sliding);
      this.keys[l]!.push(k);
      this.values[l]!.push(v);
      // A sliding-window layer sees the last `slidingWindow` positions, itself included.
      const first = sliding ? Math.max(0, pos + 1 - this.hp.slidingWindow) : 0;
      const attn = new Float32Array(heads * headDim);
      const group = heads / kvHeads;
      for (let hh = 0; hh < heads; hh++) {
        const kvh = Math.floor(hh / group);
        const visible = this.keys[l]!.slice(first);
        const scores = visible.map((kp) => {
          let s = 0;
          for (let i = 0; i < headDim; i++) s += q[hh * headDim + i]! * kp[kvh * headDim + i]!;
          return s * this.hp.attentionScale;
        });
        const m = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - m));
        const z = e.reduce((a, b) => a + b, 0);
        this.values[l]!.slice(first).forEach((vp, j) => {
          for (let i = 0; i < headDim; i++)
            attn[hh * headDim + i] = attn[hh * headDim + i]! + (e[j]! / z) * vp[kvh * headDim + i]!;
        });
      }
      let o = matvec(L.o, hidden, heads * headDim, attn);
      if (L.postAttnNorm !== undefined) o = rmsNorm(o, L.postAttnNorm, rmsEps);
      x = x.map((xv, i) => xv + o[i]!);
      const h2 = rmsNorm(x, L.ffnNorm, rmsEps);
      const g = matvec(L.gate, ffn, hidden, h2);
      const u = matvec(L.up, ffn, hidden, h2);
      const act = this.hp.activation === 'silu' ? (gv: number) => gv / (1 + Math.exp(-gv)) : geluTanh;
      const a = g.map((gv, i) => act(gv) * u[i]!);
      let d = matvec(L.down, hidden, ffn, a);
      if (L.postFfnNorm !== undefined) d = rmsNorm(d, L.postFfnNorm, rmsEps);
      x = x.map((xv, i) => xv + d[i]!);
    }
    const logits = matvec(this.head, vocab, hidden, rmsNorm(x, this.outNorm, rmsEps));
    const cap = this.hp.finalLogitSoftcap;
    return cap > 0 ? logits.map((z) => Math.tanh(z / cap) * cap) : logits;
  }
}
