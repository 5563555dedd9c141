// Config checks and the block layout (docs/FORMAT.md).
#include "dq_internal.h"

const char * dq_version(void) { return "0.1.0"; }

const char * dq_status_str(int status) {
    switch (status) {
        case DQ_OK:            return "ok";
        case DQ_ERR_ARG:       return "invalid argument";
        case DQ_ERR_NONFINITE: return "input contains NaN or Inf";
        case DQ_ERR_NOMEM:     return "out of memory";
        default:               return "unknown error";
    }
}

int dq_config_check(const dq_config * c) {
    if (!c || c->n_kv_heads <= 0 || c->head_dim <= 0 || c->head_dim % 16 != 0) {
        return DQ_ERR_ARG;
    }
    if (c->bits != 2 && c->bits != 3 && c->bits != 4 && c->bits != 8) {
        return DQ_ERR_ARG;
    }
    if (c->scale_mode < DQ_SCALE_TOKEN || c->scale_mode > DQ_SCALE_CHANNEL) {
        return DQ_ERR_ARG;
    }
    if (c->scope != DQ_SCOPE_LAYER && c->scope != DQ_SCOPE_HEAD) {
        return DQ_ERR_ARG;
    }
    if (!(c->gauge >= 0.0f && c->gauge <= 1.0f) || (c->asym != 0 && c->asym != 1)) {
        return DQ_ERR_ARG;
    }
    return DQ_OK;
}

int dq_groups(const dq_config * c) { return c->scope == DQ_SCOPE_HEAD ? c->n_kv_heads : 1; }

static size_t pad16(size_t n) { return (n + 15) & ~(size_t) 15; }

dq_layout dq_block_layout(const dq_config * c, int32_t n) {
    dq_layout l;
    const size_t d    = (size_t) dq_dim(c);
    const size_t npar = (size_t) dq_npar(c);
    l.b      = 0;
    l.cparam = pad16((size_t) dq_groups(c) * 256 * 2);
    l.tparam = l.cparam + (c->scale_mode == DQ_SCALE_CHANNEL ? pad16(npar * d * 2) : 0);
    l.codes  = l.tparam + pad16(npar * (size_t) n * (size_t) dq_tparams_per_token(c) * 2);
    l.size   = l.codes + pad16((size_t) n * d * (size_t) c->bits / 8);
    return l;
}

size_t dq_block_size(const dq_config * c, int32_t n) { return dq_block_layout(c, n).size; }

double dq_bits_per_value(const dq_config * c, int32_t n) {
    return 8.0 * (double) dq_block_size(c, n) / ((double) n * dq_dim(c));
}
