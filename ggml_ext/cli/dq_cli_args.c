// decoquant-cli: command-line flags (named as in llama-cli) and the model path.
#include "dq_cli.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE * f) {
    fprintf(f,
        "usage: decoquant-cli [options]\n"
        "\n"
        "Text generation and chat on the DecoQuant runtime: a GGUF model (llama, qwen2, gemma3) with\n"
        "its KV cache compressed by DecoQuant (or kept in f16). Tokenizer, chat template and sampling\n"
        "come from llama.cpp.\n"
        "\n"
        "modes (as llama-cli's conversation mode, which is on for models with a chat template):\n"
        "  -p PROMPT            one chat turn: PROMPT is the user message, formatted with the model's\n"
        "                       chat template; the answer is printed and the program exits. A model\n"
        "                       without a template gets a raw completion of PROMPT.\n"
        "  -cnv, --chat         interactive chat on stdin (one message a line; /reset clears the\n"
        "                       history; Ctrl-D ends). With -p, PROMPT is the first user message.\n"
        "                       Also the mode when neither -p nor -f is given.\n"
        "  -no-cnv, --no-cnv    raw completion: PROMPT is tokenized as is (no template) and echoed.\n"
        "\n"
        "options:\n"
        "  -h, --help           this help\n"
        "  -m, --model FNAME    GGUF file, or a registry name (default: " DQ_CLI_DEFAULT_MODEL ", from the\n"
        "                       cache $DECOQUANT_CACHE or ~/.cache/decoquant, models/NAME.gguf;\n"
        "                       fetch it with: decoquant models fetch " DQ_CLI_DEFAULT_MODEL ")\n"
        "  -p, --prompt TEXT    prompt (see modes)\n"
        "  -f, --file FNAME     prompt from a file\n"
        "  -sys, --system TEXT  system message (chat template modes; default \"" DQ_CLI_DEFAULT_SYSTEM "\",\n"
        "                       as `decoquant chat`; \"\" for none)\n"
        "  --chat-template T    a template name known to llama_chat_apply_template (chatml, gemma,\n"
        "                       llama3, ...) instead of the GGUF's\n"
        "  -n, --n-predict N    tokens to generate per answer (default: -1 = until the end-of-\n"
        "                       generation token or a full context)\n"
        "  -c, --ctx-size N     context size in tokens (default: 4096, at most the model's; 0 = the\n"
        "                       model's training context); the KV cache is allocated for it up front\n"
        "  -b, --batch-size N   prompt tokens per forward pass (default: 512)\n"
        "  -t, --threads N      CPU threads (default: the number of online CPUs)\n"
        "  --temp T             temperature (default: 0.8; <= 0: greedy)\n"
        "  --top-k N            top-k (default: 40; 0 = off)\n"
        "  --top-p P            top-p (default: 0.95; 1.0 = off)\n"
        "  --min-p P            min-p (default: 0.05; 0.0 = off)\n"
        "  -s, --seed N         sampling seed (default: random)\n"
        "  --kv-cache TYPE      decoquant | f16 (default: decoquant)\n"
        "  --kv-bits-k N        bits of the compressed K cache: 2, 3, 4 or 8 (default: 4)\n"
        "  --kv-bits-v N        bits of the compressed V cache: 2, 3, 4 or 8 (default: 4)\n"
        "  --no-display-prompt  do not echo the prompt in raw mode\n"
        "  --verbose-prompt     print the prompt's token ids to stderr\n"
        "  -v, --verbose        llama.cpp's log messages on stderr\n"
        "\n"
        "At the end, timings (prefill and decode tokens/s) and the KV cache memory are printed to\n"
        "stderr. Example:\n"
        "  decoquant-cli -p \"What is the capital of France?\" -n 32 --temp 0\n");
}

static int bad(const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "decoquant-cli: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see decoquant-cli -h)\n");
    va_end(ap);
    return -1;
}

static int parse_i32(const char * flag, const char * s, int32_t lo, int32_t hi, int32_t * out) {
    char * end = NULL;
    errno = 0;
    const long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi) {
        return bad("%s expects an integer in [%d, %d], got '%s'", flag, lo, hi, s);
    }
    *out = (int32_t) v;
    return 0;
}

static int parse_f32(const char * flag, const char * s, float lo, float hi, float * out) {
    char * end = NULL;
    errno = 0;
    const double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v >= lo && v <= hi)) {
        return bad("%s expects a number in [%g, %g], got '%s'", flag, lo, hi, s);
    }
    *out = (float) v;
    return 0;
}

static int parse_bits(const char * flag, const char * s, int32_t * out) {
    int32_t b = 0;
    if (parse_i32(flag, s, 0, 64, &b) != 0) {
        return -1;
    }
    if (b != 2 && b != 3 && b != 4 && b != 8) {
        return bad("%s must be 2, 3, 4 or 8, got %d", flag, b);
    }
    *out = b;
    return 0;
}

static char * read_file(const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        bad("cannot open the prompt file '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char * buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            bad("out of memory reading '%s'", path);
            return NULL;
        }
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) {
            break;
        }
        cap *= 2;
        char * nb = realloc(buf, cap);
        if (!nb) {
            free(buf);
        }
        buf = nb;
    }
    const int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        bad("cannot read the prompt file '%s'", path);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

static int is(const char * a, const char * s1, const char * s2) {
    return strcmp(a, s1) == 0 || (s2 && strcmp(a, s2) == 0);
}

int dq_cli_parse(int argc, char ** argv, dq_cli_params * p) {
    memset(p, 0, sizeof *p);
    p->n_predict    = -1;
    p->n_ctx        = 4096;
    p->n_batch      = 512;
    const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    p->n_threads    = ncpu > 0 ? (int32_t) (ncpu < 256 ? ncpu : 256) : 1;
    p->temp         = 0.8f;
    p->system       = DQ_CLI_DEFAULT_SYSTEM;
    p->top_k        = 40;
    p->top_p        = 0.95f;
    p->min_p        = 0.05f;
    p->seed         = LLAMA_DEFAULT_SEED;
    p->conversation = DQ_CLI_CONV_AUTO;
    p->kv_mode      = DQ_KV_DECOQUANT;
    p->bits_k       = 4;
    p->bits_v       = 4;
    p->display_prompt = 1;

    for (int i = 1; i < argc; i++) {
        const char * a = argv[i];
        // flags without a value
        if (is(a, "-h", "--help")) {
            usage(stdout);
            return 1;
        }
        if (is(a, "-cnv", "--chat") || is(a, "--conversation", NULL)) {
            p->conversation = DQ_CLI_CONV_ON;
            continue;
        }
        if (is(a, "-no-cnv", "--no-cnv") || is(a, "--no-conversation", NULL)) {
            p->conversation = DQ_CLI_CONV_OFF;
            continue;
        }
        if (is(a, "--no-display-prompt", NULL)) {
            p->display_prompt = 0;
            continue;
        }
        if (is(a, "--verbose-prompt", NULL)) {
            p->verbose_prompt = 1;
            continue;
        }
        if (is(a, "-v", "--verbose")) {
            p->verbose = 1;
            continue;
        }
        // flags with a value
        static const char * const valued[] = {
            "-m", "--model", "-p", "--prompt", "-f", "--file", "-sys", "--system", "--system-prompt",
            "--chat-template", "-n", "--n-predict", "-c", "--ctx-size", "-b", "--batch-size", "-t",
            "--threads", "--temp", "--top-k", "--top-p", "--min-p", "-s", "--seed", "--kv-cache",
            "--kv-bits-k", "--kv-bits-v",
        };
        int known = 0;
        for (size_t j = 0; j < sizeof valued / sizeof valued[0]; j++) {
            known |= strcmp(a, valued[j]) == 0;
        }
        if (!known) {
            return bad("unknown argument '%s'", a);
        }
        if (i + 1 >= argc) {
            return bad("%s needs a value", a);
        }
        const char * v = argv[++i];
        int rc = 0;
        if (is(a, "-m", "--model")) {
            p->model_arg = v;
        } else if (is(a, "-p", "--prompt")) {
            p->prompt = v;
        } else if (is(a, "-f", "--file")) {
            free(p->prompt_owned);
            p->prompt_owned = read_file(v);
            if (!p->prompt_owned) {
                return -1;
            }
            const size_t len = strlen(p->prompt_owned);
            if (len > 0 && p->prompt_owned[len - 1] == '\n') {
                p->prompt_owned[len - 1] = '\0'; // the file's last newline is not part of the prompt (as llama-cli)
            }
            p->prompt = p->prompt_owned;
        } else if (is(a, "-sys", "--system") || is(a, "--system-prompt", NULL)) {
            p->system = v;
        } else if (is(a, "--chat-template", NULL)) {
            p->chat_template = v;
        } else if (is(a, "-n", "--n-predict")) {
            rc = parse_i32(a, v, -1, INT32_MAX, &p->n_predict);
        } else if (is(a, "-c", "--ctx-size")) {
            rc = parse_i32(a, v, 0, INT32_MAX, &p->n_ctx);
            p->n_ctx_given = 1;
        } else if (is(a, "-b", "--batch-size")) {
            rc = parse_i32(a, v, 1, 1 << 20, &p->n_batch);
        } else if (is(a, "-t", "--threads")) {
            rc = parse_i32(a, v, 1, 256, &p->n_threads);
        } else if (is(a, "--temp", NULL)) {
            rc = parse_f32(a, v, -1e9f, 1e9f, &p->temp);
        } else if (is(a, "--top-k", NULL)) {
            rc = parse_i32(a, v, 0, INT32_MAX, &p->top_k);
        } else if (is(a, "--top-p", NULL)) {
            rc = parse_f32(a, v, 0.0f, 1.0f, &p->top_p);
        } else if (is(a, "--min-p", NULL)) {
            rc = parse_f32(a, v, 0.0f, 1.0f, &p->min_p);
        } else if (is(a, "-s", "--seed")) {
            int32_t s = 0;
            rc = parse_i32(a, v, -1, INT32_MAX, &s);
            p->seed = s < 0 ? LLAMA_DEFAULT_SEED : (uint32_t) s;
        } else if (is(a, "--kv-cache", NULL)) {
            if (strcmp(v, "decoquant") == 0) {
                p->kv_mode = DQ_KV_DECOQUANT;
            } else if (strcmp(v, "f16") == 0) {
                p->kv_mode = DQ_KV_F16;
            } else {
                rc = bad("--kv-cache must be 'decoquant' or 'f16', got '%s'", v);
            }
        } else if (is(a, "--kv-bits-k", NULL)) {
            rc = parse_bits(a, v, &p->bits_k);
        } else if (is(a, "--kv-bits-v", NULL)) {
            rc = parse_bits(a, v, &p->bits_v);
        }
        if (rc != 0) {
            return -1;
        }
    }
    if (p->conversation == DQ_CLI_CONV_OFF && !p->prompt) {
        return bad("--no-cnv needs a prompt (-p or -f)");
    }
    return 0;
}

void dq_cli_params_free(dq_cli_params * p) {
    free(p->prompt_owned);
    p->prompt_owned = NULL;
}

static int is_file(const char * path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// the registry's cache (py/decoquant/registry.py): $DECOQUANT_CACHE or ~/.cache/decoquant
static int cached_model(const char * name, char * out, size_t n) {
    const char * cache = getenv("DECOQUANT_CACHE");
    const char * home  = getenv("HOME");
    int w;
    if (cache && cache[0] == '~' && cache[1] == '/' && home) {
        w = snprintf(out, n, "%s%s/models/%s.gguf", home, cache + 1, name); // as Path.expanduser
    } else if (cache && cache[0]) {
        w = snprintf(out, n, "%s/models/%s.gguf", cache, name);
    } else {
        w = snprintf(out, n, "%s/.cache/decoquant/models/%s.gguf", home && home[0] ? home : ".", name);
    }
    return w > 0 && (size_t) w < n ? 0 : -1;
}

int dq_cli_resolve_model(dq_cli_params * p, char * err, size_t es) {
    const char * arg = p->model_arg;
    if (arg && is_file(arg)) {
        snprintf(p->model, sizeof p->model, "%s", arg);
        return 0;
    }
    // a registry name: no directory, no .gguf suffix
    const size_t len = arg ? strlen(arg) : 0;
    const int name_like = arg && len > 0 && !strchr(arg, '/') && !(len >= 5 && strcmp(arg + len - 5, ".gguf") == 0);
    if (arg && !name_like) {
        snprintf(err, es, "model file not found: %s", arg);
        return -1;
    }
    const char * name = arg ? arg : DQ_CLI_DEFAULT_MODEL;
    if (cached_model(name, p->model, sizeof p->model) != 0) {
        snprintf(err, es, "the model cache path is too long");
        return -1;
    }
    if (!is_file(p->model)) {
        if (arg) {
            snprintf(err, es, "'%s' is neither a file nor a registry model in the cache (%s).\n", name, p->model);
        } else {
            snprintf(err, es, "no model given (-m), and the default model '%s' is not in the cache (%s).\n",
                     name, p->model);
        }
        const size_t used = strlen(err);
        snprintf(err + used, es - used, "Fetch it with:  decoquant models fetch %s\nor pass a GGUF file with -m FILE.gguf",
                 name);
        return -1;
    }
    return 0;
}
