/* The native runner's shared state and helpers (common.h): ORT's API and environment, errors, session handles. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include "common.h"

const OrtApi *g_ort;
OrtEnv *g_env;
OrtMemoryInfo *g_cpu;

const napi_type_tag SESSION_TAG = {0x616e7064u, 0x73657373696f6e31u};
const napi_type_tag DEVICE_BUFFER_TAG = {0x616e7064u, 0x6465766275663031u};

/* One ORT env per process, whichever thread (main or an engine worker) loads the addon first. */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static const char *g_init_error;

static void init_ort(void) {
  g_ort = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (g_ort == NULL) {
    g_init_error = "this libonnxruntime does not offer the ORT C API version the addon was built for";
    return;
  }
  OrtStatus *status = g_ort->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "anpd-ort-run", &g_env);
  if (status == NULL) status = g_ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &g_cpu);
  if (status != NULL) g_ort->ReleaseStatus(status);
  if (status != NULL) g_init_error = "cannot create the ORT environment";
}

const char *anpd_init_ort(void) {
  pthread_once(&g_once, init_ort);
  return g_init_error;
}

napi_value throw_message(napi_env env, const char *message) {
  napi_throw_error(env, NULL, message);
  return NULL;
}

napi_value throw_status(napi_env env, OrtStatus *status) {
  napi_throw_error(env, NULL, g_ort->GetErrorMessage(status));
  g_ort->ReleaseStatus(status);
  return NULL;
}

void *tagged_external(napi_env env, napi_value value, const napi_type_tag *tag) {
  bool tagged = false;
  void *data = NULL;
  if (napi_check_object_type_tag(env, value, tag, &tagged) != napi_ok || !tagged || napi_get_value_external(env, value, &data) != napi_ok) return NULL;
  return data;
}

Session *session_of(napi_env env, napi_value value) {
  Session *s = tagged_external(env, value, &SESSION_TAG);
  if (s == NULL) napi_throw_type_error(env, NULL, "not a session");
  return s;
}

static _Atomic uint64_t next_owner = 1;

void session_init(Session *s) {
  s->device_info = g_cpu;
  s->device_owner = atomic_fetch_add(&next_owner, 1);
}

void session_release_ort(Session *s) {
  if (s->session != NULL && s->profiling) {
    /* ANPD_ORT_PROFILE: ORT writes the profile (a Chrome trace) now. */
    OrtAllocator *allocator = NULL;
    char *file = NULL;
    if (g_ort->GetAllocatorWithDefaultOptions(&allocator) == NULL) {
      OrtStatus *status = g_ort->SessionEndProfiling(s->session, allocator, &file);
      if (status != NULL) g_ort->ReleaseStatus(status);
      else if (file != NULL) allocator->Free(allocator, file);
    }
  }
  if (s->session != NULL) g_ort->ReleaseSession(s->session);
  if (s->domain != NULL) g_ort->ReleaseCustomOpDomain(s->domain);
  for (int i = 0; i <= GRAPH_IDS_MAX; i++) {
    if (s->run_options[i] != NULL) g_ort->ReleaseRunOptions(s->run_options[i]);
    s->run_options[i] = NULL;
  }
  s->session = NULL;
  s->domain = NULL;
  if (s->release_device != NULL) s->release_device(s);
}

static void release_session(napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  session_release_ort(data);
  free(data);
}

napi_value wrap_session(napi_env env, Session *s) {
  napi_value external;
  if (napi_create_external(env, s, release_session, NULL, &external) != napi_ok) {
    release_session(env, s, NULL);
    return throw_message(env, "createSession: cannot wrap the session");
  }
  if (napi_type_tag_object(env, external, &SESSION_TAG) != napi_ok) return throw_message(env, "createSession: cannot tag the session");
  return external;
}

size_t typedarray_element_bytes(napi_typedarray_type type) {
  switch (type) {
    case napi_int8_array: case napi_uint8_array: case napi_uint8_clamped_array: return 1;
    case napi_int16_array: case napi_uint16_array: return 2;
    case napi_int32_array: case napi_uint32_array: case napi_float32_array: return 4;
    default: return 8;
  }
}

void *device_buffer_ptr(const DeviceBuffer *b) {
  if (b->parent == NULL) return b->ptr;
  return b->parent->ptr == NULL ? NULL : (char *)b->parent->ptr + b->parent_offset;
}
