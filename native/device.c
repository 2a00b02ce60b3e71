/*
 * The device path of the native runner: a session on ONNX Runtime's CUDA execution provider whose
 * KV cache, inputs and outputs stay in device memory that we own (so a forward moves only the ids
 * up and the logits rows it needs down), and whose fixed-shape forwards replay as CUDA graphs.
 *
 * Why not onnxruntime-node: its CUDA outputs come back to the host, it has no CUDA IO binding and
 * no way to replay a graph (docs/gpu.md). The CUDA runtime is opened with dlopen, so the addon
 * builds and loads on machines without CUDA; there a "device" buffer is host memory and the same
 * path runs on the CPU provider (how the tests cover it).
 *
 *   cudaDeviceCount() -> CUDA devices here (throws naming what is missing: the runtime, the driver)
 *   createCudaSession(path, intraOpThreads, deviceId, cudaGraph, weightOnlyGemm) -> session
 *   deviceAlloc(session, bytes) -> buffer (zeroed)     freeDevice(buffer): frees it now
 *   deviceView(buffer, byteOffset, bytes) -> a buffer over that range of `buffer` (one sequence's KV
 *     rows in a batch's slab: the same memory bound either way; freeing the parent invalidates it)
 *   deviceWrite(session, buffer, byteOffset, typedArray) / deviceRead(session, buffer, byteOffset, typedArray)
 *   deviceCopy(session, to, toOffset, from, fromOffset, bytes): device to device (a prompt's KV to another sequence)
 *     ordered on the session's stream, done when they return
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include "device.h"

/* The few CUDA runtime entry points we use (cudart's ABI: int error codes, opaque stream pointers). */
typedef int (*cuda_malloc_fn)(void **, size_t);
typedef int (*cuda_free_fn)(void *);
typedef int (*cuda_memset_async_fn)(void *, int, size_t, void *);
typedef int (*cuda_memcpy_async_fn)(void *, const void *, size_t, int, void *);
typedef int (*cuda_stream_sync_fn)(void *);
typedef int (*cuda_stream_create_fn)(void **, unsigned int);
typedef int (*cuda_stream_destroy_fn)(void *);
typedef int (*cuda_set_device_fn)(int);
typedef const char *(*cuda_error_string_fn)(int);
typedef int (*cuda_device_count_fn)(int *);

static struct {
  void *library;
  cuda_malloc_fn malloc;
  cuda_free_fn free;
  cuda_memset_async_fn memset_async;
  cuda_memcpy_async_fn memcpy_async;
  cuda_stream_sync_fn stream_sync;
  cuda_stream_create_fn stream_create;
  cuda_stream_destroy_fn stream_destroy;
  cuda_set_device_fn set_device;
  cuda_error_string_fn error_string;
  cuda_device_count_fn device_count;
} cuda;

enum { CUDA_MEMCPY_HOST_TO_DEVICE = 1, CUDA_MEMCPY_DEVICE_TO_HOST = 2, CUDA_MEMCPY_DEVICE_TO_DEVICE = 3, CUDA_STREAM_NON_BLOCKING = 1 };

/* Once per process (engine replicas may be worker threads): NULL, or what is missing. */
static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;
static const char *cuda_missing;

/* The CUDA runtime the provider links (CUDA 13 for onnxruntime-gpu 1.30), else an older one. */
static const char *open_cuda(void) {
  static const char *names[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so"};
  void *library = NULL;
  for (size_t i = 0; i < sizeof names / sizeof *names && library == NULL; i++) library = dlopen(names[i], RTLD_NOW | RTLD_GLOBAL);
  if (library == NULL) return "cannot load the CUDA runtime (libcudart.so.13): put CUDA's lib64 on LD_LIBRARY_PATH (docs/gpu.md)";
#define SYMBOL(field, name) \
  if ((*(void **)&cuda.field = dlsym(library, name)) == NULL) return "the CUDA runtime lacks " name;
  SYMBOL(malloc, "cudaMalloc")
  SYMBOL(free, "cudaFree")
  SYMBOL(memset_async, "cudaMemsetAsync")
  SYMBOL(memcpy_async, "cudaMemcpyAsync")
  SYMBOL(stream_sync, "cudaStreamSynchronize")
  SYMBOL(stream_create, "cudaStreamCreateWithFlags")
  SYMBOL(stream_destroy, "cudaStreamDestroy")
  SYMBOL(set_device, "cudaSetDevice")
  SYMBOL(error_string, "cudaGetErrorString")
  SYMBOL(device_count, "cudaGetDeviceCount")
#undef SYMBOL
  cuda.library = library;
  return NULL;
}

static void load_cuda_once(void) { cuda_missing = open_cuda(); }

static const char *load_cuda(void) {
  pthread_once(&cuda_once, load_cuda_once);
  return cuda_missing;
}

static napi_value throw_cuda(napi_env env, const char *what, int error) {
  char message[256];
  snprintf(message, sizeof message, "%s: CUDA error %d (%s)", what, error, cuda.error_string != NULL ? cuda.error_string(error) : "?");
  return throw_message(env, message);
}

OrtStatus *anpd_run_options(Session *s, int32_t graph_id, OrtRunOptions **out) {
  *out = NULL;
  // Only a session with CUDA graphs reads the id; there a run without one would capture graph 0.
  if (!s->cuda) return NULL;
  if (graph_id < -1 || graph_id >= GRAPH_IDS_MAX) return g_ort->CreateStatus(ORT_INVALID_ARGUMENT, "graph id out of range");
  OrtRunOptions **slot = &s->run_options[graph_id + 1];
  if (*slot == NULL) {
    OrtStatus *status = g_ort->CreateRunOptions(slot);
    char value[16];
    snprintf(value, sizeof value, "%d", graph_id);
    if (status == NULL) status = g_ort->AddRunConfigEntry(*slot, "gpu_graph_id", value);
    if (status != NULL) return status;
  }
  *out = *slot;
  return NULL;
}

/* A CUDA session's Session.release_device: its stream and memory info (idempotent). */
static void release_cuda_session(Session *s) {
  if (s->stream != NULL && cuda.stream_destroy != NULL) cuda.stream_destroy(s->stream);
  s->stream = NULL;
  if (s->device_info != NULL && s->device_info != g_cpu) g_ort->ReleaseMemoryInfo(s->device_info);
  s->device_info = g_cpu;
}

static napi_value create_cuda_session(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL), "createCudaSession: bad arguments");
  if (argc < 5) return throw_message(env, "createCudaSession(path, intraOpThreads, deviceId, cudaGraph, weightOnlyGemm)");
  char path[4096];
  size_t length;
  CHECK_NAPI(napi_get_value_string_utf8(env, argv[0], path, sizeof path, &length), "createCudaSession: path must be a string");
  if (length >= sizeof path - 1) return throw_message(env, "createCudaSession: path too long");
  int32_t threads, device_id;
  bool cuda_graph, weight_only_gemm;
  CHECK_NAPI(napi_get_value_int32(env, argv[1], &threads), "createCudaSession: intraOpThreads must be a number");
  CHECK_NAPI(napi_get_value_int32(env, argv[2], &device_id), "createCudaSession: deviceId must be a number");
  CHECK_NAPI(napi_get_value_bool(env, argv[3], &cuda_graph), "createCudaSession: cudaGraph must be a boolean");
  CHECK_NAPI(napi_get_value_bool(env, argv[4], &weight_only_gemm), "createCudaSession: weightOnlyGemm must be a boolean");
  const char *missing = load_cuda();
  if (missing != NULL) return throw_message(env, missing);
  int error = cuda.set_device(device_id);
  if (error != 0) return throw_cuda(env, "createCudaSession: cudaSetDevice", error);

  Session *s = calloc(1, sizeof *s);
  if (s == NULL) return throw_message(env, "createCudaSession: out of memory");
  session_init(s);
  s->cuda = 1;
  s->device_id = device_id;
  s->release_device = release_cuda_session;
  error = cuda.stream_create(&s->stream, CUDA_STREAM_NON_BLOCKING);
  if (error != 0) {
    free(s);
    return throw_cuda(env, "createCudaSession: cudaStreamCreate", error);
  }
  OrtSessionOptions *options = NULL;
  OrtCUDAProviderOptionsV2 *cuda_options = NULL;
  OrtMemoryInfo *device_info = NULL;
  char device[16];
  snprintf(device, sizeof device, "%d", device_id);
  // One stream for ORT's kernels and our copies: a copy after a run sees its results, and the
  // next run sees the copy, without a device-wide synchronization.
  const char *keys[] = {"device_id", "enable_cuda_graph", "do_copy_in_default_stream"};
  const char *values[] = {device, cuda_graph ? "1" : "0", "0"};
  OrtStatus *status = g_ort->CreateSessionOptions(&options);
  if (status == NULL) status = g_ort->SetSessionGraphOptimizationLevel(options, ORT_ENABLE_ALL);
  if (status == NULL && threads > 0) status = g_ort->SetIntraOpNumThreads(options, threads);
  if (status == NULL) status = g_ort->SetInterOpNumThreads(options, 1);
  if (status == NULL) status = g_ort->SetSessionLogSeverityLevel(options, 3);
  // A node the CUDA provider cannot take is a load error, not a silent CPU fallback.
  if (status == NULL) status = g_ort->AddSessionConfigEntry(options, "session.disable_cpu_ep_fallback", "1");
  // MatMulNBits nodes without zero points (Q4_0, Q8_0) on TensorRT-LLM's weight-only GEMV/GEMM
  // (docs/perf-notes.md, issue 33). ORT 1.30 reads only the environment, when the session's kernels
  // are made; later versions take the session entry first. Set both ways, so the option decides.
  if (status == NULL)
    status = g_ort->AddSessionConfigEntry(options, "ep.cuda.fpa_intb_gemm", weight_only_gemm ? "1" : "0");
  if (status == NULL) setenv("ORT_FPA_INTB_GEMM", weight_only_gemm ? "1" : "0", 1);
  // Diagnosis only: ANPD_ORT_PROFILE=PREFIX writes ORT's per-node profile when the session is released.
  const char *profile = getenv("ANPD_ORT_PROFILE");
  if (status == NULL && profile != NULL && profile[0] != '\0') {
    status = g_ort->EnableProfiling(options, profile);
    s->profiling = 1;
  }
  if (status == NULL) status = g_ort->CreateCUDAProviderOptions(&cuda_options);
  if (status == NULL) status = g_ort->UpdateCUDAProviderOptions(cuda_options, keys, values, sizeof keys / sizeof *keys);
  if (status == NULL) status = g_ort->UpdateCUDAProviderOptionsWithValue(cuda_options, "user_compute_stream", s->stream);
  if (status == NULL) status = g_ort->SessionOptionsAppendExecutionProvider_CUDA_V2(options, cuda_options);
  if (status == NULL) status = g_ort->CreateMemoryInfo("Cuda", OrtDeviceAllocator, device_id, OrtMemTypeDefault, &device_info);
  if (status == NULL) status = g_ort->CreateSession(g_env, path, options, &s->session);
  if (cuda_options != NULL) g_ort->ReleaseCUDAProviderOptions(cuda_options);
  if (options != NULL) g_ort->ReleaseSessionOptions(options);
  if (device_info != NULL) s->device_info = device_info;
  if (status != NULL) {
    release_cuda_session(s);
    free(s);
    return throw_status(env, status);
  }
  return wrap_session(env, s);
}

/* cudaDeviceCount() -> number of CUDA devices; throws when the CUDA runtime or driver is missing. */
static napi_value cuda_device_count(napi_env env, napi_callback_info info) {
  (void)info;
  const char *missing = load_cuda();
  if (missing != NULL) return throw_message(env, missing);
  int count = 0;
  int error = cuda.device_count(&count);
  if (error != 0) return throw_cuda(env, "cudaGetDeviceCount", error);
  napi_value result;
  CHECK_NAPI(napi_create_int32(env, count, &result), "cudaDeviceCount");
  return result;
}

static void release_device_buffer(napi_env env, void *data, void *hint) {
  (void)hint;
  DeviceBuffer *b = data;
  if (b->parent != NULL) {
    if (b->parent_ref != NULL) napi_delete_reference(env, b->parent_ref);
  } else if (b->ptr != NULL) {
    if (b->cuda) cuda.free(b->ptr);
    else free(b->ptr);
  }
  free(b);
}

static DeviceBuffer *buffer_of(napi_env env, napi_value value) {
  DeviceBuffer *b = tagged_external(env, value, &DEVICE_BUFFER_TAG);
  if (b == NULL) napi_throw_type_error(env, NULL, "not a device buffer");
  else if (device_buffer_ptr(b) == NULL) napi_throw_error(env, NULL, "the device buffer was freed");
  return b == NULL || device_buffer_ptr(b) == NULL ? NULL : b;
}

static napi_value wrap_buffer(napi_env env, DeviceBuffer *b, const char *what) {
  napi_value external;
  if (napi_create_external(env, b, release_device_buffer, NULL, &external) != napi_ok) {
    release_device_buffer(env, b, NULL);
    return throw_message(env, what);
  }
  CHECK_NAPI(napi_type_tag_object(env, external, &DEVICE_BUFFER_TAG), what);
  return external;
}

/* deviceView(buffer, byteOffset, bytes): a buffer over [byteOffset, byteOffset + bytes) of `buffer`. */
static napi_value device_view(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL), "deviceView: bad arguments");
  if (argc < 3) return throw_message(env, "deviceView(buffer, byteOffset, bytes)");
  DeviceBuffer *parent = buffer_of(env, argv[0]);
  if (parent == NULL) return NULL;
  if (parent->parent != NULL) return throw_message(env, "deviceView: a view of a view (take the range of the parent)");
  int64_t offset, bytes;
  CHECK_NAPI(napi_get_value_int64(env, argv[1], &offset), "deviceView: byteOffset must be a number");
  CHECK_NAPI(napi_get_value_int64(env, argv[2], &bytes), "deviceView: bytes must be a number");
  if (offset < 0 || bytes <= 0 || (size_t)offset > parent->bytes || (size_t)bytes > parent->bytes - (size_t)offset)
    return throw_message(env, "deviceView: the range is outside the buffer");
  DeviceBuffer *b = calloc(1, sizeof *b);
  if (b == NULL) return throw_message(env, "deviceView: out of memory");
  b->bytes = (size_t)bytes;
  b->cuda = parent->cuda;
  b->owner = parent->owner;
  b->parent = parent;
  b->parent_offset = (size_t)offset;
  b->ptr = (char *)parent->ptr + offset;
  if (napi_create_reference(env, argv[0], 1, &b->parent_ref) != napi_ok) {
    free(b);
    return throw_message(env, "deviceView: cannot reference the parent");
  }
  return wrap_buffer(env, b, "deviceView: cannot wrap the view");
}

static napi_value device_alloc(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL), "deviceAlloc: bad arguments");
  if (argc < 2) return throw_message(env, "deviceAlloc(session, bytes)");
  Session *s = session_of(env, argv[0]);
  if (s == NULL) return NULL;
  if (s->session == NULL) return throw_message(env, "deviceAlloc: the session was released");
  int64_t bytes;
  CHECK_NAPI(napi_get_value_int64(env, argv[1], &bytes), "deviceAlloc: bytes must be a number");
  if (bytes <= 0) return throw_message(env, "deviceAlloc: bytes must be positive");
  DeviceBuffer *b = calloc(1, sizeof *b);
  if (b == NULL) return throw_message(env, "deviceAlloc: out of memory");
  b->bytes = (size_t)bytes;
  b->cuda = s->cuda;
  b->owner = s->device_owner;
  if (s->cuda) {
    int error = cuda.malloc(&b->ptr, b->bytes);
    // Zeroed: attention never reads a position it was not given, but no stale NaN can leak in.
    if (error == 0) error = cuda.memset_async(b->ptr, 0, b->bytes, s->stream);
    if (error == 0) error = cuda.stream_sync(s->stream);
    if (error != 0) {
      if (b->ptr != NULL) cuda.free(b->ptr);
      free(b);
      return throw_cuda(env, "deviceAlloc", error);
    }
  } else if ((b->ptr = calloc(1, b->bytes)) == NULL) {
    free(b);
    return throw_message(env, "deviceAlloc: out of memory");
  }
  return wrap_buffer(env, b, "deviceAlloc: cannot wrap the buffer");
}

static napi_value free_device(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL), "freeDevice: bad arguments");
  if (argc < 1) return throw_message(env, "freeDevice(buffer)");
  DeviceBuffer *b = tagged_external(env, argv[0], &DEVICE_BUFFER_TAG);
  if (b == NULL) return throw_message(env, "freeDevice: not a device buffer");
  if (b->parent != NULL) return throw_message(env, "freeDevice: a view frees nothing (free its parent)");
  if (b->ptr != NULL) {
    if (b->cuda) cuda.free(b->ptr);
    else free(b->ptr);
    b->ptr = NULL;
  }
  return NULL;
}

/* deviceWrite / deviceRead: (session, buffer, byteOffset, typedArray) */
static napi_value copy(napi_env env, napi_callback_info info, int to_device) {
  size_t argc = 4;
  napi_value argv[4];
  const char *what = to_device ? "deviceWrite" : "deviceRead";
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL), what);
  if (argc < 4) return throw_message(env, to_device ? "deviceWrite(session, buffer, byteOffset, array)" : "deviceRead(session, buffer, byteOffset, array)");
  Session *s = session_of(env, argv[0]);
  if (s == NULL) return NULL;
  // Released: its stream is gone, and a copy on the NULL (legacy default) stream would order nothing.
  if (s->session == NULL) return throw_message(env, "the session was released");
  DeviceBuffer *b = buffer_of(env, argv[1]);
  if (b == NULL) return NULL;
  if (b->owner != s->device_owner) return throw_message(env, "the device buffer belongs to another session");
  int64_t offset;
  CHECK_NAPI(napi_get_value_int64(env, argv[2], &offset), "byteOffset must be a number");
  napi_typedarray_type type;
  size_t elements, array_offset;
  void *data;
  napi_value array_buffer;
  CHECK_NAPI(napi_get_typedarray_info(env, argv[3], &type, &elements, &data, &array_buffer, &array_offset), "array must be a TypedArray");
  size_t bytes = elements * typedarray_element_bytes(type);
  if (offset < 0 || (size_t)offset > b->bytes || bytes > b->bytes - (size_t)offset) return throw_message(env, "copy outside the device buffer");
  char *device = (char *)device_buffer_ptr(b) + offset;
  if (!b->cuda) {
    if (to_device) memcpy(device, data, bytes);
    else memcpy(data, device, bytes);
    return NULL;
  }
  int error = to_device ? cuda.memcpy_async(device, data, bytes, CUDA_MEMCPY_HOST_TO_DEVICE, s->stream)
                        : cuda.memcpy_async(data, device, bytes, CUDA_MEMCPY_DEVICE_TO_HOST, s->stream);
  if (error == 0) error = cuda.stream_sync(s->stream);
  if (error != 0) return throw_cuda(env, what, error);
  return NULL;
}

/* deviceCopy(session, to, toOffset, from, fromOffset, bytes): device to device, on the session's stream. */
static napi_value device_copy(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL), "deviceCopy: bad arguments");
  if (argc < 6) return throw_message(env, "deviceCopy(session, to, toOffset, from, fromOffset, bytes)");
  Session *s = session_of(env, argv[0]);
  if (s == NULL) return NULL;
  if (s->session == NULL) return throw_message(env, "the session was released");
  DeviceBuffer *to = buffer_of(env, argv[1]);
  if (to == NULL) return NULL;
  DeviceBuffer *from = buffer_of(env, argv[3]);
  if (from == NULL) return NULL;
  if (to->owner != s->device_owner || from->owner != s->device_owner) return throw_message(env, "deviceCopy: a device buffer belongs to another session");
  int64_t to_offset, from_offset, bytes;
  CHECK_NAPI(napi_get_value_int64(env, argv[2], &to_offset), "deviceCopy: toOffset must be a number");
  CHECK_NAPI(napi_get_value_int64(env, argv[4], &from_offset), "deviceCopy: fromOffset must be a number");
  CHECK_NAPI(napi_get_value_int64(env, argv[5], &bytes), "deviceCopy: bytes must be a number");
  if (bytes < 0 || to_offset < 0 || from_offset < 0 || (size_t)to_offset > to->bytes || (size_t)bytes > to->bytes - (size_t)to_offset ||
      (size_t)from_offset > from->bytes || (size_t)bytes > from->bytes - (size_t)from_offset)
    return throw_message(env, "deviceCopy: a range is outside its buffer");
  if (bytes == 0) return NULL;
  char *dst = (char *)device_buffer_ptr(to) + to_offset;
  const char *src = (const char *)device_buffer_ptr(from) + from_offset;
  if (!to->cuda) {
    memmove(dst, src, (size_t)bytes);
    return NULL;
  }
  int error = cuda.memcpy_async(dst, src, (size_t)bytes, CUDA_MEMCPY_DEVICE_TO_DEVICE, s->stream);
  if (error == 0) error = cuda.stream_sync(s->stream);
  if (error != 0) return throw_cuda(env, "deviceCopy", error);
  return NULL;
}

/*
 * shareDeviceMemory(session, withSession): `session` takes `withSession`'s buffers from now on (and
 * they its): two sessions of one model on one device (the batch graphs and the single-sequence
 * graph bind the same KV). Their runs are ordered by the host: each run and copy ends synchronized.
 */
static napi_value share_device_memory(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL), "shareDeviceMemory: bad arguments");
  if (argc < 2) return throw_message(env, "shareDeviceMemory(session, withSession)");
  Session *s = session_of(env, argv[0]);
  if (s == NULL) return NULL;
  Session *with = session_of(env, argv[1]);
  if (with == NULL) return NULL;
  if (s->cuda != with->cuda || (s->cuda && s->device_id != with->device_id))
    return throw_message(env, "shareDeviceMemory: the sessions run on different devices");
  s->device_owner = with->device_owner;
  return NULL;
}

static napi_value device_write(napi_env env, napi_callback_info info) { return copy(env, info, 1); }
static napi_value device_read(napi_env env, napi_callback_info info) { return copy(env, info, 0); }

napi_value anpd_device_exports(napi_env env, napi_value exports) {
  static const struct { const char *name; napi_callback fn; } functions[] = {
    {"createCudaSession", create_cuda_session}, {"cudaDeviceCount", cuda_device_count}, {"deviceAlloc", device_alloc}, {"freeDevice", free_device},
    {"deviceWrite", device_write}, {"deviceRead", device_read}, {"deviceView", device_view}, {"deviceCopy", device_copy},
    {"shareDeviceMemory", share_device_memory},
  };
  for (size_t i = 0; i < sizeof functions / sizeof *functions; i++) {
    napi_value fn;
    CHECK_NAPI(napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].fn, NULL, &fn), "init");
    CHECK_NAPI(napi_set_named_property(env, exports, functions[i].name, fn), "init");
  }
  return exports;
}
