// decoquant-cli: libllama, opened at run time.
//
// The package installs one libllama, as decoquant/lib/libllama.so: the file name that
// llama-cpp-python opens. Its SONAME is upstream's libllama.so.0, so a binary linked to it would
// look for a file of that name, which the wheel does not carry (a second copy could be loaded
// twice). Like llama-cpp-python, we open it by path next to libdecoquant, and check that it
// runs on libdecoquant's ggml (one ggml per process).
#ifndef DQ_CLI_LLAMA_H
#define DQ_CLI_LLAMA_H

#include <stddef.h>

#include "llama.h"

// the libllama functions decoquant-cli calls (their types come from llama.h)
#define DQ_CLI_LLAMA_FUNCS(X)                                                                     \
    X(llama_backend_init) X(llama_backend_free) X(llama_log_set)                                  \
    X(llama_model_default_params) X(llama_model_load_from_file) X(llama_model_free)               \
    X(llama_model_get_vocab) X(llama_model_chat_template) X(llama_chat_apply_template)            \
    X(llama_vocab_n_tokens) X(llama_vocab_is_eog) X(llama_tokenize) X(llama_token_to_piece)       \
    X(llama_sampler_chain_default_params) X(llama_sampler_chain_init) X(llama_sampler_chain_add)  \
    X(llama_sampler_init_greedy) X(llama_sampler_init_top_k) X(llama_sampler_init_top_p)          \
    X(llama_sampler_init_min_p) X(llama_sampler_init_temp) X(llama_sampler_init_dist)             \
    X(llama_sampler_apply) X(llama_sampler_accept) X(llama_sampler_reset) X(llama_sampler_free)

typedef struct dq_cli_llama {
    void * handle;
    char   path[4096];
#define DQ_CLI_LLAMA_FIELD(f) __typeof__(f) * f;
    DQ_CLI_LLAMA_FUNCS(DQ_CLI_LLAMA_FIELD)
#undef DQ_CLI_LLAMA_FIELD
} dq_cli_llama;

// Opens <libdecoquant's directory>/lib/libllama.so (the installed layout), else libllama.so.0
// through the binary's RUNPATH (a build tree). 0 on success, else -1 with the reason in err.
int  dq_cli_llama_open(dq_cli_llama * ll, char * err, size_t es);
void dq_cli_llama_close(dq_cli_llama * ll);

#endif // DQ_CLI_LLAMA_H
