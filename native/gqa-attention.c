/*
 * A CPU GroupQueryAttention for the native runner, registered as an ONNX Runtime custom op.
 *
 * Why: ORT's CPU GroupQueryAttention runs, per query head, an SGEMM of the query rows against the
 * whole live key cache (an SGEMM that packs its transposed operand into a panel first); the three query
 * heads that share a KV head each do so. A decode step therefore moves the cache several times, and
 * its cost grows ~4 µs per cached position (docs/perf-notes.md, "Attention that reads the cache
 * once"). Here each KV head's keys and values are read once per forward, for all the query heads
 * and rows that share them, in fixed 128-position blocks (split-K, as flash-decoding does) that the
 * intra-op threads share out.
 *
 * Exactness: a row's result depends only on its own query, the cache and its position, never on
 * how many rows the forward carries or how the blocks are shared out: blocks have fixed absolute
 * boundaries, each block's partial (max, sum, weighted values) is computed in one fixed order, and
 * the partials are merged in block order. It is built without FP contraction
 * (scripts/build-native.mjs): with multiplies and adds fused, plain and speculative decoding
 * diverged (docs/perf-notes.md).
 *
 * Semantics are those of com.microsoft GroupQueryAttention as our graphs use it: packed QKV input
 * or separate query/key/value inputs, past and present KV sharing one buffer of
 * [1, kv_heads, capacity, head_size] floats, do_rotary with cos/sin caches (interleaved or not),
 * batch 1, an optional local window (a query at position p sees the local_window_size keys
 * (p − local_window_size, p], as ORT 1.30's kernels do), no softcap — with two
 * differences: the key buffer is laid out transposed, [kv_heads][head_size][capacity], so that a
 * block's scores vectorize across keys without a transposing copy. Values keep ORT's layout. And
 * seqlens_k names the last real row (ORT's: the last row): pad rows after it get their keys and
 * values written but no attention, their outputs zeroed. The runtime knows both
 * (src/runtime/host-kv-sequence.ts); every session of a model runs this kernel or none does, so one
 * cache never meets both kernels.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "gqa-attention.h"

#define BLOCK_KEYS 128

/* The hot loops get an AVX-512 and an AVX2 build beside the baseline one, picked at load time
 * (one binary serves any x86-64 host: the image may run on another CPU than it was built on). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT
#endif
#define HEAD_SIZE_MAX 256

static const OrtApi *g_api;

typedef struct {
  int64_t heads;
  int64_t kv_heads;
  int64_t interleaved;
  int64_t window; /* local_window_size: keys a query sees, its own included (<= 0: all) */
  float scale; /* 0: 1/sqrt(head_size) */
} GqaKernel;

/* exp(x) for x <= 0 (scores minus their max): range reduction to 2^n · e^r, |r| <= ln2/2, and a
 * degree-6 polynomial; plain arithmetic so that the compiler vectorizes the loops that call it. */
static inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float log2e = 1.44269504088896341f;
  float t = x * log2e;
  /* round to nearest via the 1.5·2^23 trick (x is bounded, so no overflow) */
  float rounded = (t + 12582912.0f) - 12582912.0f;
  float r = x - rounded * 0.693359375f;
  r = r + rounded * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)rounded + 127) << 23;
  float power;
  memcpy(&power, &bits, sizeof power);
  return p * power;
}

#define SLICE_KEYS 32

/* A thread's contiguous copy of one block's keys (on the heap: 128 KB is much for a stack). */
static __thread float *t_tile;

static float *tile_scratch(void) {
  if (t_tile == NULL) t_tile = malloc(HEAD_SIZE_MAX * BLOCK_KEYS * sizeof(float));
  return t_tile;
}

/* Query vectors processed together: they share every key and value load. */
#define TILE 4

/*
 * scores[t][0, width) = q[t] · keys j for the TILE query vectors of a tile. Keys are kept
 * transposed ([head_size][capacity] per KV head, `stride` = capacity) so that scores vectorize
 * across keys. Every vector's sums are the same operations in the same order whichever tile
 * slot it occupies (a short tile repeats its last vector), so its scores do not depend on
 * how many rows the forward carries.
 */
static inline __attribute__((always_inline)) void tile_scores(const float *const *q, const float *kt, size_t stride, float (*scores)[BLOCK_KEYS],
                                                              size_t j0, size_t d, size_t width) {
  if (width == SLICE_KEYS) {
    float a0[SLICE_KEYS], a1[SLICE_KEYS], a2[SLICE_KEYS], a3[SLICE_KEYS];
    for (size_t j = 0; j < SLICE_KEYS; j++) a0[j] = a1[j] = a2[j] = a3[j] = 0.0f;
    for (size_t e = 0; e < d; e++) {
      const float x0 = q[0][e], x1 = q[1][e], x2 = q[2][e], x3 = q[3][e];
      const float *row = kt + e * stride + j0;
      for (size_t j = 0; j < SLICE_KEYS; j++) {
        const float r = row[j];
        a0[j] += x0 * r;
        a1[j] += x1 * r;
        a2[j] += x2 * r;
        a3[j] += x3 * r;
      }
    }
    memcpy(scores[0] + j0, a0, sizeof a0);
    memcpy(scores[1] + j0, a1, sizeof a1);
    memcpy(scores[2] + j0, a2, sizeof a2);
    memcpy(scores[3] + j0, a3, sizeof a3);
    return;
  }
  /* A slice cut short by the end of the buffer (where it is cut depends on the position only). */
  for (size_t t = 0; t < TILE; t++)
    for (size_t j = 0; j < width; j++) {
      float acc = 0.0f;
      for (size_t e = 0; e < d; e++) acc += q[t][e] * kt[e * stride + j0 + j];
      scores[t][j0 + j] = acc;
    }
}

/*
 * out[t][0, d) = Σ_{j < n[t]} p[t][j] · v_j. Keys below the tile's smallest n go through all four
 * at once; each vector then finishes its own keys in order, so every vector sees the same
 * sequence of operations as it would alone. Called with a constant d where it matters.
 */
static inline __attribute__((always_inline)) void tile_values(float (*p)[BLOCK_KEYS], const size_t *n, const float *v, float *const *out, const size_t d) {
  float o[TILE][HEAD_SIZE_MAX];
  for (size_t t = 0; t < TILE; t++)
    for (size_t e = 0; e < d; e++) o[t][e] = 0.0f;
  size_t shared = n[0];
  for (size_t t = 1; t < TILE; t++) if (n[t] < shared) shared = n[t];
  for (size_t j = 0; j < shared; j++) {
    const float p0 = p[0][j], p1 = p[1][j], p2 = p[2][j], p3 = p[3][j];
    const float *vr = v + j * d;
    for (size_t e = 0; e < d; e++) {
      const float x = vr[e];
      o[0][e] += p0 * x;
      o[1][e] += p1 * x;
      o[2][e] += p2 * x;
      o[3][e] += p3 * x;
    }
  }
  for (size_t t = 0; t < TILE; t++) {
    for (size_t j = shared; j < n[t]; j++) {
      const float pj = p[t][j];
      const float *vr = v + j * d;
      for (size_t e = 0; e < d; e++) o[t][e] += pj * vr[e];
    }
    memcpy(out[t], o[t], d * sizeof(float));
  }
}

typedef struct {
  const float *q;      /* rotated queries [rows][heads][head_size] */
  const float *key;    /* present key, transposed: [kv_heads][head_size][capacity] */
  const float *value;  /* present value: [kv_heads][capacity][head_size] */
  float *partials;     /* [kv_heads][blocks][group][rows][head_size + 2] */
  size_t rows, heads, kv_heads, head_size, capacity, past, blocks;
  size_t window; /* 0: none */
} Work;

/*
 * One (KV head, block) item: for every query head of the group and every row, the block's keys
 * that the row may see (causal), their max score m, sum l = Σ exp(s − m) and o = Σ exp(s − m)·v.
 * The group's (head, row) query vectors go through in tiles of TILE.
 */
HOT static void block_partials(void *data, size_t item) {
  const Work *w = data;
  const size_t d = w->head_size, group = w->heads / w->kv_heads;
  const size_t g = item / w->blocks, b = item % w->blocks;
  const size_t first = b * BLOCK_KEYS;
  const size_t last_visible = w->past + w->rows; /* keys [0, last_visible) exist after this forward */
  size_t count = last_visible - first;
  if (count > BLOCK_KEYS) count = BLOCK_KEYS;
  const float *kt = w->key + g * d * w->capacity + first;
  size_t stride = w->capacity;
  const float *v = w->value + (g * w->capacity + first) * d;
  float scores[TILE][BLOCK_KEYS];
  /* With many query vectors (prefill), the block's keys are first copied into one contiguous
   * tile: in the cache its rows lie a power-of-two stride apart and evict each other from L1.
   * The values are the same, so the scores are too. */
  float *local = group * w->rows >= 4 * TILE ? tile_scratch() : NULL;
  if (local != NULL) {
    const size_t room = w->capacity - first;
    const size_t width = room < BLOCK_KEYS ? room : BLOCK_KEYS;
    for (size_t e = 0; e < d; e++) memcpy(local + e * BLOCK_KEYS, kt + e * stride, width * sizeof(float));
    kt = local;
    stride = BLOCK_KEYS;
  }
  /* Vectors i = h * rows + s; rows whose causal range ends before this block are skipped. */
  const size_t vectors = group * w->rows;
  size_t i = 0;
  while (i < vectors) {
    const float *q[TILE];
    float *out[TILE];
    size_t n[TILE], lo[TILE];
    size_t taken = 0, widest = 0;
    for (; i < vectors && taken < TILE; i++) {
      const size_t h = i / w->rows, s = i % w->rows;
      float *o = w->partials + (((g * w->blocks + b) * group + h) * w->rows + s) * (d + 2);
      const size_t visible_end = w->past + s + 1; /* causal: keys [0, past + s] */
      size_t visible = visible_end > first ? visible_end - first : 0;
      if (visible > count) visible = count;
      /* Sliding window: keys (position − window, position]; those before it in this block are skipped. */
      const size_t window_start = w->window > 0 && visible_end > w->window ? visible_end - w->window : 0;
      const size_t skipped = window_start > first ? window_start - first : 0;
      if (skipped >= visible) visible = 0;
      if (visible == 0) {
        o[0] = -INFINITY;
        o[1] = 0.0f;
        memset(o + 2, 0, d * sizeof(float));
        continue;
      }
      q[taken] = w->q + (s * w->heads + g * group + h) * d;
      out[taken] = o + 2;
      n[taken] = visible;
      lo[taken] = skipped;
      if (visible > widest) widest = visible;
      taken++;
    }
    if (taken == 0) continue;
    /* A short tile repeats its last vector (computed twice, written once). */
    float spare[TILE - 1][HEAD_SIZE_MAX + 2];
    for (size_t t = taken; t < TILE; t++) {
      q[t] = q[taken - 1];
      n[t] = n[taken - 1];
      lo[t] = lo[taken - 1];
      out[t] = spare[t - taken] + 2; /* out[t][-2..-1] take m and l, as for the others */
    }
    for (size_t j0 = 0; j0 < widest; j0 += SLICE_KEYS) {
      const size_t room = w->capacity - first - j0;
      tile_scores(q, kt, stride, scores, j0, d, room < SLICE_KEYS ? room : SLICE_KEYS);
    }
    for (size_t t = 0; t < TILE; t++) {
      float *sc = scores[t];
      for (size_t j = 0; j < lo[t]; j++) sc[j] = -INFINITY;
      /* The max in 16 lanes (exact in any order), then the exp: separate loops so both vectorize.
       * The queries were scaled by 1/sqrt(head_size) when rotated. */
      float top[16];
      for (size_t k = 0; k < 16; k++) top[k] = -INFINITY;
      size_t j = 0;
      for (; j + 16 <= n[t]; j += 16)
        for (size_t k = 0; k < 16; k++) top[k] = sc[j + k] > top[k] ? sc[j + k] : top[k];
      float m = -INFINITY;
      for (; j < n[t]; j++) m = sc[j] > m ? sc[j] : m;
      for (size_t k = 0; k < 16; k++) m = top[k] > m ? top[k] : m;
      for (j = 0; j < n[t]; j++) sc[j] = exp_nonpositive(sc[j] - m);
      for (j = 0; j < lo[t]; j++) sc[j] = 0.0f; /* outside the window: no weight (exp_nonpositive floors at e^-87) */
      /* The sum in 16 lanes (key j in lane j % 16), then the lanes in a fixed order: it
       * vectorizes, and a vector's sum is still always the same operations. */
      float lanes[16] = {0};
      for (j = 0; j + 16 <= n[t]; j += 16)
        for (size_t k = 0; k < 16; k++) lanes[k] += sc[j + k];
      for (size_t k = 0; j < n[t]; j++, k++) lanes[k] += sc[j];
      for (size_t k = 8; k > 0; k /= 2)
        for (size_t i2 = 0; i2 < k; i2++) lanes[i2] += lanes[i2 + k];
      const float l = lanes[0];
      out[t][-2] = m;
      out[t][-1] = l;
    }
    if (d == 64) tile_values(scores, n, v, out, 64);
    else if (d == 128) tile_values(scores, n, v, out, 128);
    else tile_values(scores, n, v, out, d);
  }
}

typedef struct {
  const Work *work;
  float *output; /* [rows][heads][head_size] */
} Merge;

/* One (query head, row) item: the blocks' partials combined in block order. */
HOT static void merge_partials(void *data, size_t item) {
  const Merge *mg = data;
  const Work *w = mg->work;
  const size_t d = w->head_size, group = w->heads / w->kv_heads;
  const size_t head = item / w->rows, s = item % w->rows;
  const size_t g = head / group, h = head % group;
  float m = -INFINITY;
  for (size_t b = 0; b < w->blocks; b++) {
    const float *p = w->partials + (((g * w->blocks + b) * group + h) * w->rows + s) * (d + 2);
    if (p[0] > m) m = p[0];
  }
  float o[HEAD_SIZE_MAX];
  for (size_t e = 0; e < d; e++) o[e] = 0.0f;
  float l = 0.0f;
  for (size_t b = 0; b < w->blocks; b++) {
    const float *p = w->partials + (((g * w->blocks + b) * group + h) * w->rows + s) * (d + 2);
    if (p[1] == 0.0f) continue;
    const float f = exp_nonpositive(p[0] - m);
    l += p[1] * f;
    for (size_t e = 0; e < d; e++) o[e] += p[2 + e] * f;
  }
  float *out = mg->output + (s * w->heads + head) * d;
  const float inv = 1.0f / l;
  for (size_t e = 0; e < d; e++) out[e] = o[e] * inv;
}

/* Rotary embedding of one head vector at `position` (cos/sin rows of head_size / 2). */
static void rotate(const float *in, float *out, size_t d, const float *cos_row, const float *sin_row, int interleaved) {
  const size_t half = d / 2;
  if (interleaved) {
    for (size_t i = 0; i < half; i++) {
      const float a = in[2 * i], b = in[2 * i + 1];
      out[2 * i] = a * cos_row[i] - b * sin_row[i];
      out[2 * i + 1] = b * cos_row[i] + a * sin_row[i];
    }
  } else {
    for (size_t i = 0; i < half; i++) {
      const float a = in[i], b = in[i + half];
      out[i] = a * cos_row[i] - b * sin_row[i];
      out[i + half] = b * cos_row[i] + a * sin_row[i];
    }
  }
}

/*
 * Working memory of the calling thread (ORT runs a session's kernels on the thread that called
 * Run; each engine replica has its own): kept between calls, so a forward does not map and fault
 * in fresh pages for every layer (a 512-row prefill chunk at 2,048 positions needs ~19 MB).
 */
static __thread float *t_scratch;
static __thread size_t t_scratch_floats;

static float *scratch(size_t floats) {
  if (floats > t_scratch_floats) {
    free(t_scratch);
    t_scratch = malloc(floats * sizeof(float));
    t_scratch_floats = t_scratch == NULL ? 0 : floats;
  }
  return t_scratch;
}

/*
 * Frees the calling thread's working memory; ort-run.c calls it when a Node environment (the main
 * thread or a replica's worker) is torn down. ORT's pool threads keep their key tiles (128 KB
 * each) until the process ends: a destructor (pthread key) would run after the addon may have
 * been unloaded with its worker.
 */
void anpd_gqa_release_thread_memory(void) {
  free(t_scratch);
  t_scratch = NULL;
  t_scratch_floats = 0;
  free(t_tile);
  t_tile = NULL;
}

static OrtStatus *fail(const char *message) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, message); }

#define TRY(call) do { OrtStatus *st_ = (call); if (st_ != NULL) return st_; } while (0)

static OrtStatus *tensor_of(OrtKernelContext *ctx, size_t index, const OrtValue **value, int64_t *dims, size_t *rank) {
  TRY(g_api->KernelContext_GetInput(ctx, index, value));
  if (*value == NULL) return fail("anpd GroupQueryAttention: a required input is missing");
  OrtTensorTypeAndShapeInfo *info;
  TRY(g_api->GetTensorTypeAndShape(*value, &info));
  OrtStatus *st = g_api->GetDimensionsCount(info, rank);
  if (st == NULL && *rank > 4) st = fail("anpd GroupQueryAttention: an input has rank > 4");
  if (st == NULL) st = g_api->GetDimensions(info, dims, *rank);
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  return st;
}

static OrtStatus *ORT_API_CALL compute(void *op_kernel, OrtKernelContext *ctx) {
  const GqaKernel *kernel = op_kernel;
  const OrtValue *qkv_value, *past_key_value, *past_value_value, *seqlens_value, *total_value, *cos_value, *sin_value;
  int64_t qdims[4], kdims[4], vdims[4], sdims[4], tdims[4], cdims[4], sndims[4];
  size_t qrank, krank, vrank, srank, trank, crank, snrank;
  TRY(tensor_of(ctx, 0, &qkv_value, qdims, &qrank));
  TRY(tensor_of(ctx, 3, &past_key_value, kdims, &krank));
  TRY(tensor_of(ctx, 4, &past_value_value, vdims, &vrank));
  TRY(tensor_of(ctx, 5, &seqlens_value, sdims, &srank));
  TRY(tensor_of(ctx, 6, &total_value, tdims, &trank));
  TRY(tensor_of(ctx, 7, &cos_value, cdims, &crank));
  TRY(tensor_of(ctx, 8, &sin_value, sndims, &snrank));
  const OrtValue *key_value, *value_value;
  TRY(g_api->KernelContext_GetInput(ctx, 1, &key_value));
  TRY(g_api->KernelContext_GetInput(ctx, 2, &value_value));
  const int packed = key_value == NULL;
  if (!packed && value_value == NULL) return fail("anpd GroupQueryAttention: a key input needs a value input");
  if (qrank != 3 || qdims[0] != 1) return fail("anpd GroupQueryAttention: query must be [1, rows, width]");
  if (krank != 4 || kdims[0] != 1 || kdims[1] != kernel->kv_heads) return fail("anpd GroupQueryAttention: past key must be [1, kv_heads, capacity, head_size]");
  const size_t heads = (size_t)kernel->heads, kv_heads = (size_t)kernel->kv_heads;
  const size_t rows = (size_t)qdims[1], capacity = (size_t)kdims[2], d = (size_t)kdims[3];
  if ((size_t)qdims[2] != (packed ? heads + 2 * kv_heads : heads) * d) return fail("anpd GroupQueryAttention: query width is not (heads + 2 kv_heads) * head_size packed, heads * head_size separate");
  const float *key_in = NULL, *value_in = NULL;
  if (!packed) {
    const OrtValue *inputs[2] = {key_value, value_value};
    const float **data[2] = {&key_in, &value_in};
    for (size_t i = 0; i < 2; i++) {
      int64_t dims[4];
      size_t rank;
      OrtTensorTypeAndShapeInfo *info;
      TRY(g_api->GetTensorTypeAndShape(inputs[i], &info));
      OrtStatus *st = g_api->GetDimensionsCount(info, &rank);
      if (st == NULL && rank != 3) st = fail("anpd GroupQueryAttention: key and value must be [1, rows, kv_heads * head_size]");
      if (st == NULL) st = g_api->GetDimensions(info, dims, rank);
      g_api->ReleaseTensorTypeAndShapeInfo(info);
      if (st != NULL) return st;
      if (dims[0] != 1 || dims[1] != qdims[1] || (size_t)dims[2] != kv_heads * (size_t)kdims[3]) return fail("anpd GroupQueryAttention: key and value must be [1, rows, kv_heads * head_size]");
      TRY(g_api->GetTensorData(inputs[i], (const void **)data[i]));
    }
  }
  if (d > HEAD_SIZE_MAX || d % 2 != 0) return fail("anpd GroupQueryAttention: head_size must be even and at most 256");
  if (vrank != 4 || vdims[1] != kdims[1] || vdims[2] != kdims[2] || vdims[3] != kdims[3]) return fail("anpd GroupQueryAttention: past value must match past key");
  if (crank != 2 || (size_t)cdims[1] * 2 != d) return fail("anpd GroupQueryAttention: cos_cache must be [positions, head_size / 2]");
  if (snrank != 2 || sndims[0] != cdims[0] || sndims[1] != cdims[1]) return fail("anpd GroupQueryAttention: sin_cache must match cos_cache");
  /* Batch 1: one seqlens_k ([1]) and one total_sequence_length ([] or [1]) before [0] is read. */
  if (srank != 1 || sdims[0] != 1) return fail("anpd GroupQueryAttention: seqlens_k must be [1]");
  if (trank > 1 || (trank == 1 && tdims[0] != 1)) return fail("anpd GroupQueryAttention: total_sequence_length must be a scalar or [1]");

  const float *qkv, *past_key, *past_value, *cos_cache, *sin_cache;
  const int32_t *total_data, *seqlens;
  TRY(g_api->GetTensorData(qkv_value, (const void **)&qkv));
  TRY(g_api->GetTensorData(past_key_value, (const void **)&past_key));
  TRY(g_api->GetTensorData(past_value_value, (const void **)&past_value));
  TRY(g_api->GetTensorData(total_value, (const void **)&total_data));
  TRY(g_api->GetTensorData(seqlens_value, (const void **)&seqlens));
  TRY(g_api->GetTensorData(cos_value, (const void **)&cos_cache));
  TRY(g_api->GetTensorData(sin_value, (const void **)&sin_cache));
  const size_t total = (size_t)total_data[0];
  if (total < rows || total > capacity) return fail("anpd GroupQueryAttention: total_sequence_length out of range");
  if (total > (size_t)cdims[0]) return fail("anpd GroupQueryAttention: position beyond the rotary cache");
  const size_t past = total - rows;
  /* Our runtime gives seqlens_k as the position of the last real row: the pad rows after it (a
   * decode step carries one, for the matmuls' sake) get their keys and values written as usual but
   * no attention — their outputs are never read, and no real row sees them (causal). */
  size_t live = rows;
  if (seqlens[0] >= 0 && (size_t)seqlens[0] >= past && (size_t)seqlens[0] + 1 - past < rows) live = (size_t)seqlens[0] + 1 - past;

  OrtValue *out_value, *present_key_value, *present_value_value;
  int64_t odims[3] = {1, (int64_t)rows, (int64_t)(heads * d)};
  TRY(g_api->KernelContext_GetOutput(ctx, 0, odims, 3, &out_value));
  TRY(g_api->KernelContext_GetOutput(ctx, 1, kdims, 4, &present_key_value));
  TRY(g_api->KernelContext_GetOutput(ctx, 2, vdims, 4, &present_value_value));
  float *output, *present_key, *present_value;
  TRY(g_api->GetTensorMutableData(out_value, (void **)&output));
  TRY(g_api->GetTensorMutableData(present_key_value, (void **)&present_key));
  TRY(g_api->GetTensorMutableData(present_value_value, (void **)&present_value));
  /* Our runner binds present to past's buffer; otherwise bring the past rows over first. */
  if (present_key != past_key)
    for (size_t r = 0; r < kv_heads * d; r++) memcpy(present_key + r * capacity, past_key + r * capacity, past * sizeof(float));
  if (present_value != past_value)
    for (size_t g = 0; g < kv_heads; g++) memcpy(present_value + g * capacity * d, past_value + g * capacity * d, past * d * sizeof(float));

  const size_t blocks = (past + live + BLOCK_KEYS - 1) / BLOCK_KEYS;
  const size_t group = heads / kv_heads;
  const size_t q_floats = rows * heads * d;
  float *q = scratch(q_floats + kv_heads * blocks * group * live * (d + 2));
  if (q == NULL) return g_api->CreateStatus(ORT_FAIL, "anpd GroupQueryAttention: out of memory");
  float *partials = q + q_floats;
  const float scale = kernel->scale != 0.0f ? kernel->scale : 1.0f / sqrtf((float)d);
  /* Rotate (and scale) the queries; rotate the new keys into the cache and copy the new values. */
  const size_t width = packed ? (heads + 2 * kv_heads) * d : heads * d;
  for (size_t s = 0; s < rows; s++) {
    const size_t position = past + s;
    const float *cos_row = cos_cache + position * (d / 2), *sin_row = sin_cache + position * (d / 2);
    const float *in = qkv + s * width;
    const float *keys_in = packed ? in + heads * d : key_in + s * kv_heads * d;
    const float *values_in = packed ? in + (heads + kv_heads) * d : value_in + s * kv_heads * d;
    for (size_t h = 0; h < heads; h++) {
      float *qh = q + (s * heads + h) * d;
      rotate(in + h * d, qh, d, cos_row, sin_row, (int)kernel->interleaved);
      for (size_t e = 0; e < d; e++) qh[e] *= scale;
    }
    for (size_t g = 0; g < kv_heads; g++) {
      float key[HEAD_SIZE_MAX];
      rotate(keys_in + g * d, key, d, cos_row, sin_row, (int)kernel->interleaved);
      for (size_t e = 0; e < d; e++) present_key[(g * d + e) * capacity + position] = key[e];
      memcpy(present_value + (g * capacity + position) * d, values_in + g * d, d * sizeof(float));
    }
  }
  Work work = {
    .q = q, .key = present_key, .value = present_value, .partials = partials,
    .rows = live, .heads = heads, .kv_heads = kv_heads, .head_size = d, .capacity = capacity, .past = past, .blocks = blocks,
    .window = kernel->window > 0 ? (size_t)kernel->window : 0,
  };
  memset(output + live * heads * d, 0, (rows - live) * heads * d * sizeof(float));
  OrtStatus *st = g_api->KernelContext_ParallelFor(ctx, block_partials, kv_heads * blocks, 0, &work);
  Merge merge = { .work = &work, .output = output };
  if (st == NULL) st = g_api->KernelContext_ParallelFor(ctx, merge_partials, heads * live, 0, &merge);
  return st;
}

static OrtStatus *ORT_API_CALL create_kernel(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
  (void)op;
  GqaKernel *kernel = calloc(1, sizeof *kernel);
  if (kernel == NULL) return api->CreateStatus(ORT_FAIL, "anpd GroupQueryAttention: out of memory");
  OrtStatus *st = api->KernelInfoGetAttribute_int64(info, "num_heads", &kernel->heads);
  if (st == NULL) st = api->KernelInfoGetAttribute_int64(info, "kv_num_heads", &kernel->kv_heads);
  int64_t rotary = 0;
  float softcap = 0.0f;
  /* Optional attributes: an error status only means "not set". */
  OrtStatus *absent;
  if ((absent = api->KernelInfoGetAttribute_int64(info, "do_rotary", &rotary)) != NULL) { api->ReleaseStatus(absent); rotary = 0; }
  if ((absent = api->KernelInfoGetAttribute_int64(info, "rotary_interleaved", &kernel->interleaved)) != NULL) { api->ReleaseStatus(absent); kernel->interleaved = 0; }
  if ((absent = api->KernelInfoGetAttribute_float(info, "scale", &kernel->scale)) != NULL) { api->ReleaseStatus(absent); kernel->scale = 0.0f; }
  if ((absent = api->KernelInfoGetAttribute_int64(info, "local_window_size", &kernel->window)) != NULL) { api->ReleaseStatus(absent); kernel->window = -1; }
  if ((absent = api->KernelInfoGetAttribute_float(info, "softcap", &softcap)) != NULL) { api->ReleaseStatus(absent); softcap = 0.0f; }
  if (st == NULL && (kernel->heads <= 0 || kernel->kv_heads <= 0 || kernel->heads % kernel->kv_heads != 0)) st = api->CreateStatus(ORT_INVALID_ARGUMENT, "anpd GroupQueryAttention: num_heads must be a multiple of kv_num_heads");
  if (st == NULL && rotary != 1) st = api->CreateStatus(ORT_INVALID_ARGUMENT, "anpd GroupQueryAttention: only do_rotary=1 graphs are supported");
  if (st == NULL && softcap != 0.0f) st = api->CreateStatus(ORT_INVALID_ARGUMENT, "anpd GroupQueryAttention: softcap is not supported");
  if (st != NULL) {
    free(kernel);
    return st;
  }
  *out = kernel;
  return NULL;
}

static void ORT_API_CALL destroy_kernel(void *op_kernel) { free(op_kernel); }
static const char *ORT_API_CALL op_name(const OrtCustomOp *op) { (void)op; return "GroupQueryAttention"; }
static const char *ORT_API_CALL op_provider(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static size_t ORT_API_CALL input_count(const OrtCustomOp *op) { (void)op; return 9; }
static size_t ORT_API_CALL output_count(const OrtCustomOp *op) { (void)op; return 3; }
static ONNXTensorElementDataType ORT_API_CALL input_type(const OrtCustomOp *op, size_t i) {
  (void)op;
  return i == 5 || i == 6 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
static ONNXTensorElementDataType ORT_API_CALL output_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
static OrtCustomOpInputOutputCharacteristic ORT_API_CALL input_characteristic(const OrtCustomOp *op, size_t i) {
  (void)op;
  return i == 1 || i == 2 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}
static OrtCustomOpInputOutputCharacteristic ORT_API_CALL output_characteristic(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return INPUT_OUTPUT_REQUIRED; }
static OrtMemType ORT_API_CALL input_memory_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return OrtMemTypeDefault; }
static int ORT_API_CALL min_arity(const OrtCustomOp *op) { (void)op; return 1; }
static int ORT_API_CALL homogeneity(const OrtCustomOp *op) { (void)op; return 1; }
static int ORT_API_CALL start_version(const OrtCustomOp *op) { (void)op; return 1; }
static int ORT_API_CALL end_version(const OrtCustomOp *op) { (void)op; return 1 << 30; }

/* Filled once per process (sessions are created on several worker threads); read-only after. */
static OrtCustomOp g_op;
static pthread_once_t g_op_once = PTHREAD_ONCE_INIT;

static void init_op(void) {
  g_api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  g_op.version = ORT_API_VERSION;
  g_op.CreateKernelV2 = create_kernel;
  g_op.KernelComputeV2 = compute;
  g_op.KernelDestroy = destroy_kernel;
  g_op.GetName = op_name;
  g_op.GetExecutionProviderType = op_provider;
  g_op.GetInputTypeCount = input_count;
  g_op.GetOutputTypeCount = output_count;
  g_op.GetInputType = input_type;
  g_op.GetOutputType = output_type;
  g_op.GetInputCharacteristic = input_characteristic;
  g_op.GetOutputCharacteristic = output_characteristic;
  g_op.GetInputMemoryType = input_memory_type;
  g_op.GetVariadicInputMinArity = min_arity;
  g_op.GetVariadicInputHomogeneity = homogeneity;
  g_op.GetVariadicOutputMinArity = min_arity;
  g_op.GetVariadicOutputHomogeneity = homogeneity;
  g_op.GetStartVersion = start_version;
  g_op.GetEndVersion = end_version;
}

OrtStatus *anpd_gqa_register(const OrtApi *api, OrtSessionOptions *options, const char *domain_name, OrtCustomOpDomain **domain) {
  pthread_once(&g_op_once, init_op);
  if (g_api == NULL) return api->CreateStatus(ORT_FAIL, "anpd GroupQueryAttention: this libonnxruntime does not offer the ORT C API version the addon was built for");
  TRY(api->CreateCustomOpDomain(domain_name, domain));
  TRY(api->CustomOpDomain_Add(*domain, &g_op));
  return api->AddCustomOpDomain(options, *domain);
}
