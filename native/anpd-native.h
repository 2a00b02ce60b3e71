/* What native/ort-run.c and native/device.c share. */
#ifndef ANPD_NATIVE_H
#define ANPD_NATIVE_H
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
typedef struct {
  OrtSession *session;
  OrtCustomOpDomain *domain;
  OrtRunOptions *run_options[GRAPH_IDS_MAX + 1]; /* by graph id + 1 (made once each: a config entry cannot be changed quietly) */
  int cuda;
  int device_id;
  void *stream;                   /* cudaStream_t: ORT's compute stream, and our copies' */
  OrtMemoryInfo *device_info;     /* g_cpu for host sessions */
  uint64_t device_owner;          /* device buffers carry it: a buffer runs only with its session */
} Session;

/* Memory a session's runs read and write in place: a KV cache, an input or output on the device. */
typedef struct {
  void *ptr;
  size_t bytes;
  int cuda;
  uint64_t owner;
} DeviceBuffer;

#define CHECK_NAPI(call, what) \
  do { if ((call) != napi_ok) return throw_message(env, what); } while (0)
#define CHECK_ORT(call) \
  do { OrtStatus *status_ = (call); if (status_ != NULL) return throw_status(env, status_); } while (0)

napi_value throw_message(napi_env env, const char *message);
napi_value throw_status(napi_env env, OrtStatus *status);
/* The data of an external made by this addon with `tag`, else NULL (no exception). */
void *tagged_external(napi_env env, napi_value value, const napi_type_tag *tag);
Session *session_of(napi_env env, napi_value value);
napi_value wrap_session(napi_env env, Session *s);

/* device.c */
napi_value anpd_device_exports(napi_env env, napi_value exports);
OrtStatus *anpd_run_options(Session *s, int32_t graph_id, OrtRunOptions **out);
void anpd_device_release(Session *s);
uint64_t anpd_next_owner(void);
#endif
