/* What native/ort-run.c calls in native/device.c. */
#ifndef ANPD_DEVICE_H
#define ANPD_DEVICE_H
#include "common.h"

/* Adds createCudaSession, cudaDeviceCount, deviceAlloc, freeDevice, deviceWrite, deviceRead. */
napi_value anpd_device_exports(napi_env env, napi_value exports);
/* The run options of `graph_id` on a CUDA session (made once), NULL elsewhere. */
OrtStatus *anpd_run_options(Session *s, int32_t graph_id, OrtRunOptions **out);
#endif
