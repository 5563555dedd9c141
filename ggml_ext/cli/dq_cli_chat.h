// decoquant-cli: the three modes (one templated turn, raw completion, interactive chat).
#ifndef DQ_CLI_CHAT_H
#define DQ_CLI_CHAT_H

#include "dq_cli.h"

// -p with a chat template: [--system,] user = prompt; the answer to stdout
int dq_cli_run_single(dq_cli_session * s, const dq_cli_params * p, const char * tmpl, char * err, size_t es);
// --no-cnv: the prompt as is, echoed, then its continuation
int dq_cli_run_raw(dq_cli_session * s, const dq_cli_params * p, char * err, size_t es);
// -cnv: messages from stdin until EOF or /exit; -p is the first one
int dq_cli_run_chat(dq_cli_session * s, const dq_cli_params * p, const char * tmpl, char * err, size_t es);

#endif // DQ_CLI_CHAT_H
