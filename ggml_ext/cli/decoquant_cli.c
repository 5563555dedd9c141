// decoquant-cli: llama-cli-like text generation and chat on the DecoQuant runtime.
// Exit status: 0 done, 1 runtime error (model, context overflow, ...), 2 bad arguments.
#include "dq_cli.h"
#include "dq_cli_chat.h"

#include <string.h>

#define DQ_CLI_ERR 2048

enum { MODE_SINGLE, MODE_RAW, MODE_CHAT };

int main(int argc, char ** argv) {
    dq_cli_params p;
    const int prc = dq_cli_parse(argc, argv, &p);
    if (prc != 0) {
        dq_cli_params_free(&p);
        return prc > 0 ? 0 : 2;
    }
    char err[DQ_CLI_ERR] = { 0 };
    if (dq_cli_resolve_model(&p, err, sizeof err) != 0) {
        fprintf(stderr, "decoquant-cli: error: %s\n", err);
        dq_cli_params_free(&p);
        return 1;
    }

    dq_cli_session s;
    int rc = dq_cli_session_init(&s, &p, err, sizeof err);
    if (rc == DQ_CLI_OK) {
        // llama-cli's conversation mode: on when the model has a chat template (see -h)
        const char * tmpl = p.chat_template ? p.chat_template : s.ll.llama_model_chat_template(s.vm, NULL);
        int mode;
        if (p.conversation == DQ_CLI_CONV_ON || (p.conversation == DQ_CLI_CONV_AUTO && !p.prompt)) {
            mode = MODE_CHAT;
        } else if (p.conversation == DQ_CLI_CONV_AUTO && tmpl) {
            mode = MODE_SINGLE;
        } else {
            mode = MODE_RAW;
        }
        if (mode == MODE_CHAT && !tmpl) {
            fprintf(stderr, "decoquant-cli: the model has no chat template; using chatml\n");
            tmpl = "chatml";
        }
        const char * kv = p.kv_mode == DQ_KV_F16 ? "f16" : "decoquant";
        fprintf(stderr, "decoquant-cli: %s (%s, %d layers, %d heads, %d KV heads x %d), n_ctx = %d, KV cache %s",
                p.model, s.info.arch, s.info.n_layer, s.info.n_head, s.info.n_head_kv, s.info.head_dim, s.n_ctx,
                kv);
        if (p.kv_mode == DQ_KV_DECOQUANT) {
            fprintf(stderr, " K%d/V%d", p.bits_k, p.bits_v);
        }
        fprintf(stderr, ", threads = %d, %s\n", p.n_threads,
                mode == MODE_RAW ? "raw completion" : mode == MODE_CHAT ? "chat" : "one chat turn");

        if (mode == MODE_SINGLE) {
            rc = dq_cli_run_single(&s, &p, tmpl, err, sizeof err);
        } else if (mode == MODE_RAW) {
            rc = dq_cli_run_raw(&s, &p, err, sizeof err);
        } else {
            rc = dq_cli_run_chat(&s, &p, tmpl, err, sizeof err);
        }
        dq_cli_print_report(&s, &p, stderr);
    }
    if (rc != DQ_CLI_OK) {
        fprintf(stderr, "decoquant-cli: error: %s\n", err);
    }
    dq_cli_session_free(&s);
    dq_cli_params_free(&p);
    return rc == DQ_CLI_OK ? 0 : 1;
}
