/* What native/ort-run.c calls in native/gqa-attention.c (which calls nothing of ours). */
#ifndef ANPD_GQA_ATTENTION_H
#define ANPD_GQA_ATTENTION_H
#include "onnxruntime_c_api.h"

/* Adds the op, in `domain_name`, to a session's options. The domain object must outlive the session. */
OrtStatus *anpd_gqa_register(const OrtApi *api, OrtSessionOptions *options, const char *domain_name, OrtCustomOpDomain **domain);
/* Frees the calling thread's working memory. */
void anpd_gqa_release_thread_memory(void);
#endif
