// Version, device query and error text of libdecoquant_cuda.
#include "dq_cuda_common.h"

#include <stdio.h>
#include <string.h>

static thread_local char g_last_error[256] = "";

int dq_cuda_fail(cudaError_t err, const char * what) {
    snprintf(g_last_error, sizeof g_last_error, "%s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
    return DQ_ERR_CUDA;
}

extern "C" const char * dq_cuda_version(void) { return "0.1.0-sm90"; }

extern "C" const char * dq_cuda_last_error(void) { return g_last_error; }

extern "C" int dq_cuda_device_info(char * name, int name_len, int * sm_count, int * cc_major, int * cc_minor) {
    int dev = 0;
    DQ_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
    cudaDeviceProp prop;
    DQ_CUDA_TRY(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
    if (name && name_len > 0) {
        strncpy(name, prop.name, (size_t) name_len - 1);
        name[name_len - 1] = 0;
    }
    if (sm_count) {
        *sm_count = prop.multiProcessorCount;
    }
    if (cc_major) {
        *cc_major = prop.major;
    }
    if (cc_minor) {
        *cc_minor = prop.minor;
    }
    return DQ_OK;
}
