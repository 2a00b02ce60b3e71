/*
 * What native/ort-run.c and native/device.c share, defined in native/common.c. The calls form a
 * tree: ort-run.c (the module) -> device.c -> common.c, ort-run.c -> common.c, ort-run.c ->
 * gqa-attention.c (a leaf). Nothing here calls back up.
 */
#ifndef ANPD_COMMON_H
#define ANPD_COMMON_H
#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "onnxruntime_c_api.h"

extern const OrtApi *g_ort;
extern OrtEnv *g_env;
extern OrtMemoryInfo *g_cpu;
extern const napi_type_tag SESSION_TAG;
extern const napi_type_tag DEVICE_BUFFER_TAG;

/* CUDA graphs a session may hold (ids 0 .. GRAPH_IDS_MAX - 1). */
#define GRAPH_IDS_MAX 256

/*
 * A session, the custom op domain it was created with (which must outlive it), and where its
 * device buffers live: CUDA memory for a CUDA session, host memory otherwise (so the device path
 * runs, and is tested, on a machine without a GPU).
 */
typedef struct Session {
  OrtSession *session;
  OrtCustomOpDomain *domain;
  OrtRunOptions *run_options[GRAPH_IDS_MAX + 1]; /* by graph id + 1 (made once each: a config entry cannot be changed quietly) */
  int cuda;
  int device_id;
  void *stream;                   /* cudaStream_t: ORT's compute stream, and our copies' */
  OrtMemoryInfo *device_info;     /* g_cpu for host sessions */
  uint64_t device_owner;          /* device buffers carry it: a buffer runs only with its session */
  int profiling;                  /* ANPD_ORT_PROFILE was set at creation (diagnosis: per-node times) */
  /* Frees what the session's creator added (device.c: the CUDA stream and memory info); NULL: nothing. */
  void (*release_device)(struct Session *s);
} Session;

/*
 * Memory a session's runs read and write in place: a KV cache, an input or output on the device.
 * A view (deviceView) is a byte range of another buffer: it frees nothing, holds a reference to its
 * parent (which outlives it), and is usable while the parent is not freed.
 */
typedef struct DeviceBuffer {
  void *ptr;
  size_t bytes;
  int cuda;
  uint64_t owner;
  struct DeviceBuffer *parent; /* views only */
  size_t parent_offset;        /* views only: ptr = parent->ptr + parent_offset */
  napi_ref parent_ref;         /* views only: keeps the parent from being collected first */
} DeviceBuffer;

/* The buffer's memory now: NULL once it (or, for a view, its parent) was freed. */
void *device_buffer_ptr(const DeviceBuffer *b);

#define CHECK_NAPI(call, what) \
  do { if ((call) != napi_ok) return throw_message(env, what); } while (0)
#define CHECK_ORT(call) \
  do { OrtStatus *status_ = (call); if (status_ != NULL) return throw_status(env, status_); } while (0)

/* Once per process, whichever thread loads the addon first: g_ort, g_env, g_cpu. NULL, or what failed. */
const char *anpd_init_ort(void);
napi_value throw_message(napi_env env, const char *message);
napi_value throw_status(napi_env env, OrtStatus *status);
/* The data of an external made by this addon with `tag`, else NULL (no exception). */
void *tagged_external(napi_env env, napi_value value, const napi_type_tag *tag);
Session *session_of(napi_env env, napi_value value);
/* A new session for `s` (calloc'd by the caller, session not yet created): host device memory, a fresh owner id. */
void session_init(Session *s);
/* Hands `s` to JavaScript; its finalizer frees it. On failure frees it and throws. */
napi_value wrap_session(napi_env env, Session *s);
/* Frees the ORT session, its domain, run options and device resources; idempotent (the finalizer runs it again). */
void session_release_ort(Session *s);
/* Bytes per element of a TypedArray type. */
size_t typedarray_element_bytes(napi_typedarray_type type);
#endif
