/*
 * PagedAttention (com.microsoft) on the CPU, float16, for the device path's emulation: ONNX Runtime
 * runs this operator on CUDA only, and the tests (machines without a GPU) run the paged graph on
 * the CPU provider with host memory standing in for the device (src/runtime/device-paged.ts). A
 * reference kernel, not a fast one: float32 arithmetic, one sequence and head at a time.
 *
 * Semantics as ORT's CUDA kernel (contrib op schema): the new tokens of B sequences packed along
 * one axis (cumulative_sequence_length), sequence b's new token j at position past_seqlens[b] + j;
 * rotary applied to its query and key at that position; its key and value written into the cache
 * at block_table[b][pos / block_size], row pos % block_size (in place); causal attention of each
 * new token over positions [0, pos] of its own sequence (within local_window_size when set).
 * Unsupported inputs (slot_mapping, head sink, q/k norms, quantized caches) are refused.
 */
#include <math.h>
#include <stdint.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "paged-attention.h"

#if defined(__FLT16_MANT_DIG__) && !defined(ANPD_NO_FLOAT16)
typedef _Float16 half;
static inline float half_to_float(half h) { return (float)h; }
static inline half float_to_half(float f) { return (half)f; }
#else
/* Compilers without _Float16: binary16 by bits (round to nearest even). */
typedef uint16_t half;
static inline float half_to_float(half h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) bits = sign;
    else {
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) { mant <<= 1; exp--; }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) bits = sign | 0x7f800000 | (mant << 13);
  else bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  float f;
  memcpy(&f, &bits, 4);
  return f;
}
static inline half float_to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
  int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
  if (((x >> 23) & 0xff) == 0xff) return (half)(sign | 0x7c00 | (mant ? 0x200 : 0));
  if (exp >= 31) return (half)(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return (half)sign;
    mant |= 0x800000;
    uint32_t shift = (uint32_t)(14 - exp), r = mant >> shift, rest = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (r & 1))) r++;
    return (half)(sign | r);
  }
  uint32_t r = mant >> 13, rest = mant & 0x1fff;
  uint32_t out = sign | ((uint32_t)exp << 10) | r;
  if (rest > 0x1000 || (rest == 0x1000 && (r & 1))) out++;
  return (half)out;
}
#endif

static const OrtApi *g_api;

typedef struct {
  int64_t heads, kv_heads, interleaved, window, rotary;
  float scale, softcap;
} PagedKernel;

static OrtStatus *fail(const char *message) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, message); }
#define TRY(call) do { OrtStatus *st_ = (call); if (st_ != NULL) return st_; } while (0)

/* Input `index` (NULL when absent) with its dims. */
static OrtStatus *input_of(OrtKernelContext *ctx, size_t index, const OrtValue **value, int64_t *dims, size_t *rank) {
  TRY(g_api->KernelContext_GetInput(ctx, index, value));
  *rank = 0;
  if (*value == NULL) return NULL;
  OrtTensorTypeAndShapeInfo *info;
  TRY(g_api->GetTensorTypeAndShape(*value, &info));
  OrtStatus *st = g_api->GetDimensionsCount(info, rank);
  if (st == NULL && *rank > 4) st = fail("anpd PagedAttention: an input has rank > 4");
  if (st == NULL) st = g_api->GetDimensions(info, dims, *rank);
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  return st;
}

static void rotate(float *x, size_t d, const half *cos_row, const half *sin_row, int interleaved) {
  size_t half_d = d / 2;
  float tmp[512];
  memcpy(tmp, x, d * sizeof(float));
  for (size_t j = 0; j < half_d; j++) {
    float c = half_to_float(cos_row[j]), s = half_to_float(sin_row[j]);
    if (interleaved) {
      x[2 * j] = tmp[2 * j] * c - tmp[2 * j + 1] * s;
      x[2 * j + 1] = tmp[2 * j + 1] * c + tmp[2 * j] * s;
    } else {
      x[j] = tmp[j] * c - tmp[j + half_d] * s;
      x[j + half_d] = tmp[j + half_d] * c + tmp[j] * s;
    }
  }
}

static OrtStatus *ORT_API_CALL compute(void *op_kernel, OrtKernelContext *ctx) {
  const PagedKernel *k = op_kernel;
  const OrtValue *query, *key, *value, *kcache, *vcache, *cu, *past, *table, *cosv, *sinv;
  int64_t qd[4], kd[4], vd[4], kcd[4], vcd[4], cud[4], pd[4], td[4], cd[4], sd[4], unused[4];
  size_t qr, kr, vr, kcr, vcr, cur, pr, tr, cr, sr, ur;
  TRY(input_of(ctx, 0, &query, qd, &qr));
  TRY(input_of(ctx, 1, &key, kd, &kr));
  TRY(input_of(ctx, 2, &value, vd, &vr));
  TRY(input_of(ctx, 3, &kcache, kcd, &kcr));
  TRY(input_of(ctx, 4, &vcache, vcd, &vcr));
  TRY(input_of(ctx, 5, &cu, cud, &cur));
  TRY(input_of(ctx, 6, &past, pd, &pr));
  TRY(input_of(ctx, 7, &table, td, &tr));
  TRY(input_of(ctx, 8, &cosv, cd, &cr));
  TRY(input_of(ctx, 9, &sinv, sd, &sr));
  for (size_t i = 10; i < 16; i++) {
    const OrtValue *extra;
    TRY(input_of(ctx, i, &extra, unused, &ur));
    if (extra != NULL) return fail("anpd PagedAttention: slot_mapping, head_sink, q/k norms and cache scales are not supported on the CPU");
  }
  if (query == NULL || kcache == NULL || vcache == NULL || cu == NULL || past == NULL || table == NULL) return fail("anpd PagedAttention: a required input is missing");
  if (k->rotary && (cosv == NULL || sinv == NULL)) return fail("anpd PagedAttention: do_rotary needs cos_cache and sin_cache");
  const int packed = key == NULL;
  if (!packed && value == NULL) return fail("anpd PagedAttention: key needs value");
  if (qr != 2 || kcr != 4 || vcr != 4 || cur != 1 || pr != 1 || tr != 2) return fail("anpd PagedAttention: unexpected input ranks");
  const size_t heads = (size_t)k->heads, kvh = (size_t)k->kv_heads, d = (size_t)kcd[3];
  const size_t tokens = (size_t)qd[0], batch = (size_t)pd[0], block_size = (size_t)kcd[1], blocks = (size_t)kcd[0];
  const size_t table_width = (size_t)td[1];
  if ((size_t)kcd[2] != kvh || d > 512 || d % 2 != 0) return fail("anpd PagedAttention: key_cache must be [blocks, block_size, kv_num_heads, head_size]");
  if ((size_t)qd[1] != (packed ? heads + 2 * kvh : heads) * d) return fail("anpd PagedAttention: query width is not (heads + 2 kv_heads) * head_size packed, heads * head_size separate");
  if ((size_t)cud[0] != batch + 1 || (size_t)td[0] != batch) return fail("anpd PagedAttention: cumulative_sequence_length must be [B + 1] and block_table [B, blocks]");
  const half *q_in, *k_in = NULL, *v_in = NULL, *cos_cache = NULL, *sin_cache = NULL;
  half *kc, *vc;
  const int32_t *cum, *pasts, *tab;
  TRY(g_api->GetTensorData(query, (const void **)&q_in));
  if (!packed) {
    TRY(g_api->GetTensorData(key, (const void **)&k_in));
    TRY(g_api->GetTensorData(value, (const void **)&v_in));
  }
  /* The caches are written in place (ORT's CUDA kernel does the same with its inputs). */
  TRY(g_api->GetTensorMutableData((OrtValue *)kcache, (void **)&kc));
  TRY(g_api->GetTensorMutableData((OrtValue *)vcache, (void **)&vc));
  TRY(g_api->GetTensorData(cu, (const void **)&cum));
  TRY(g_api->GetTensorData(past, (const void **)&pasts));
  TRY(g_api->GetTensorData(table, (const void **)&tab));
  size_t rotary_rows = 0;
  if (k->rotary) {
    TRY(g_api->GetTensorData(cosv, (const void **)&cos_cache));
    TRY(g_api->GetTensorData(sinv, (const void **)&sin_cache));
    if (cr != 2 || (size_t)cd[1] * 2 != d) return fail("anpd PagedAttention: cos_cache must be [positions, head_size / 2]");
    rotary_rows = (size_t)cd[0];
  }
  if (cum[0] != 0 || (size_t)cum[batch] != tokens) return fail("anpd PagedAttention: cumulative_sequence_length must run from 0 to the token count");
  int64_t out_dims[2] = {(int64_t)tokens, (int64_t)(heads * d)};
  OrtValue *output;
  TRY(g_api->KernelContext_GetOutput(ctx, 0, out_dims, 2, &output));
  half *out;
  TRY(g_api->GetTensorMutableData(output, (void **)&out));
  const size_t q_stride = (size_t)qd[1], group = heads / kvh;
  const float scale = k->scale != 0.0f ? k->scale : 1.0f / sqrtf((float)d);
  float *qf = malloc(heads * d * sizeof(float)), *kf = malloc(d * sizeof(float)), *scores = NULL;
  size_t scores_len = 0;
  OrtStatus *st = NULL;
  if (qf == NULL || kf == NULL) st = g_api->CreateStatus(ORT_FAIL, "anpd PagedAttention: out of memory");
  for (size_t b = 0; b < batch && st == NULL; b++) {
    const size_t first = (size_t)cum[b], count = (size_t)(cum[b + 1] - cum[b]), p0 = (size_t)pasts[b];
    if (cum[b + 1] < cum[b] || pasts[b] < 0 || (p0 + count + block_size - 1) / block_size > table_width) {
      st = fail("anpd PagedAttention: a sequence's positions run past its block table");
      break;
    }
    /* Keys and values of the new tokens into the cache first (attention below is causal over them). */
    for (size_t j = 0; j < count && st == NULL; j++) {
      const size_t t = first + j, pos = p0 + j;
      const int32_t block = tab[b * table_width + pos / block_size];
      if (block < 0 || (size_t)block >= blocks || (k->rotary && pos >= rotary_rows)) {
        st = fail("anpd PagedAttention: a block id or position is out of range");
        break;
      }
      const size_t row = ((size_t)block * block_size + pos % block_size) * kvh * d;
      for (size_t h = 0; h < kvh; h++) {
        const half *src_k = packed ? q_in + t * q_stride + (heads + h) * d : k_in + (t * kvh + h) * d;
        const half *src_v = packed ? q_in + t * q_stride + (heads + kvh + h) * d : v_in + (t * kvh + h) * d;
        for (size_t x = 0; x < d; x++) kf[x] = half_to_float(src_k[x]);
        if (k->rotary) rotate(kf, d, cos_cache + pos * (d / 2), sin_cache + pos * (d / 2), (int)k->interleaved);
        for (size_t x = 0; x < d; x++) {
          kc[row + h * d + x] = float_to_half(kf[x]);
          vc[row + h * d + x] = src_v[x];
        }
      }
    }
    if (st != NULL) break;
    /* The sequence's keys and values as float, once per call (not once per query row). */
    const size_t total = p0 + count;
    if (total * kvh * d * 2 + total > scores_len) {
      free(scores);
      scores_len = total * kvh * d * 2 + total;
      scores = malloc(scores_len * sizeof(float));
      if (scores == NULL) {
        st = g_api->CreateStatus(ORT_FAIL, "anpd PagedAttention: out of memory");
        break;
      }
    }
    float *keys = scores + total, *values = keys + total * kvh * d;
    for (size_t p = 0; p < total; p++) {
      const size_t row = ((size_t)tab[b * table_width + p / block_size] * block_size + p % block_size) * kvh * d;
      for (size_t h = 0; h < kvh; h++)
        for (size_t x = 0; x < d; x++) {
          keys[(h * total + p) * d + x] = half_to_float(kc[row + h * d + x]);
          values[(h * total + p) * d + x] = half_to_float(vc[row + h * d + x]);
        }
    }
    for (size_t j = 0; j < count; j++) {
      const size_t t = first + j, pos = p0 + j;
      const size_t lo = k->window > 0 && pos + 1 > (size_t)k->window ? pos + 1 - (size_t)k->window : 0;
      for (size_t h = 0; h < heads; h++) {
        float *qh = qf + h * d;
        for (size_t x = 0; x < d; x++) qh[x] = half_to_float(q_in[t * q_stride + h * d + x]);
        if (k->rotary) rotate(qh, d, cos_cache + pos * (d / 2), sin_cache + pos * (d / 2), (int)k->interleaved);
        const float *kh = keys + (h / group) * total * d, *vh = values + (h / group) * total * d;
        float top = -INFINITY;
        for (size_t p = lo; p <= pos; p++) {
          float dot = 0.0f;
          for (size_t x = 0; x < d; x++) dot += qh[x] * kh[p * d + x];
          dot *= scale;
          if (k->softcap > 0.0f) dot = k->softcap * tanhf(dot / k->softcap);
          scores[p] = dot;
          if (dot > top) top = dot;
        }
        float sum = 0.0f;
        for (size_t p = lo; p <= pos; p++) sum += scores[p] = expf(scores[p] - top);
        float acc[512] = {0};
        for (size_t p = lo; p <= pos; p++) {
          const float w = scores[p] / sum;
          for (size_t x = 0; x < d; x++) acc[x] += w * vh[p * d + x];
        }
        for (size_t x = 0; x < d; x++) out[t * heads * d + h * d + x] = float_to_half(acc[x]);
      }
    }
  }
  free(qf);
  free(kf);
  free(scores);
  if (st != NULL) return st;
  /* Cache outputs, where the graph names them, are the inputs' memory (ORT's contract): nothing to copy. */
  return NULL;
}

static OrtStatus *ORT_API_CALL create_kernel(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
  (void)op;
  PagedKernel *kernel = calloc(1, sizeof *kernel);
  if (kernel == NULL) return api->CreateStatus(ORT_FAIL, "anpd PagedAttention: out of memory");
  OrtStatus *st = api->KernelInfoGetAttribute_int64(info, "num_heads", &kernel->heads);
  if (st == NULL) st = api->KernelInfoGetAttribute_int64(info, "kv_num_heads", &kernel->kv_heads);
  OrtStatus *absent;
  if ((absent = api->KernelInfoGetAttribute_int64(info, "do_rotary", &kernel->rotary)) != NULL) { api->ReleaseStatus(absent); kernel->rotary = 0; }
  if ((absent = api->KernelInfoGetAttribute_int64(info, "rotary_interleaved", &kernel->interleaved)) != NULL) { api->ReleaseStatus(absent); kernel->interleaved = 0; }
  if ((absent = api->KernelInfoGetAttribute_float(info, "scale", &kernel->scale)) != NULL) { api->ReleaseStatus(absent); kernel->scale = 0.0f; }
  if ((absent = api->KernelInfoGetAttribute_int64(info, "local_window_size", &kernel->window)) != NULL) { api->ReleaseStatus(absent); kernel->window = -1; }
  if ((absent = api->KernelInfoGetAttribute_float(info, "softcap", &kernel->softcap)) != NULL) { api->ReleaseStatus(absent); kernel->softcap = 0.0f; }
  if (st == NULL && (kernel->heads <= 0 || kernel->kv_heads <= 0 || kernel->heads % kernel->kv_heads != 0)) st = api->CreateStatus(ORT_INVALID_ARGUMENT, "anpd PagedAttention: num_heads must be a multiple of kv_num_heads");
  if (st != NULL) {
    free(kernel);
    return st;
  }
  *out = kernel;
  return NULL;
}

static void ORT_API_CALL destroy_kernel(void *op_kernel) { free(op_kernel); }
static const char *ORT_API_CALL op_name(const OrtCustomOp *op) { (void)op; return "PagedAttention"; }
static const char *ORT_API_CALL op_provider(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static size_t ORT_API_CALL input_count(const OrtCustomOp *op) { (void)op; return 17; }
static size_t ORT_API_CALL output_count(const OrtCustomOp *op) { (void)op; return 3; }
static ONNXTensorElementDataType ORT_API_CALL input_type(const OrtCustomOp *op, size_t i) {
  (void)op;
  if (i == 5 || i == 6 || i == 7 || i == 10 || i == 16) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  if (i == 14 || i == 15) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
}
static ONNXTensorElementDataType ORT_API_CALL output_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
static OrtCustomOpInputOutputCharacteristic ORT_API_CALL input_characteristic(const OrtCustomOp *op, size_t i) {
  (void)op;
  return i == 0 || i == 3 || i == 5 || i == 6 || i == 7 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}
static OrtCustomOpInputOutputCharacteristic ORT_API_CALL output_characteristic(const OrtCustomOp *op, size_t i) {
  (void)op;
  return i == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}
static OrtMemType ORT_API_CALL input_memory_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return OrtMemTypeDefault; }
static int ORT_API_CALL min_arity(const OrtCustomOp *op) { (void)op; return 1; }
static int ORT_API_CALL homogeneity(const OrtCustomOp *op) { (void)op; return 1; }
static int ORT_API_CALL start_version(const OrtCustomOp *op) { (void)op; return 1; }
static int ORT_API_CALL end_version(const OrtCustomOp *op) { (void)op; return 1 << 30; }

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

OrtStatus *anpd_paged_register(const OrtApi *api, OrtSessionOptions *options, OrtCustomOpDomain **domain) {
  pthread_once(&g_op_once, init_op);
  if (g_api == NULL) return api->CreateStatus(ORT_FAIL, "anpd PagedAttention: this libonnxruntime does not offer the ORT C API version the addon was built for");
  TRY(api->CreateCustomOpDomain("com.microsoft", domain));
  TRY(api->CustomOpDomain_Add(*domain, &g_op));
  return api->AddCustomOpDomain(options, *domain);
}
