// Which ggml libdecoquant is linked against: the one-ggml check (tests/test_one_ggml.py)
// compares these with what llama-cpp-python's libllama sees in the same process.
#include "decoquant.h"

#include "ggml.h"

DQ_API const char * dq_ggml_commit(void);
DQ_API const char * dq_ggml_version(void);

// ggml_commit() of the loaded libggml-base, e.g. "0c1e570" (plus "-dirty" when built from the
// llama-cpp-python sdist, "unknown" without git), not a string compiled into libdecoquant
const char * dq_ggml_commit(void) { return ggml_commit(); }

// ggml_version() of the loaded libggml-base, e.g. "0.25.3"
const char * dq_ggml_version(void) { return ggml_version(); }
