/* native/paged-attention.c: ORT's PagedAttention on the CPU (float16), for the emulated device path. */
#ifndef ANPD_PAGED_ATTENTION_H
#define ANPD_PAGED_ATTENTION_H
#include "onnxruntime_c_api.h"

/* Adds a com.microsoft domain holding PagedAttention for the CPU provider to `options`; `domain` must outlive the session. */
OrtStatus *anpd_paged_register(const OrtApi *api, OrtSessionOptions *options, OrtCustomOpDomain **domain);
#endif
