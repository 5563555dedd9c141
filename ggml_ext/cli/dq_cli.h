// decoquant-cli: a llama-cli-like command line on the DecoQuant runtime. Forward passes run on
// libdecoquant (decoquant_model.h); libllama (vocab_only) gives the tokenizer, the chat template
// and the sampler chain, which is applied to our logits (never llama_sampler_sample: it needs
// a llama context).
#ifndef DQ_CLI_H
#define DQ_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "decoquant_model.h"
#include "dq_cli_llama.h"

#define DQ_CLI_DEFAULT_MODEL "smollm2-135m-instruct"
// the default system message, as `decoquant chat`'s (py/decoquant/chat.py): SmolLM2's own default
// system prompt makes its greedy answers drift
#define DQ_CLI_DEFAULT_SYSTEM "You are a helpful assistant."

enum dq_cli_conv {
    DQ_CLI_CONV_AUTO = -1, // -p: one templated turn if the model has a template; no -p: chat
    DQ_CLI_CONV_OFF  = 0,  // --no-cnv: raw completion of the prompt
    DQ_CLI_CONV_ON   = 1,  // -cnv: interactive chat on stdin
};

typedef struct dq_cli_params {
    char         model[4096];   // resolved .gguf path (dq_cli_resolve_model)
    const char * model_arg;     // -m as given, NULL: the registry's default model
    const char * prompt;        // -p, or the contents of -f
    char *       prompt_owned;  // -f's buffer
    const char * system;        // --system
    const char * chat_template; // --chat-template: a builtin name or a template; NULL: the GGUF's
    int32_t      n_predict;     // -1: until end of generation or a full context
    int32_t      n_ctx;         // 0: the model's training context
    int32_t      n_ctx_given;   // 0: the 4096 default, capped at the model's training context
    int32_t      n_batch;
    int32_t      n_threads;
    float        temp, top_p, min_p;
    int32_t      top_k;
    uint32_t     seed;          // LLAMA_DEFAULT_SEED: random
    int32_t      conversation;  // enum dq_cli_conv
    int32_t      kv_mode;       // enum dq_kv_mode
    int32_t      bits_k, bits_v;
    int32_t      display_prompt;
    int32_t      verbose_prompt;
    int32_t      verbose;
} dq_cli_params;

// args: 0 ok, 1 done (help was printed), -1 bad arguments (message printed)
int  dq_cli_parse(int argc, char ** argv, dq_cli_params * p);
void dq_cli_params_free(dq_cli_params * p);
// fills p->model from -m (a path or a registry name) or the registry cache's default model
int  dq_cli_resolve_model(dq_cli_params * p, char * err, size_t es);

typedef struct dq_cli_log {
    int verbose;    // -v: all of llama.cpp's log lines, else only errors
    int last_level; // for GGML_LOG_LEVEL_CONT lines
} dq_cli_log;

// One model and one KV cache, plus the vocabulary and the sampler chain from libllama.
typedef struct dq_cli_session {
    dq_cli_llama               ll;
    dq_model *                 dm;
    dq_context *               dc;
    dq_model_info              info;
    struct llama_model *       vm;     // vocab_only
    const struct llama_vocab * vocab;
    struct llama_sampler *     smpl;
    llama_token_data *         cand;   // our candidate buffer (samplers may swap the array's .data)
    int32_t                    n_vocab;
    int32_t                    n_batch;
    int32_t *                  cached; // the tokens in the KV cache, for prefix reuse
    int32_t                    n_cached;
    int32_t                    n_ctx;
    const float *              logits; // of the last fed token
    // totals for the timings report
    int64_t n_prefill, n_decode, n_sampled;
    double  t_prefill, t_decode, t_sample; // seconds
    dq_cli_log log;
} dq_cli_session;

enum dq_cli_status {
    DQ_CLI_OK        = 0,
    DQ_CLI_ERROR     = -1,
    DQ_CLI_CTX_FULL  = -2, // the context has no room for the next token
};

int  dq_cli_session_init(dq_cli_session * s, const dq_cli_params * p, char * err, size_t es);
void dq_cli_session_free(dq_cli_session * s);
void dq_cli_session_reset(dq_cli_session * s);

// text -> tokens (malloc'd into *out); parse_special: control tokens in the text are tokens
int  dq_cli_tokenize(const dq_cli_session * s, const char * text, int add_special, int32_t ** out,
                     int32_t * n, char * err, size_t es);
// Makes the cache hold exactly tokens[0..n): keeps the common prefix with what is cached and
// evaluates the rest. Leaves the logits of tokens[n-1] in s->logits.
int  dq_cli_feed(dq_cli_session * s, const int32_t * tokens, int32_t n, char * err, size_t es);
// Samples up to n_predict tokens (-1: no limit) from s->logits, writing each piece to out and,
// if reply != NULL, appending it to *reply (malloc'd). Stops at an end-of-generation token.
// DQ_CLI_CTX_FULL when the context fills first.
int  dq_cli_generate(dq_cli_session * s, int32_t n_predict, FILE * out, char ** reply, int32_t * n_gen,
                     char * err, size_t es);
void dq_cli_print_report(const dq_cli_session * s, const dq_cli_params * p, FILE * f);

// Chat template (llama_chat_apply_template): the formatted text, malloc'd; NULL on error.
char * dq_cli_apply_template(const dq_cli_session * s, const char * tmpl, const struct llama_chat_message * msgs,
                             size_t n, char * err, size_t es);

double dq_cli_time(void);

#endif // DQ_CLI_H
