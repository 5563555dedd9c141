// GGUF loading: metadata through gguf.h (no_alloc), tensor data mmap'd and wrapped in a CPU
// buffer (ggml_backend_cpu_buffer_from_ptr), hyperparameters from <arch>.* keys. Every check
// ends in a message, never in an assert.
#define _GNU_SOURCE
#include "dq_model_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void dq_set_err(char * err, size_t size, const char * fmt, ...) {
    if (!err || size == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
}

uint64_t dq_fnv1a(uint64_t h, const void * data, size_t n) {
    const uint8_t * p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static const char * k_archs[] = { "llama", "qwen2", "gemma3" };

const char * dq_model_supported_archs(void) { return "llama, qwen2, gemma3"; }

// ---------------------------------------------------------------- metadata helpers

static int kv_find(const dq_model * m, const char * suffix) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->arch_name, suffix);
    return (int) gguf_find_key(m->gguf, key);
}

// an integer or float key as double; returns 0 if absent, -1 if of a wrong type
static int kv_num(const dq_model * m, const char * suffix, double * out) {
    const int id = kv_find(m, suffix);
    if (id < 0) {
        return 0;
    }
    switch (gguf_get_kv_type(m->gguf, id)) {
        case GGUF_TYPE_UINT8:   *out = gguf_get_val_u8(m->gguf, id); return 1;
        case GGUF_TYPE_INT8:    *out = gguf_get_val_i8(m->gguf, id); return 1;
        case GGUF_TYPE_UINT16:  *out = gguf_get_val_u16(m->gguf, id); return 1;
        case GGUF_TYPE_INT16:   *out = gguf_get_val_i16(m->gguf, id); return 1;
        case GGUF_TYPE_UINT32:  *out = gguf_get_val_u32(m->gguf, id); return 1;
        case GGUF_TYPE_INT32:   *out = gguf_get_val_i32(m->gguf, id); return 1;
        case GGUF_TYPE_UINT64:  *out = (double) gguf_get_val_u64(m->gguf, id); return 1;
        case GGUF_TYPE_INT64:   *out = (double) gguf_get_val_i64(m->gguf, id); return 1;
        case GGUF_TYPE_FLOAT32: *out = gguf_get_val_f32(m->gguf, id); return 1;
        case GGUF_TYPE_FLOAT64: *out = gguf_get_val_f64(m->gguf, id); return 1;
        default: return -1;
    }
}

static int kv_int(dq_model * m, const char * suffix, int32_t * out, int required, int32_t lo, int32_t hi, char * err,
                  size_t es) {
    double v = 0;
    const int r = kv_num(m, suffix, &v);
    if (r < 0) {
        dq_set_err(err, es, "%s: metadata %s.%s has a non-numeric type", m->path, m->arch_name, suffix);
        return -1;
    }
    if (r == 0) {
        if (required) {
            dq_set_err(err, es, "%s: metadata %s.%s is missing", m->path, m->arch_name, suffix);
            return -1;
        }
        return 0;
    }
    if (v != floor(v) || v < lo || v > hi) {
        dq_set_err(err, es, "%s: metadata %s.%s = %g is out of range [%d, %d]", m->path, m->arch_name, suffix, v, lo,
                   hi);
        return -1;
    }
    *out = (int32_t) v;
    return 0;
}

static int kv_float(dq_model * m, const char * suffix, float * out, int required, char * err, size_t es) {
    double v = 0;
    const int r = kv_num(m, suffix, &v);
    if (r < 0 || (r == 0 && required)) {
        dq_set_err(err, es, "%s: metadata %s.%s is %s", m->path, m->arch_name, suffix,
                   r < 0 ? "not a number" : "missing");
        return -1;
    }
    if (r == 1) {
        if (!isfinite(v)) {
            dq_set_err(err, es, "%s: metadata %s.%s is not finite", m->path, m->arch_name, suffix);
            return -1;
        }
        *out = (float) v;
    }
    return 0;
}

// A tensor by name with an expected 1-D or 2-D shape (ne1 = 0: 1-D).
static struct ggml_tensor * get_t(dq_model * m, const char * name, int64_t ne0, int64_t ne1, int required, int * bad,
                                  char * err, size_t es) {
    if (*bad) {
        return NULL;
    }
    struct ggml_tensor * t = ggml_get_tensor(m->ctx_meta, name);
    if (!t) {
        if (required) {
            dq_set_err(err, es, "%s: tensor %s is missing", m->path, name);
            *bad = 1;
        }
        return NULL;
    }
    const int nd = ne1 > 0 ? 2 : 1;
    if (ggml_n_dims(t) > nd || t->ne[0] != ne0 || (nd == 2 && t->ne[1] != ne1)) {
        dq_set_err(err, es, "%s: tensor %s has shape [%lld, %lld, %lld, %lld], expected [%lld%s%lld]", m->path, name,
                   (long long) t->ne[0], (long long) t->ne[1], (long long) t->ne[2], (long long) t->ne[3],
                   (long long) ne0, nd == 2 ? ", " : "", nd == 2 ? (long long) ne1 : 0LL);
        *bad = 1;
        return NULL;
    }
    return t;
}

static int load_hparams(dq_model * m, char * err, size_t es) {
    int32_t n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, n_ff = 0, ctx = 0, hd = 0, n_rot = 0;
    if (kv_int(m, "block_count", &n_layer, 1, 1, 4096, err, es) || kv_int(m, "embedding_length", &n_embd, 1, 16, 1 << 20, err, es) ||
        kv_int(m, "attention.head_count", &n_head, 1, 1, 4096, err, es) ||
        kv_int(m, "feed_forward_length", &n_ff, 1, 1, 1 << 22, err, es) ||
        kv_int(m, "context_length", &ctx, 1, 1, 1 << 24, err, es)) {
        return -1;
    }
    n_head_kv = n_head;
    hd        = n_embd / n_head;
    if (kv_int(m, "attention.head_count_kv", &n_head_kv, 0, 1, 4096, err, es) ||
        kv_int(m, "attention.key_length", &hd, 0, 1, 4096, err, es)) {
        return -1;
    }
    int32_t hdv = hd;
    if (kv_int(m, "attention.value_length", &hdv, 0, 1, 4096, err, es)) {
        return -1;
    }
    n_rot = hd;
    if (kv_int(m, "rope.dimension_count", &n_rot, 0, 1, 4096, err, es)) {
        return -1;
    }
    if (hdv != hd || n_rot != hd) {
        dq_set_err(err, es, "%s: key_length %d, value_length %d and rope.dimension_count %d must be equal", m->path, hd,
                   hdv, n_rot);
        return -1;
    }
    if (n_head % n_head_kv != 0 || hd % 16 != 0) {
        dq_set_err(err, es, "%s: unsupported shape: %d heads, %d KV heads, head_dim %d (needs n_head %% n_head_kv == 0 "
                   "and head_dim %% 16 == 0)", m->path, n_head, n_head_kv, hd);
        return -1;
    }
    m->n_layer = n_layer; m->n_embd = n_embd; m->n_head = n_head; m->n_head_kv = n_head_kv; m->n_ff = n_ff;
    m->n_ctx_train = ctx; m->head_dim = hd; m->n_rot = n_rot;

    float base = 10000.0f, base_swa = 10000.0f, scale_factor = 0.0f;
    m->eps = 1e-5f;
    if (kv_float(m, "rope.freq_base", &base, 0, err, es) || kv_float(m, "rope.freq_base_swa", &base_swa, 0, err, es) ||
        kv_float(m, "attention.layer_norm_rms_epsilon", &m->eps, 1, err, es) ||
        kv_float(m, "rope.scaling.factor", &scale_factor, 0, err, es)) {
        return -1;
    }
    const int st = kv_find(m, "rope.scaling.type");
    float rope_scale = 1.0f;
    if (st >= 0) {
        const char * s = gguf_get_kv_type(m->gguf, st) == GGUF_TYPE_STRING ? gguf_get_val_str(m->gguf, st) : "?";
        if (strcmp(s, "linear") == 0) {
            rope_scale = scale_factor > 0 ? 1.0f / scale_factor : 1.0f;
        } else if (strcmp(s, "none") != 0) {
            dq_set_err(err, es, "%s: rope scaling type '%s' is not supported (none, linear)", m->path, s);
            return -1;
        }
    } else if (scale_factor > 0 && scale_factor != 1.0f) {
        rope_scale = 1.0f / scale_factor;
    }
    m->logit_softcap = 0.0f;
    m->n_swa = 0;
    if (m->arch == DQ_ARCH_GEMMA3) {
        if (kv_int(m, "attention.sliding_window", &m->n_swa, 0, 0, 1 << 24, err, es) ||
            kv_float(m, "final_logit_softcapping", &m->logit_softcap, 0, err, es)) {
            return -1;
        }
        if (kv_find(m, "attention.sliding_window_pattern") >= 0) {
            dq_set_err(err, es, "%s: gemma3.attention.sliding_window_pattern is not supported (default pattern 6 only)",
                       m->path);
            return -1;
        }
        m->attn_scale = 1.0f / sqrtf((float) hd); // applied to Q (gemma3.cpp); 27B differs, not supported
        m->rope_type  = GGML_ROPE_TYPE_NEOX;
    } else {
        m->attn_scale = 1.0f / sqrtf((float) hd);
        m->rope_type  = m->arch == DQ_ARCH_QWEN2 ? GGML_ROPE_TYPE_NEOX : GGML_ROPE_TYPE_NORMAL;
    }
    m->layers = calloc((size_t) n_layer, sizeof(dq_layer));
    if (!m->layers) {
        dq_set_err(err, es, "out of memory");
        return -1;
    }
    for (int il = 0; il < n_layer; il++) {
        dq_layer * L = &m->layers[il];
        L->is_swa     = m->arch == DQ_ARCH_GEMMA3 && m->n_swa > 0 && (il % 6 < 5);
        L->rope_base  = L->is_swa ? base_swa : base;
        L->rope_scale = L->is_swa ? 1.0f : rope_scale;
    }
    return 0;
}

static int load_tensors(dq_model * m, char * err, size_t es) {
    int bad = 0;
    const int64_t E = m->n_embd, HD = m->head_dim, Q = (int64_t) m->n_head * HD, KV = (int64_t) m->n_head_kv * HD;
    struct ggml_tensor * te = ggml_get_tensor(m->ctx_meta, "token_embd.weight");
    if (!te || te->ne[0] != E || te->ne[1] < 1 || ggml_n_dims(te) > 2) {
        dq_set_err(err, es, "%s: tensor token_embd.weight is %s", m->path, te ? "of the wrong shape" : "missing");
        return -1;
    }
    m->n_vocab     = (int32_t) te->ne[1];
    m->tok_embd    = te;
    m->output_norm = get_t(m, "output_norm.weight", E, 0, 1, &bad, err, es);
    m->output      = get_t(m, "output.weight", E, m->n_vocab, 0, &bad, err, es);
    if (!m->output) {
        m->output = te; // tied embeddings
    }
    char name[96];
#define T(field, fmt, ne0, ne1, req)                                      \
    do {                                                                  \
        snprintf(name, sizeof name, fmt, il);                             \
        L->field = get_t(m, name, ne0, ne1, req, &bad, err, es);          \
    } while (0)
    const int gem = m->arch == DQ_ARCH_GEMMA3;
    for (int il = 0; il < m->n_layer && !bad; il++) {
        dq_layer * L = &m->layers[il];
        T(attn_norm, "blk.%d.attn_norm.weight", E, 0, 1);
        T(wq, "blk.%d.attn_q.weight", E, Q, 1);
        T(wk, "blk.%d.attn_k.weight", E, KV, 1);
        T(wv, "blk.%d.attn_v.weight", E, KV, 1);
        T(wo, "blk.%d.attn_output.weight", Q, E, 1);
        T(bq, "blk.%d.attn_q.bias", Q, 0, m->arch == DQ_ARCH_QWEN2);
        T(bk, "blk.%d.attn_k.bias", KV, 0, m->arch == DQ_ARCH_QWEN2);
        T(bv, "blk.%d.attn_v.bias", KV, 0, m->arch == DQ_ARCH_QWEN2);
        T(bo, "blk.%d.attn_output.bias", E, 0, 0);
        T(ffn_norm, "blk.%d.ffn_norm.weight", E, 0, 1);
        T(ffn_gate, "blk.%d.ffn_gate.weight", E, m->n_ff, 1);
        T(ffn_up, "blk.%d.ffn_up.weight", E, m->n_ff, 1);
        T(ffn_down, "blk.%d.ffn_down.weight", m->n_ff, E, 1);
        if (gem) {
            T(q_norm, "blk.%d.attn_q_norm.weight", HD, 0, 1);
            T(k_norm, "blk.%d.attn_k_norm.weight", HD, 0, 1);
            T(attn_post_norm, "blk.%d.post_attention_norm.weight", E, 0, 1);
            T(ffn_post_norm, "blk.%d.post_ffw_norm.weight", E, 0, 1);
        }
    }
#undef T
    return bad ? -1 : 0;
}

static void compute_fingerprint(dq_model * m) {
    uint64_t h = 0xcbf29ce484222325ULL;
    h = dq_fnv1a(h, m->arch_name, strlen(m->arch_name));
    const int32_t hp[] = { m->n_vocab, m->n_ctx_train, m->n_embd, m->n_layer, m->n_head, m->n_head_kv, m->head_dim, m->n_ff };
    h = dq_fnv1a(h, hp, sizeof hp);
    const int64_t nt = gguf_get_n_tensors(m->gguf);
    for (int64_t i = 0; i < nt; i++) {
        const char * nm = gguf_get_tensor_name(m->gguf, i);
        h = dq_fnv1a(h, nm, strlen(nm));
        const int32_t ty = gguf_get_tensor_type(m->gguf, i);
        const size_t off = gguf_get_tensor_offset(m->gguf, i), sz = gguf_get_tensor_size(m->gguf, i);
        h = dq_fnv1a(h, &ty, sizeof ty);
        h = dq_fnv1a(h, &off, sizeof off);
        h = dq_fnv1a(h, &sz, sizeof sz);
    }
    // a sample of the weights themselves: the first and last 64 KiB of the data section
    const size_t d0 = gguf_get_data_offset(m->gguf), n = m->map_size - d0, s = n < 65536 ? n : 65536;
    h = dq_fnv1a(h, (const uint8_t *) m->map + d0, s);
    h = dq_fnv1a(h, (const uint8_t *) m->map + m->map_size - s, s);
    m->fingerprint = h;
}

// ---------------------------------------------------------------- repacked weights
// llama.cpp (use_extra_bufts, its default) moves the matmul weights that the CPU backend can repack
// (Q4_0, Q4_K, Q6_K, Q8_0, ... into interleaved rows for its GEMM kernels) into the CPU "extra"
// buffer type. We do the same through the public registry API, so that prefill runs the same
// kernels. The AMX buffer type is compiled out (cmake/llama_cpp_build.cmake), so only the repack
// one can show up; DQ_NO_REPACK=1 keeps every weight in the mapping.

static ggml_backend_buffer_type_t repack_buft(ggml_backend_dev_t * dev_out) {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!dev) {
        return NULL;
    }
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    ggml_backend_dev_get_extra_bufts_t fn =
        (ggml_backend_dev_get_extra_bufts_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    if (!fn) {
        return NULL;
    }
    for (ggml_backend_buffer_type_t * b = fn(dev); b && *b; b++) {
        const char * name = ggml_backend_buft_name(*b);
        if (name && strstr(name, "REPACK")) {
            *dev_out = dev;
            return *b;
        }
    }
    return NULL;
}

static int repack_supported(ggml_backend_dev_t dev, ggml_backend_buffer_type_t buft, const struct ggml_tensor * w) {
    struct ggml_init_params ip = { ggml_tensor_overhead() * 8, NULL, true };
    struct ggml_context * ctx = ggml_init(ip);
    if (!ctx) {
        return 0;
    }
    struct ggml_tensor * wd = ggml_dup_tensor(ctx, w);
    struct ggml_tensor * b  = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, w->ne[0], 512, w->ne[2], w->ne[3]);
    struct ggml_tensor * op = ggml_mul_mat(ctx, wd, b);
    wd->buffer = ggml_backend_buft_alloc_buffer(buft, 0);
    const int ok = wd->buffer && ggml_backend_dev_supports_op(dev, op);
    if (wd->buffer) {
        ggml_backend_buffer_free(wd->buffer);
    }
    ggml_free(ctx);
    return ok;
}

// exported by libggml-base (ggml-impl.h), not in its public headers
void ggml_log_callback_default(enum ggml_log_level level, const char * text, void * user_data);

// ggml's default logger prints debug lines too (one per repacked tensor); drop those while we repack.
// A logger the host installed (llama-cpp-python's, the CLI's) is left to filter as it likes.
static void log_above_debug(enum ggml_log_level level, const char * text, void * user_data) {
    if (level != GGML_LOG_LEVEL_DEBUG) {
        ggml_log_callback_default(level, text, user_data);
    }
}

static void repack_weights_impl(dq_model * m);

static void repack_weights(dq_model * m) {
    const char * env = getenv("DQ_NO_REPACK");
    if (env && env[0] && env[0] != '0') {
        return;
    }
    ggml_log_callback cb = NULL;
    void * ud = NULL;
    ggml_log_get(&cb, &ud);
    const int quiet = cb == ggml_log_callback_default;
    if (quiet) {
        ggml_log_set(log_above_debug, ud);
    }
    repack_weights_impl(m);
    if (quiet) {
        ggml_log_set(cb, ud);
    }
}

static void repack_weights_impl(dq_model * m) {
    ggml_backend_dev_t dev = NULL;
    ggml_backend_buffer_type_t buft = repack_buft(&dev);
    if (!buft) {
        return;
    }
    const int per = 7, n = m->n_layer * per + 1;
    struct ggml_tensor *** slots = calloc((size_t) n, sizeof *slots);
    if (!slots) {
        return;
    }
    int k = 0;
    for (int il = 0; il < m->n_layer; il++) {
        dq_layer * L = &m->layers[il];
        struct ggml_tensor ** ws[7] = { &L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_gate, &L->ffn_up, &L->ffn_down };
        for (int j = 0; j < per; j++) {
            if (*ws[j] && repack_supported(dev, buft, *ws[j])) {
                slots[k++] = ws[j];
            }
        }
    }
    if (repack_supported(dev, buft, m->output)) {
        slots[k++] = &m->output; // a tied output gets its own repacked copy; get_rows keeps the mapping
    }
    if (k == 0) {
        free(slots);
        return;
    }
    struct ggml_init_params ip = { ggml_tensor_overhead() * (size_t) (k + 1), NULL, true };
    m->ctx_repack = ggml_init(ip);
    struct ggml_tensor ** dup = calloc((size_t) k, sizeof *dup);
    if (!m->ctx_repack || !dup) {
        free(slots);
        free(dup);
        return;
    }
    for (int i = 0; i < k; i++) {
        dup[i] = ggml_dup_tensor(m->ctx_repack, *slots[i]);
        ggml_set_name(dup[i], ggml_get_name(*slots[i]));
    }
    m->buf_repack = ggml_backend_alloc_ctx_tensors_from_buft(m->ctx_repack, buft);
    if (m->buf_repack) {
        for (int i = 0; i < k; i++) {
            ggml_backend_tensor_set(dup[i], (*slots[i])->data, 0, ggml_nbytes(*slots[i]));
            *slots[i] = dup[i];
        }
        m->n_repacked = k;
    }
    free(slots);
    free(dup);
}

dq_model * dq_model_load(const char * path, char * err, size_t es) {
    if (err && es) {
        err[0] = 0;
    }
    if (!path) {
        dq_set_err(err, es, "no model path");
        return NULL;
    }
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        dq_set_err(err, es, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat stt;
    if (fstat(fd, &stt) != 0 || !S_ISREG(stt.st_mode)) {
        dq_set_err(err, es, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    const size_t fsize = (size_t) stt.st_size;
    char magic[4] = { 0 };
    if (fsize < 24 || pread(fd, magic, 4, 0) != 4) {
        dq_set_err(err, es, "%s: not a GGUF file (truncated: %zu bytes)", path, fsize);
        close(fd);
        return NULL;
    }
    if (memcmp(magic, "GGUF", 4) != 0) {
        dq_set_err(err, es, "%s: not a GGUF file (bad magic %02x %02x %02x %02x, expected 'GGUF')", path,
                   (uint8_t) magic[0], (uint8_t) magic[1], (uint8_t) magic[2], (uint8_t) magic[3]);
        close(fd);
        return NULL;
    }
    dq_model * m = calloc(1, sizeof *m);
    if (!m) {
        close(fd);
        dq_set_err(err, es, "out of memory");
        return NULL;
    }
    snprintf(m->path, sizeof m->path, "%s", path);
    struct gguf_init_params gp = { .no_alloc = true, .ctx = &m->ctx_meta };
    m->gguf = gguf_init_from_file(path, gp);
    if (!m->gguf) {
        dq_set_err(err, es, "%s: corrupt or truncated GGUF (the header, metadata or tensor table could not be read)",
                   path);
        goto fail;
    }
    const int ai = (int) gguf_find_key(m->gguf, "general.architecture");
    if (ai < 0 || gguf_get_kv_type(m->gguf, ai) != GGUF_TYPE_STRING) {
        dq_set_err(err, es, "%s: metadata general.architecture is missing", path);
        goto fail;
    }
    const char * arch = gguf_get_val_str(m->gguf, ai);
    m->arch = -1;
    for (int i = 0; i < 3; i++) {
        if (strcmp(arch, k_archs[i]) == 0) {
            m->arch = i;
        }
    }
    if (m->arch < 0) {
        dq_set_err(err, es, "%s: architecture '%.64s' is not supported (supported: %s)", path, arch,
                   dq_model_supported_archs());
        goto fail;
    }
    snprintf(m->arch_name, sizeof m->arch_name, "%s", arch);

    // every tensor's data inside the file
    const size_t d0 = gguf_get_data_offset(m->gguf);
    const int64_t nt = gguf_get_n_tensors(m->gguf);
    if (d0 > fsize) {
        dq_set_err(err, es, "%s: truncated: the data section starts at %zu, past the end of the file (%zu bytes)", path,
                   d0, fsize);
        goto fail;
    }
    for (int64_t i = 0; i < nt; i++) {
        const size_t off = gguf_get_tensor_offset(m->gguf, i), sz = gguf_get_tensor_size(m->gguf, i);
        if (off > fsize - d0 || sz > fsize - d0 - off) {
            dq_set_err(err, es, "%s: truncated or corrupt: tensor %s (%zu bytes at offset %zu) ends past the end of "
                       "the file (%zu bytes)", path, gguf_get_tensor_name(m->gguf, i), sz, d0 + off, fsize);
            goto fail;
        }
    }
    m->map = mmap(NULL, fsize, PROT_READ, MAP_SHARED, fd, 0);
    if (m->map == MAP_FAILED) {
        m->map = NULL;
        dq_set_err(err, es, "%s: mmap failed: %s", path, strerror(errno));
        goto fail;
    }
    m->map_size = fsize;
    close(fd);
    (void) madvise(m->map, fsize, MADV_WILLNEED);

    if (load_hparams(m, err, es) != 0 || load_tensors(m, err, es) != 0) {
        dq_model_free(m);
        return NULL;
    }
    m->buf = ggml_backend_cpu_buffer_from_ptr(m->map, fsize);
    if (!m->buf) {
        dq_set_err(err, es, "%s: could not wrap the mapping in a ggml buffer", path);
        dq_model_free(m);
        return NULL;
    }
    for (struct ggml_tensor * t = ggml_get_first_tensor(m->ctx_meta); t; t = ggml_get_next_tensor(m->ctx_meta, t)) {
        const int64_t id = gguf_find_tensor(m->gguf, ggml_get_name(t));
        if (id < 0) {
            continue;
        }
        ggml_backend_tensor_alloc(m->buf, t, (uint8_t *) m->map + d0 + gguf_get_tensor_offset(m->gguf, id));
    }
    compute_fingerprint(m);
    repack_weights(m);
    return m;

fail:
    close(fd);
    dq_model_free(m);
    return NULL;
}

void dq_model_free(dq_model * m) {
    if (!m) {
        return;
    }
    if (m->buf_repack) {
        ggml_backend_buffer_free(m->buf_repack);
    }
    if (m->ctx_repack) {
        ggml_free(m->ctx_repack);
    }
    if (m->buf) {
        ggml_backend_buffer_free(m->buf);
    }
    if (m->map) {
        munmap(m->map, m->map_size);
    }
    if (m->ctx_meta) {
        ggml_free(m->ctx_meta);
    }
    if (m->gguf) {
        gguf_free(m->gguf);
    }
    free(m->layers);
    free(m);
}

int dq_model_get_info(const dq_model * m, dq_model_info * info) {
    if (!m || !info) {
        return DQ_ERR_ARG;
    }
    memset(info, 0, sizeof *info);
    snprintf(info->arch, sizeof info->arch, "%s", m->arch_name);
    info->n_vocab = m->n_vocab; info->n_ctx_train = m->n_ctx_train; info->n_embd = m->n_embd;
    info->n_layer = m->n_layer; info->n_head = m->n_head; info->n_head_kv = m->n_head_kv;
    info->head_dim = m->head_dim; info->n_ff = m->n_ff; info->n_swa = m->n_swa;
    info->fingerprint = m->fingerprint;
    return DQ_OK;
}

int32_t dq_model_n_vocab(const dq_model * m) { return m ? m->n_vocab : 0; }
