// decoquant-cli: libllama, opened at run time (see dq_cli_llama.h for why).
#include "dq_cli_llama.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "decoquant_model.h"

// libdecoquant's ggml_commit() (src/dq_ggml_info.c): a string in the libggml-base it runs on
DQ_API const char * dq_ggml_commit(void);

typedef const char * (*dq_cli_str_fn)(void);

static int is_file(const char * path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int dq_cli_llama_open(dq_cli_llama * ll, char * err, size_t es) {
    memset(ll, 0, sizeof *ll);
    Dl_info info;
    if (dladdr((void *) dq_model_load, &info) && info.dli_fname) {
        const char * slash = strrchr(info.dli_fname, '/');
        const int dir = slash ? (int) (slash - info.dli_fname) : 1;
        snprintf(ll->path, sizeof ll->path, "%.*s/lib/libllama.so", dir, slash ? info.dli_fname : ".");
    }
    if (!is_file(ll->path)) {
        snprintf(ll->path, sizeof ll->path, "libllama.so.0");
    }
    ll->handle = dlopen(ll->path, RTLD_NOW | RTLD_LOCAL);
    if (!ll->handle) {
        snprintf(err, es, "cannot load libllama (%s): %s; reinstall decoquant", ll->path, dlerror());
        return -1;
    }
#define DQ_CLI_LLAMA_LOAD(f)                                                                  \
    *(void **) &ll->f = dlsym(ll->handle, #f);                                                \
    if (!ll->f) {                                                                             \
        snprintf(err, es, "%s has no %s: not the llama.cpp that decoquant was built with", ll->path, #f); \
        dq_cli_llama_close(ll);                                                               \
        return -1;                                                                            \
    }
    DQ_CLI_LLAMA_FUNCS(DQ_CLI_LLAMA_LOAD)
#undef DQ_CLI_LLAMA_LOAD

    // one ggml per process: libllama's ggml_commit must be the very string libdecoquant sees
    dq_cli_str_fn commit = NULL;
    *(void **) &commit = dlsym(ll->handle, "ggml_commit");
    if (!commit || commit() != dq_ggml_commit()) {
        snprintf(err, es, "%s does not run on libdecoquant's libggml-base (two ggml in one process); "
                 "reinstall decoquant", ll->path);
        dq_cli_llama_close(ll);
        return -1;
    }
    return 0;
}

void dq_cli_llama_close(dq_cli_llama * ll) {
    if (ll->handle) {
        dlclose(ll->handle);
    }
    memset(ll, 0, sizeof *ll);
}
