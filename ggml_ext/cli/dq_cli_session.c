// decoquant-cli: the model on our runtime, the vocabulary and sampler chain from libllama, and
// the prefill / decode loop with its timings.
#include "dq_cli.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DQ_CLI_ERR 1024

double dq_cli_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static int fail(char * err, size_t es, const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, es, fmt, ap);
    va_end(ap);
    return DQ_CLI_ERROR;
}

// llama.cpp's log lines only with -v, errors always (the state travels in user_data)
static void log_cb(enum ggml_log_level level, const char * text, void * user_data) {
    dq_cli_log * lg = user_data;
    if (!lg) {
        return;
    }
    if (level != GGML_LOG_LEVEL_CONT) {
        lg->last_level = level;
    }
    if (lg->verbose || lg->last_level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static struct llama_sampler * make_sampler(const dq_cli_llama * ll, const dq_cli_params * p) {
    struct llama_sampler_chain_params sp = ll->llama_sampler_chain_default_params();
    sp.no_perf = true;
    struct llama_sampler * c = ll->llama_sampler_chain_init(sp);
    if (!c) {
        return NULL;
    }
    if (p->temp <= 0.0f) {
        ll->llama_sampler_chain_add(c, ll->llama_sampler_init_greedy());
        return c;
    }
    // llama-cli's order for these samplers
    if (p->top_k > 0) {
        ll->llama_sampler_chain_add(c, ll->llama_sampler_init_top_k(p->top_k));
    }
    if (p->top_p < 1.0f) {
        ll->llama_sampler_chain_add(c, ll->llama_sampler_init_top_p(p->top_p, 1));
    }
    if (p->min_p > 0.0f) {
        ll->llama_sampler_chain_add(c, ll->llama_sampler_init_min_p(p->min_p, 1));
    }
    ll->llama_sampler_chain_add(c, ll->llama_sampler_init_temp(p->temp));
    ll->llama_sampler_chain_add(c, ll->llama_sampler_init_dist(p->seed));
    return c;
}

int dq_cli_session_init(dq_cli_session * s, const dq_cli_params * p, char * err, size_t es) {
    memset(s, 0, sizeof *s);
    char derr[DQ_CLI_ERR];

    if (dq_cli_llama_open(&s->ll, err, es) != 0) {
        return DQ_CLI_ERROR;
    }
    // ggml's log too (e.g. the weight repacking in dq_model_load), until session_free
    s->log.verbose = p->verbose;
    s->log.last_level = GGML_LOG_LEVEL_INFO;
    s->ll.llama_log_set(log_cb, &s->log);
    s->ll.llama_backend_init();

    s->dm = dq_model_load(p->model, derr, sizeof derr);
    if (!s->dm) {
        return fail(err, es, "cannot load the model %s: %s", p->model, derr);
    }
    dq_model_get_info(s->dm, &s->info);

    // the same GGUF through libllama, vocabulary only: tokenizer, template, end-of-generation tokens
    struct llama_model_params mp = s->ll.llama_model_default_params();
    mp.vocab_only = true;
    s->vm = s->ll.llama_model_load_from_file(p->model, mp);
    if (!s->vm) {
        return fail(err, es, "llama.cpp cannot load the vocabulary of %s (-v shows why)", p->model);
    }
    s->vocab = s->ll.llama_model_get_vocab(s->vm);
    s->n_vocab = s->ll.llama_vocab_n_tokens(s->vocab);
    if (s->n_vocab <= 0 || s->n_vocab > s->info.n_vocab) {
        return fail(err, es, "the vocabulary has %d tokens but the model's output has %d", s->n_vocab,
                    s->info.n_vocab);
    }

    int32_t n_ctx = p->n_ctx;
    if (!p->n_ctx_given) {
        n_ctx = s->info.n_ctx_train > 0 && s->info.n_ctx_train < 4096 ? s->info.n_ctx_train : 4096;
    }
    dq_context_params cp = dq_context_default_params();
    cp.n_ctx     = n_ctx;
    cp.n_batch   = p->n_batch;
    cp.n_ubatch  = p->n_batch < 512 ? p->n_batch : 512;
    cp.n_threads = p->n_threads;
    cp.k = dq_kv_default_params(p->kv_mode, p->bits_k);
    cp.v = dq_kv_default_params(p->kv_mode, p->bits_v);
    // as decoquant.Engine: an f16 cache runs llama.cpp's own attention (ggml_flash_attn_ext)
    cp.attn_impl = p->kv_mode == DQ_KV_F16 ? 1 : 0;
    s->dc = dq_context_new(s->dm, &cp, derr, sizeof derr);
    if (!s->dc) {
        return fail(err, es, "cannot create the context: %s", derr);
    }
    s->n_ctx   = dq_context_n_ctx(s->dc);
    s->n_batch = p->n_batch;

    s->smpl   = make_sampler(&s->ll, p);
    s->cand   = malloc((size_t) s->n_vocab * sizeof *s->cand);
    s->cached = malloc((size_t) s->n_ctx * sizeof *s->cached);
    if (!s->smpl || !s->cand || !s->cached) {
        return fail(err, es, "out of memory");
    }
    return DQ_CLI_OK;
}

void dq_cli_session_free(dq_cli_session * s) {
    if (s->ll.handle) {
        if (s->smpl) {
            s->ll.llama_sampler_free(s->smpl);
        }
        if (s->vm) {
            s->ll.llama_model_free(s->vm);
        }
        s->ll.llama_log_set(log_cb, NULL); // silent from here on
        s->ll.llama_backend_free();
        dq_cli_llama_close(&s->ll);
    }
    dq_context_free(s->dc);
    dq_model_free(s->dm);
    free(s->cand);
    free(s->cached);
    memset(s, 0, sizeof *s);
}

void dq_cli_session_reset(dq_cli_session * s) {
    dq_context_reset(s->dc);
    s->n_cached = 0;
    s->logits = NULL;
    s->ll.llama_sampler_reset(s->smpl);
}

int dq_cli_tokenize(const dq_cli_session * s, const char * text, int add_special, int32_t ** out, int32_t * n,
                    char * err, size_t es) {
    const size_t len = strlen(text);
    if (len > (size_t) INT32_MAX / 2) {
        return fail(err, es, "the text is too long (%zu bytes)", len);
    }
    int32_t cap = (int32_t) len + 8;
    int32_t * t = malloc((size_t) cap * sizeof *t);
    if (!t) {
        return fail(err, es, "out of memory");
    }
    int32_t k = s->ll.llama_tokenize(s->vocab, text, (int32_t) len, t, cap, add_special, true);
    if (k < 0 && k != INT32_MIN) {
        cap = -k;
        int32_t * nt = realloc(t, (size_t) cap * sizeof *t);
        if (!nt) {
            free(t);
            return fail(err, es, "out of memory");
        }
        t = nt;
        k = s->ll.llama_tokenize(s->vocab, text, (int32_t) len, t, cap, add_special, true);
    }
    if (k < 0) {
        free(t);
        return fail(err, es, "tokenization failed");
    }
    *out = t;
    *n = k;
    return DQ_CLI_OK;
}

int dq_cli_feed(dq_cli_session * s, const int32_t * tokens, int32_t n, char * err, size_t es) {
    if (n <= 0) {
        return fail(err, es, "the prompt is empty (no tokens)");
    }
    if (n > s->n_ctx) {
        fail(err, es, "the prompt has %d tokens, more than the context size n_ctx = %d (raise -c)", n, s->n_ctx);
        return DQ_CLI_CTX_FULL;
    }
    int32_t keep = 0;
    while (keep < n && keep < s->n_cached && s->cached[keep] == tokens[keep]) {
        keep++;
    }
    if (keep == n) {
        keep = n - 1; // evaluated again for its logits
    }
    char derr[DQ_CLI_ERR];
    if (dq_context_truncate(s->dc, keep, derr, sizeof derr) != 0) {
        return fail(err, es, "%s", derr);
    }
    s->n_cached = keep;
    const double t0 = dq_cli_time();
    for (int32_t i = keep; i < n; i += s->n_batch) {
        const int32_t m = n - i < s->n_batch ? n - i : s->n_batch;
        if (dq_context_eval(s->dc, tokens + i, m, 0, derr, sizeof derr) != 0) {
            s->n_cached = dq_context_n_past(s->dc);
            return fail(err, es, "eval failed: %s", derr);
        }
        memcpy(s->cached + s->n_cached, tokens + i, (size_t) m * sizeof *tokens);
        s->n_cached += m;
    }
    s->t_prefill += dq_cli_time() - t0;
    s->n_prefill += n - keep;
    s->logits = dq_context_logits(s->dc);
    return DQ_CLI_OK;
}

// appends piece to *buf (size *len, capacity *cap)
static int append(char ** buf, size_t * len, size_t * cap, const char * piece, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t nc = (*cap ? *cap : 256);
        while (nc < *len + n + 1) {
            nc *= 2;
        }
        char * nb = realloc(*buf, nc);
        if (!nb) {
            return -1;
        }
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, piece, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

int dq_cli_generate(dq_cli_session * s, int32_t n_predict, FILE * out, char ** reply, int32_t * n_gen,
                    char * err, size_t es) {
    size_t rlen = 0, rcap = 0;
    if (reply) {
        *reply = NULL;
        if (append(reply, &rlen, &rcap, "", 0) != 0) {
            return fail(err, es, "out of memory");
        }
    }
    *n_gen = 0;
    if (!s->logits) {
        return fail(err, es, "nothing to generate from (no prompt evaluated)");
    }
    char derr[DQ_CLI_ERR];
    char piece[256];
    int rc = DQ_CLI_OK;
    while (n_predict < 0 || *n_gen < n_predict) {
        const double t0 = dq_cli_time();
        for (int32_t i = 0; i < s->n_vocab; i++) {
            s->cand[i] = (llama_token_data) { i, s->logits[i], 0.0f };
        }
        llama_token_data_array arr = { s->cand, (size_t) s->n_vocab, -1, false };
        s->ll.llama_sampler_apply(s->smpl, &arr);
        if (arr.selected < 0 || (size_t) arr.selected >= arr.size) {
            rc = fail(err, es, "the sampler selected no token");
            break;
        }
        const llama_token tok = arr.data[arr.selected].id; // through arr: samplers may swap .data
        s->ll.llama_sampler_accept(s->smpl, tok);
        s->t_sample += dq_cli_time() - t0;
        s->n_sampled++;
        if (s->ll.llama_vocab_is_eog(s->vocab, tok)) {
            break;
        }
        const int32_t k = s->ll.llama_token_to_piece(s->vocab, tok, piece, sizeof piece, 0, false);
        if (k > 0) {
            fwrite(piece, 1, (size_t) k, out);
            fflush(out);
            if (reply && append(reply, &rlen, &rcap, piece, (size_t) k) != 0) {
                rc = fail(err, es, "out of memory");
                break;
            }
        }
        ++*n_gen;
        if (n_predict >= 0 && *n_gen >= n_predict) {
            break; // the last token needs no forward pass
        }
        if (s->n_cached >= s->n_ctx) {
            fail(err, es, "the context is full (n_ctx = %d tokens) after %d generated tokens (raise -c)", s->n_ctx,
                 *n_gen);
            rc = DQ_CLI_CTX_FULL;
            break;
        }
        const double t1 = dq_cli_time();
        if (dq_context_eval(s->dc, &tok, 1, 0, derr, sizeof derr) != 0) {
            rc = fail(err, es, "eval failed: %s", derr);
            break;
        }
        s->t_decode += dq_cli_time() - t1;
        s->n_decode++;
        s->cached[s->n_cached++] = tok;
        s->logits = dq_context_logits(s->dc);
    }
    return rc;
}

void dq_cli_print_report(const dq_cli_session * s, const dq_cli_params * p, FILE * f) {
    const double ms_p = 1e3 * s->t_prefill, ms_d = 1e3 * s->t_decode;
    fprintf(f, "\n");
    fprintf(f, "decoquant-cli: prefill: %6lld tokens in %9.2f ms (%8.2f tokens/s)\n", (long long) s->n_prefill, ms_p,
            s->t_prefill > 0 ? (double) s->n_prefill / s->t_prefill : 0.0);
    fprintf(f, "decoquant-cli: decode:  %6lld tokens in %9.2f ms (%8.2f tokens/s)\n", (long long) s->n_decode, ms_d,
            s->t_decode > 0 ? (double) s->n_decode / s->t_decode : 0.0);
    fprintf(f, "decoquant-cli: sample:  %6lld tokens in %9.2f ms\n", (long long) s->n_sampled, 1e3 * s->t_sample);
    const size_t kv = dq_context_kv_bytes(s->dc);
    char what[64];
    if (p->kv_mode == DQ_KV_F16) {
        snprintf(what, sizeof what, "f16");
    } else {
        snprintf(what, sizeof what, "decoquant K%d/V%d", p->bits_k, p->bits_v);
    }
    fprintf(f, "decoquant-cli: KV cache (%s): %.1f bytes/token, %.2f MiB (%zu bytes) for n_ctx = %d\n", what,
            dq_context_kv_bytes_per_token(s->dc), (double) kv / (1024.0 * 1024.0), kv, s->n_ctx);
}

char * dq_cli_apply_template(const dq_cli_session * s, const char * tmpl, const struct llama_chat_message * msgs,
                             size_t n, char * err, size_t es) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        total += strlen(msgs[i].role) + strlen(msgs[i].content);
    }
    if (total > (size_t) INT32_MAX / 4) {
        fail(err, es, "the conversation is too long (%zu bytes)", total);
        return NULL;
    }
    int32_t cap = (int32_t) (2 * total + 512);
    for (int attempt = 0; attempt < 2; attempt++) {
        char * buf = malloc((size_t) cap);
        if (!buf) {
            fail(err, es, "out of memory");
            return NULL;
        }
        const int32_t r = s->ll.llama_chat_apply_template(tmpl, msgs, n, true, buf, cap);
        if (r < 0) {
            free(buf);
            fail(err, es,
                 "the chat template is not one llama_chat_apply_template knows; pick one with --chat-template NAME "
                 "(chatml, llama3, gemma, ...) or use --no-cnv for a raw completion");
            return NULL;
        }
        if (r < cap) {
            buf[r] = '\0';
            return buf;
        }
        free(buf);
        cap = r + 1;
    }
    fail(err, es, "the chat template output did not fit");
    return NULL;
}
