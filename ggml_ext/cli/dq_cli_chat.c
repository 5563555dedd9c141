// decoquant-cli: chat turns with the model's template, and the interactive loop on stdin.
// Each turn formats the whole conversation and feeds it; dq_cli_feed keeps the common prefix
// with the cache, so only the new message is evaluated.
#include "dq_cli_chat.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DQ_CLI_ERR 1024

typedef struct dq_cli_chat {
    struct llama_chat_message * msgs;
    size_t n, cap;
} dq_cli_chat;

static int chat_push(dq_cli_chat * c, const char * role, const char * content) {
    if (c->n == c->cap) {
        const size_t nc = c->cap ? 2 * c->cap : 16;
        struct llama_chat_message * nm = realloc(c->msgs, nc * sizeof *nm);
        if (!nm) {
            return -1;
        }
        c->msgs = nm;
        c->cap = nc;
    }
    char * copy = strdup(content);
    if (!copy) {
        return -1;
    }
    c->msgs[c->n++] = (struct llama_chat_message) { role, copy };
    return 0;
}

static void chat_pop(dq_cli_chat * c) {
    if (c->n > 0) {
        free((char *) c->msgs[--c->n].content);
    }
}

static void chat_clear(dq_cli_chat * c, size_t keep) {
    while (c->n > keep) {
        chat_pop(c);
    }
}

static void print_tokens(const int32_t * t, int32_t n) {
    fprintf(stderr, "decoquant-cli: prompt: %d tokens:", n);
    for (int32_t i = 0; i < n; i++) {
        fprintf(stderr, " %d", t[i]);
    }
    fprintf(stderr, "\n");
}

// Tokenizes text (with BOS where the vocab adds one) and evaluates it after the cached prefix.
static int feed_text(dq_cli_session * s, const dq_cli_params * p, const char * text, char * err, size_t es) {
    int32_t * toks = NULL, n = 0;
    int rc = dq_cli_tokenize(s, text, 1, &toks, &n, err, es);
    if (rc != DQ_CLI_OK) {
        return rc;
    }
    if (p->verbose_prompt) {
        print_tokens(toks, n);
    }
    rc = dq_cli_feed(s, toks, n, err, es);
    free(toks);
    return rc;
}

// Formats the conversation (ending with a user message), feeds it and streams the answer to
// stdout. The answer joins the conversation; the user message is dropped if it did not fit.
static int chat_turn(dq_cli_session * s, const dq_cli_params * p, const char * tmpl, dq_cli_chat * c,
                     char * err, size_t es) {
    char * text = dq_cli_apply_template(s, tmpl, c->msgs, c->n, err, es);
    if (!text) {
        return DQ_CLI_ERROR;
    }
    int rc = feed_text(s, p, text, err, es);
    free(text);
    if (rc != DQ_CLI_OK) {
        if (rc == DQ_CLI_CTX_FULL) {
            chat_pop(c);
        }
        return rc;
    }
    char * reply = NULL;
    int32_t n_gen = 0;
    rc = dq_cli_generate(s, p->n_predict, stdout, &reply, &n_gen, err, es);
    fputc('\n', stdout);
    fflush(stdout);
    if (reply && chat_push(c, "assistant", reply) != 0 && rc == DQ_CLI_OK) {
        snprintf(err, es, "out of memory");
        rc = DQ_CLI_ERROR;
    }
    free(reply);
    return rc;
}

int dq_cli_run_single(dq_cli_session * s, const dq_cli_params * p, const char * tmpl, char * err, size_t es) {
    dq_cli_chat c = { 0 };
    int rc = DQ_CLI_OK;
    const int sys = p->system && p->system[0];
    if ((sys && chat_push(&c, "system", p->system) != 0) || chat_push(&c, "user", p->prompt) != 0) {
        snprintf(err, es, "out of memory");
        rc = DQ_CLI_ERROR;
    } else {
        rc = chat_turn(s, p, tmpl, &c, err, es);
    }
    chat_clear(&c, 0);
    free(c.msgs);
    return rc;
}

int dq_cli_run_raw(dq_cli_session * s, const dq_cli_params * p, char * err, size_t es) {
    int rc = feed_text(s, p, p->prompt, err, es);
    if (rc != DQ_CLI_OK) {
        return rc;
    }
    if (p->display_prompt) {
        fputs(p->prompt, stdout);
    }
    int32_t n_gen = 0;
    rc = dq_cli_generate(s, p->n_predict, stdout, NULL, &n_gen, err, es);
    fputc('\n', stdout);
    fflush(stdout);
    return rc;
}

int dq_cli_run_chat(dq_cli_session * s, const dq_cli_params * p, const char * tmpl, char * err, size_t es) {
    dq_cli_chat c = { 0 };
    const size_t n_sys = p->system && p->system[0] ? 1 : 0;
    if (p->system && p->system[0] && chat_push(&c, "system", p->system) != 0) {
        snprintf(err, es, "out of memory");
        return DQ_CLI_ERROR;
    }
    const int tty = isatty(STDIN_FILENO);
    if (tty) {
        fprintf(stderr, "decoquant-cli: chat: one message a line; /reset clears the history; Ctrl-D ends\n");
    }
    char terr[DQ_CLI_ERR];
    char * line = NULL;
    size_t cap = 0;
    int rc = DQ_CLI_OK;
    const char * first = p->prompt;
    for (;;) {
        const char * msg = first;
        if (!msg) {
            if (tty) {
                fputs("> ", stdout);
                fflush(stdout);
            }
            const ssize_t k = getline(&line, &cap, stdin);
            if (k < 0) {
                break; // end of input
            }
            line[strcspn(line, "\r\n")] = '\0';
            msg = line;
        }
        first = NULL;
        if (msg[0] == '\0') {
            continue;
        }
        if (strcmp(msg, "/exit") == 0 || strcmp(msg, "/quit") == 0) {
            break;
        }
        if (strcmp(msg, "/reset") == 0) {
            chat_clear(&c, n_sys);
            dq_cli_session_reset(s);
            fprintf(stderr, "decoquant-cli: history cleared\n");
            continue;
        }
        if (chat_push(&c, "user", msg) != 0) {
            snprintf(err, es, "out of memory");
            rc = DQ_CLI_ERROR;
            break;
        }
        const int trc = chat_turn(s, p, tmpl, &c, terr, sizeof terr);
        if (trc == DQ_CLI_CTX_FULL) {
            // the conversation goes on: the user can /reset (or restart with a larger -c)
            fprintf(stderr, "decoquant-cli: %s; /reset starts a new conversation\n", terr);
            continue;
        }
        if (trc != DQ_CLI_OK) {
            snprintf(err, es, "%s", terr);
            rc = trc;
            break;
        }
    }
    free(line);
    chat_clear(&c, 0);
    free(c.msgs);
    return rc;
}
