// The C interface between the runner and libtorch's c10d (process groups),
// shared by cpp/c10d.cpp (Gloo, linked into the runner) and cpp/nccl.cpp
// (NCCL, a separate library loaded only when NCCL is asked for).
//
// Every entry point returns 0 on success; on failure it returns non-zero and,
// when `err` is not null, stores a message allocated with malloc in `*err`,
// which the caller releases with runner_c10d_string_free.

#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// A c10d::Store holding one reference (the caller's).
typedef struct runner_c10d_store runner_c10d_store;
// A c10d::Backend with its store, timeout and device.
typedef struct runner_c10d_group runner_c10d_group;

// Signature of `runner_nccl_backend_new` in librunner_nccl.so: creates a
// ProcessGroupNCCL on `store` for CUDA device `device`, and returns it in
// `*backend` as a c10d::Backend* that holds one reference, to be handed to
// runner_c10d_group_from_backend (which takes that reference over).
typedef int (*runner_nccl_backend_new_fn)(runner_c10d_store* store, int rank, int size, int64_t timeout_ms,
                                          int device, void** backend, char** err);

#ifdef __cplusplus
}
#endif
