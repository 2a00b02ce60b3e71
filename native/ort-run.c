/*
 * anpd_ort_run: runs an ONNX Runtime session with caller-owned input and output buffers.
 *
 * Why: onnxruntime-node returns every fetched output as a fresh copy, pre-allocated or not, so a
 * decode step with the KV cache bound in place (GroupQueryAttention's shared buffer) still copies
 * the whole cache into new ArrayBuffers and leaves it to the GC (docs/perf-notes.md, "Outputs in
 * place"). Here ORT's C API writes into the JS buffers and nothing comes back.
 *
 * It links against the libonnxruntime.so.1 that onnxruntime-node ships, so both use one ORT.
 * Built by scripts/build-native.mjs; loaded only by src/runtime/native-run.ts.
 *
 *   createSession(path, intraOpThreads, attentionDomain?, pagedAttention?) -> external
 *     attentionDomain: run that domain's GroupQueryAttention nodes with our kernel (gqa-attention.c)
 *     pagedAttention: run PagedAttention nodes with our CPU kernel (paged-attention.c; ORT has CUDA's only)
 *   createCudaSession(path, intraOpThreads, deviceId, cudaGraph) -> external (CUDA execution provider, see device.c)
 *   run(session, inNames, inArrays, inDims, inTypes, outNames, outArrays, outDims, outTypes, graphId?)
 *     an array may be a device buffer (deviceAlloc) instead of a TypedArray; graphId: the CUDA graph
 *     this run captures or replays (-1 or absent: none)
 *   releaseSession(session): frees the ORT session now (the finalizer frees what is left)
 *   createBinding(session, <run's eight lists>) -> binding; runBinding(session, binding, graphId); releaseBinding(binding):
 *     a run whose values are bound once (a batch graph's thousands of KV tensors), replayed as often as wanted
 *   deviceAlloc(session, bytes) / deviceView(buffer, byteOffset, bytes) / deviceWrite(session, buffer, byteOffset, array) /
 *   deviceRead(...) / deviceCopy(session, to, toOffset, from, fromOffset, bytes): device.c
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"
#include "device.h"
#include "gqa-attention.h"
#include "paged-attention.h"

/* Inputs or outputs one run may name: 2 per layer and slot plus a few (64 slots × 30 layers ≈ 3,900). */
#define VALUES_MAX 16384
#define RANK_MAX 8
#define NAME_BYTES_MAX 256

static napi_value release_session_now(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL), "releaseSession: bad arguments");
  Session *s = argc < 1 ? NULL : session_of(env, argv[0]);
  if (s == NULL) return NULL;
  session_release_ort(s);
  return NULL;
}

static napi_value create_session(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL), "createSession: bad arguments");
  if (argc < 2) return throw_message(env, "createSession(path, intraOpThreads, attentionDomain?, pagedAttention?)");
  bool paged = false;
  napi_valuetype paged_type = napi_undefined;
  if (argc >= 4) CHECK_NAPI(napi_typeof(env, argv[3], &paged_type), "createSession: bad pagedAttention");
  if (paged_type == napi_boolean) CHECK_NAPI(napi_get_value_bool(env, argv[3], &paged), "createSession: pagedAttention must be a boolean");
  char domain_name[128] = "";
  napi_valuetype domain_type = napi_undefined;
  if (argc >= 3) CHECK_NAPI(napi_typeof(env, argv[2], &domain_type), "createSession: bad attentionDomain");
  if (domain_type == napi_string) {
    size_t domain_length;
    CHECK_NAPI(napi_get_value_string_utf8(env, argv[2], domain_name, sizeof domain_name, &domain_length), "createSession: attentionDomain must be a string");
  }
  char path[4096];
  size_t length;
  CHECK_NAPI(napi_get_value_string_utf8(env, argv[0], path, sizeof path, &length), "createSession: path must be a string");
  if (length >= sizeof path - 1) return throw_message(env, "createSession: path too long");
  int32_t threads;
  CHECK_NAPI(napi_get_value_int32(env, argv[1], &threads), "createSession: intraOpThreads must be a number");

  /* The same options as src/runtime/ort-session.ts gives onnxruntime-node, so logits are bitwise equal. */
  OrtSessionOptions *options;
  CHECK_ORT(g_ort->CreateSessionOptions(&options));
  OrtStatus *status = g_ort->SetSessionGraphOptimizationLevel(options, ORT_ENABLE_ALL);
  if (status == NULL && threads > 0) status = g_ort->SetIntraOpNumThreads(options, threads);
  if (status == NULL) status = g_ort->SetInterOpNumThreads(options, 1);
  if (status == NULL) status = g_ort->SetSessionLogSeverityLevel(options, 3);
  Session *s = calloc(1, sizeof *s);
  if (s != NULL) session_init(s);
  if (s == NULL) {
    g_ort->ReleaseSessionOptions(options);
    return throw_message(env, "createSession: out of memory");
  }
  if (status == NULL && domain_name[0] != '\0' && paged) status = g_ort->CreateStatus(ORT_INVALID_ARGUMENT, "createSession: our attention kernel and the paged one do not combine");
  if (status == NULL && domain_name[0] != '\0') status = anpd_gqa_register(g_ort, options, domain_name, &s->domain);
  if (status == NULL && paged) status = anpd_paged_register(g_ort, options, &s->domain);
  if (status == NULL) status = g_ort->CreateSession(g_env, path, options, &s->session);
  g_ort->ReleaseSessionOptions(options);
  if (status != NULL) {
    if (s->domain != NULL) g_ort->ReleaseCustomOpDomain(s->domain);
    free(s);
    return throw_status(env, status);
  }
  return wrap_session(env, s);
}

/* Values i of names/arrays/dims/types become OrtValues over the arrays' own memory (no copy). */
static int wrap_values(napi_env env, Session *session, napi_value names, napi_value arrays, napi_value dims, napi_value types, uint32_t count,
                       char (*name_out)[NAME_BYTES_MAX], const char **name_ptrs, OrtValue **values) {
  for (uint32_t i = 0; i < count; i++) {
    napi_value name, array, shape, type;
    size_t length;
    if (napi_get_element(env, names, i, &name) != napi_ok ||
        napi_get_value_string_utf8(env, name, name_out[i], NAME_BYTES_MAX, &length) != napi_ok || length >= NAME_BYTES_MAX - 1) {
      napi_throw_error(env, NULL, "run: a name is not a string or is too long");
      return -1;
    }
    name_ptrs[i] = name_out[i];
    napi_typedarray_type array_type;
    size_t elements, offset, bytes;
    void *data;
    napi_value buffer;
    const OrtMemoryInfo *where = g_cpu;
    if (napi_get_element(env, arrays, i, &array) != napi_ok) {
      napi_throw_error(env, NULL, "run: bad data list");
      return -1;
    }
    DeviceBuffer *device = tagged_external(env, array, &DEVICE_BUFFER_TAG);
    if (device != NULL) {
      data = device_buffer_ptr(device);
      if (data == NULL || device->owner != session->device_owner) {
        napi_throw_error(env, NULL, "run: a device buffer was freed or belongs to another session");
        return -1;
      }
      bytes = device->bytes;
      where = session->device_info;
    } else if (napi_get_typedarray_info(env, array, &array_type, &elements, &data, &buffer, &offset) != napi_ok) {
      napi_throw_error(env, NULL, "run: data must be a TypedArray or a device buffer");
      return -1;
    } else {
      bytes = elements * typedarray_element_bytes(array_type);
    }
    uint32_t rank;
    if (napi_get_element(env, dims, i, &shape) != napi_ok || napi_get_array_length(env, shape, &rank) != napi_ok || rank > RANK_MAX) {
      napi_throw_error(env, NULL, "run: dims must be an array of at most 8 numbers");
      return -1;
    }
    int64_t extents[RANK_MAX];
    for (uint32_t k = 0; k < rank; k++) {
      napi_value extent;
      int64_t value;
      if (napi_get_element(env, shape, k, &extent) != napi_ok || napi_get_value_int64(env, extent, &value) != napi_ok) {
        napi_throw_error(env, NULL, "run: dims must be numbers");
        return -1;
      }
      extents[k] = value;
    }
    int32_t element_type;
    if (napi_get_element(env, types, i, &type) != napi_ok || napi_get_value_int32(env, type, &element_type) != napi_ok) {
      napi_throw_error(env, NULL, "run: types must be ONNX element type numbers");
      return -1;
    }
    /* ORT checks the byte length against the shape and type: a mismatch is an error, not an overrun. */
    OrtStatus *status = g_ort->CreateTensorWithDataAsOrtValue(where, data, bytes, extents, rank,
                                                              (ONNXTensorElementDataType)element_type, &values[i]);
    if (status != NULL) {
      throw_status(env, status);
      return -1;
    }
  }
  return 0;
}

/*
 * The name and value lists of a run, per thread (engine replicas call from several worker
 * threads) and kept between runs: a forward allocates nothing here once they are big enough.
 */
static __thread char (*t_names)[NAME_BYTES_MAX];
static __thread const char **t_ptrs;
static __thread OrtValue **t_values;
static __thread uint32_t t_held;

static int lists_hold(uint32_t count) {
  if (count <= t_held) return 1;
  free(t_names);
  free(t_ptrs);
  free(t_values);
  t_names = malloc((size_t)count * NAME_BYTES_MAX);
  t_ptrs = malloc((size_t)count * sizeof *t_ptrs);
  t_values = malloc((size_t)count * sizeof *t_values);
  t_held = t_names != NULL && t_ptrs != NULL && t_values != NULL ? count : 0;
  return t_held != 0;
}

/* An environment's teardown, on its own thread: that thread's lists and attention memory go. */
static void release_thread_memory(void *arg) {
  (void)arg;
  free(t_names);
  free(t_ptrs);
  free(t_values);
  t_names = NULL;
  t_ptrs = NULL;
  t_values = NULL;
  t_held = 0;
  anpd_gqa_release_thread_memory();
}

static napi_value run(napi_env env, napi_callback_info info) {
  size_t argc = 10;
  napi_value a[10];
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, a, NULL, NULL), "run: bad arguments");
  if (argc < 9) return throw_message(env, "run(session, inNames, inArrays, inDims, inTypes, outNames, outArrays, outDims, outTypes, graphId?)");
  Session *wrapped = session_of(env, a[0]);
  if (wrapped == NULL) return NULL;
  int32_t graph_id = -1;
  napi_valuetype graph_type = napi_undefined;
  if (argc >= 10) CHECK_NAPI(napi_typeof(env, a[9], &graph_type), "run: bad graphId");
  if (graph_type == napi_number) CHECK_NAPI(napi_get_value_int32(env, a[9], &graph_id), "run: graphId must be an integer");
  OrtSession *session = wrapped->session;
  if (session == NULL) return throw_message(env, "run: the session was released");
  uint32_t inputs, outputs;
  CHECK_NAPI(napi_get_array_length(env, a[1], &inputs), "run: inNames must be an array");
  CHECK_NAPI(napi_get_array_length(env, a[5], &outputs), "run: outNames must be an array");
  if (inputs > VALUES_MAX || outputs > VALUES_MAX) return throw_message(env, "run: more than 16384 inputs or outputs");
  if (!lists_hold(inputs + outputs)) return throw_message(env, "run: out of memory");

  char (*in_names)[NAME_BYTES_MAX] = t_names, (*out_names)[NAME_BYTES_MAX] = t_names + inputs;
  const char **in_ptrs = t_ptrs, **out_ptrs = t_ptrs + inputs;
  OrtValue **in_values = t_values, **out_values = t_values + inputs;
  memset(t_values, 0, (size_t)(inputs + outputs) * sizeof *t_values);
  napi_value result = NULL;
  if (wrap_values(env, wrapped, a[1], a[2], a[3], a[4], inputs, in_names, in_ptrs, in_values) == 0 &&
      wrap_values(env, wrapped, a[5], a[6], a[7], a[8], outputs, out_names, out_ptrs, out_values) == 0) {
    OrtRunOptions *run_options = NULL;
    OrtStatus *status = anpd_run_options(wrapped, graph_id, &run_options);
    if (status == NULL) status = g_ort->Run(session, run_options, in_ptrs, (const OrtValue *const *)in_values, inputs, out_ptrs, outputs, out_values);
    if (status != NULL) throw_status(env, status);
    else napi_get_undefined(env, &result);
  }
  for (uint32_t i = 0; i < inputs; i++) if (in_values[i] != NULL) g_ort->ReleaseValue(in_values[i]);
  for (uint32_t i = 0; i < outputs; i++) if (out_values[i] != NULL) g_ort->ReleaseValue(out_values[i]);
  return result;
}

/*
 * A run whose inputs and outputs are bound once (ORT's IoBinding): a batch graph has thousands of
 * KV tensors, and wrapping them per forward would cost milliseconds. The values' memory (device
 * buffers, host arrays) is referenced so it outlives the binding; their contents may change
 * between runs, their addresses and shapes may not (which is what a CUDA graph replay needs too).
 */
typedef struct {
  OrtIoBinding *binding;
  napi_ref *refs;
  uint32_t ref_count;
  napi_ref session_ref;
} Binding;

static const napi_type_tag BINDING_TAG = {0x616e7064b1d1b1d1ULL, 0x62696e64696e6701ULL};

static void release_binding_refs(napi_env env, Binding *b) {
  if (b->binding != NULL) g_ort->ReleaseIoBinding(b->binding);
  b->binding = NULL;
  for (uint32_t i = 0; i < b->ref_count; i++) if (b->refs[i] != NULL) napi_delete_reference(env, b->refs[i]);
  free(b->refs);
  b->refs = NULL;
  b->ref_count = 0;
  if (b->session_ref != NULL) napi_delete_reference(env, b->session_ref);
  b->session_ref = NULL;
}

static void finalize_binding(napi_env env, void *data, void *hint) {
  (void)hint;
  release_binding_refs(env, data);
  free(data);
}

/* References every element of `arrays` (count of them) into refs[at ...]. */
static int reference_all(napi_env env, napi_value arrays, uint32_t count, napi_ref *refs, uint32_t at) {
  for (uint32_t i = 0; i < count; i++) {
    napi_value value;
    if (napi_get_element(env, arrays, i, &value) != napi_ok || napi_create_reference(env, value, 1, &refs[at + i]) != napi_ok) return -1;
  }
  return 0;
}

/* createBinding(session, inNames, inArrays, inDims, inTypes, outNames, outArrays, outDims, outTypes) -> binding */
static napi_value create_binding(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value a[9];
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, a, NULL, NULL), "createBinding: bad arguments");
  if (argc < 9) return throw_message(env, "createBinding(session, inNames, inArrays, inDims, inTypes, outNames, outArrays, outDims, outTypes)");
  Session *wrapped = session_of(env, a[0]);
  if (wrapped == NULL) return NULL;
  if (wrapped->session == NULL) return throw_message(env, "createBinding: the session was released");
  uint32_t inputs, outputs;
  CHECK_NAPI(napi_get_array_length(env, a[1], &inputs), "createBinding: inNames must be an array");
  CHECK_NAPI(napi_get_array_length(env, a[5], &outputs), "createBinding: outNames must be an array");
  if (inputs > VALUES_MAX || outputs > VALUES_MAX) return throw_message(env, "createBinding: more than 16384 inputs or outputs");
  if (!lists_hold(inputs + outputs)) return throw_message(env, "createBinding: out of memory");
  Binding *b = calloc(1, sizeof *b);
  if (b == NULL) return throw_message(env, "createBinding: out of memory");
  b->refs = calloc((size_t)inputs + outputs, sizeof *b->refs);
  b->ref_count = inputs + outputs;
  if (b->refs == NULL) {
    free(b);
    return throw_message(env, "createBinding: out of memory");
  }
  char (*in_names)[NAME_BYTES_MAX] = t_names, (*out_names)[NAME_BYTES_MAX] = t_names + inputs;
  const char **in_ptrs = t_ptrs, **out_ptrs = t_ptrs + inputs;
  OrtValue **in_values = t_values, **out_values = t_values + inputs;
  memset(t_values, 0, (size_t)(inputs + outputs) * sizeof *t_values);
  int ok = napi_create_reference(env, a[0], 1, &b->session_ref) == napi_ok &&
           reference_all(env, a[2], inputs, b->refs, 0) == 0 && reference_all(env, a[6], outputs, b->refs, inputs) == 0 &&
           wrap_values(env, wrapped, a[1], a[2], a[3], a[4], inputs, in_names, in_ptrs, in_values) == 0 &&
           wrap_values(env, wrapped, a[5], a[6], a[7], a[8], outputs, out_names, out_ptrs, out_values) == 0;
  OrtStatus *status = NULL;
  if (ok) status = g_ort->CreateIoBinding(wrapped->session, &b->binding);
  for (uint32_t i = 0; ok && status == NULL && i < inputs; i++) status = g_ort->BindInput(b->binding, in_ptrs[i], in_values[i]);
  for (uint32_t i = 0; ok && status == NULL && i < outputs; i++) status = g_ort->BindOutput(b->binding, out_ptrs[i], out_values[i]);
  /* The binding keeps its own references to the tensors (which do not own their memory). */
  for (uint32_t i = 0; i < inputs + outputs; i++) if (t_values[i] != NULL) g_ort->ReleaseValue(t_values[i]);
  if (!ok || status != NULL) {
    release_binding_refs(env, b);
    free(b);
    if (status != NULL) return throw_status(env, status);
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    return pending ? NULL : throw_message(env, "createBinding: cannot reference the values");
  }
  napi_value external;
  if (napi_create_external(env, b, finalize_binding, NULL, &external) != napi_ok) {
    finalize_binding(env, b, NULL);
    return throw_message(env, "createBinding: cannot wrap the binding");
  }
  CHECK_NAPI(napi_type_tag_object(env, external, &BINDING_TAG), "createBinding: cannot tag the binding");
  return external;
}

/* runBinding(session, binding, graphId): one run of the bound values; graphId as run()'s. */
static napi_value run_binding(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value a[3];
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, a, NULL, NULL), "runBinding: bad arguments");
  if (argc < 3) return throw_message(env, "runBinding(session, binding, graphId)");
  Session *wrapped = session_of(env, a[0]);
  if (wrapped == NULL) return NULL;
  if (wrapped->session == NULL) return throw_message(env, "runBinding: the session was released");
  Binding *b = tagged_external(env, a[1], &BINDING_TAG);
  if (b == NULL || b->binding == NULL) return throw_message(env, "runBinding: not a live binding");
  int32_t graph_id;
  CHECK_NAPI(napi_get_value_int32(env, a[2], &graph_id), "runBinding: graphId must be an integer");
  OrtRunOptions *run_options = NULL;
  CHECK_ORT(anpd_run_options(wrapped, graph_id, &run_options));
  CHECK_ORT(g_ort->RunWithBinding(wrapped->session, run_options, b->binding));
  return NULL;
}

/* releaseBinding(binding): frees the ORT binding and its references now (before its session goes). */
static napi_value release_binding(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, a, NULL, NULL), "releaseBinding: bad arguments");
  Binding *b = argc < 1 ? NULL : tagged_external(env, a[0], &BINDING_TAG);
  if (b == NULL) return throw_message(env, "releaseBinding: not a binding");
  release_binding_refs(env, b);
  return NULL;
}

NAPI_MODULE_INIT() {
  const OrtApiBase *base = OrtGetApiBase();
  const char *init_error = anpd_init_ort();
  if (init_error != NULL) return throw_message(env, init_error);
  CHECK_NAPI(napi_add_env_cleanup_hook(env, release_thread_memory, NULL), "init");
  napi_value fn;
  CHECK_NAPI(napi_create_function(env, "createSession", NAPI_AUTO_LENGTH, create_session, NULL, &fn), "init");
  CHECK_NAPI(napi_set_named_property(env, exports, "createSession", fn), "init");
  CHECK_NAPI(napi_create_function(env, "run", NAPI_AUTO_LENGTH, run, NULL, &fn), "init");
  CHECK_NAPI(napi_set_named_property(env, exports, "run", fn), "init");
  CHECK_NAPI(napi_create_function(env, "releaseSession", NAPI_AUTO_LENGTH, release_session_now, NULL, &fn), "init");
  CHECK_NAPI(napi_set_named_property(env, exports, "releaseSession", fn), "init");
  CHECK_NAPI(napi_create_function(env, "createBinding", NAPI_AUTO_LENGTH, create_binding, NULL, &fn), "init");
  CHECK_NAPI(napi_set_named_property(env, exports, "createBinding", fn), "init");
  CHECK_NAPI(napi_create_function(env, "runBinding", NAPI_AUTO_LENGTH, run_binding, NULL, &fn), "init");
  CHECK_NAPI(napi_set_named_property(env, exports, "runBinding", fn), "init");
  CHECK_NAPI(napi_create_function(env, "releaseBinding", NAPI_AUTO_LENGTH, release_binding, NULL, &fn), "init");
  CHECK_NAPI(napi_set_named_property(env, exports, "releaseBinding", fn), "init");
  if (anpd_device_exports(env, exports) == NULL) return NULL;
  napi_value version;
  CHECK_NAPI(napi_create_string_utf8(env, base->GetVersionString(), NAPI_AUTO_LENGTH, &version), "init");
  CHECK_NAPI(napi_set_named_property(env, exports, "ortVersion", version), "init");
  return exports;
}
