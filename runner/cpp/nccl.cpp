// librunner_nccl.so: creates libtorch's NCCL process group. It is a library
// of its own because ProcessGroupNCCL lives in libtorch_cuda.so, which the
// runner does not link (CPU runs never load CUDA); the runner loads this
// library only when a run asks for NCCL (runner/src/dist/c10d.rs). What it
// returns is used through the generic c10d::Backend calls of cpp/c10d.cpp.
//
// Built by runner/build.rs against the torch wheel's headers and the NCCL
// header of the wheel's nvidia-nccl package; USE_C10D_NCCL is what the torch
// build defines when it compiles ProcessGroupNCCL.

#define USE_C10D_NCCL 1

#include "c10d.h"

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <c10/cuda/CUDAFunctions.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

namespace {

int fail(char** err, const std::string& message) {
  if (err != nullptr) {
    *err = static_cast<char*>(std::malloc(message.size() + 1));
    if (*err != nullptr) std::memcpy(*err, message.c_str(), message.size() + 1);
  }
  return 1;
}

}  // namespace

extern "C" {

// See runner_nccl_backend_new_fn in c10d.h. `store` is a c10d::Store* that
// the caller keeps its own reference to; the group binds CUDA device
// `device` (each rank its own GPU: its local rank).
__attribute__((visibility("default"))) int runner_nccl_backend_new(runner_c10d_store* store, int rank, int size,
                                                                   int64_t timeout_ms, int device, void** backend,
                                                                   char** err) {
  try {
    auto count = static_cast<int>(c10::cuda::device_count());
    if (count == 0) return fail(err, "NCCL needs a CUDA device, and none is visible to this process");
    if (device < 0 || device >= count) {
      std::ostringstream m;
      m << "NCCL: this rank wants CUDA device " << device << " but " << count << " are visible";
      return fail(err, m.str());
    }
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto s = c10::intrusive_ptr<c10d::Store>::unsafe_reclaim_from_nonowning(reinterpret_cast<c10d::Store*>(store));
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(s, rank, size, options);
    // Bound to its device, the group connects now (an error surfaces here,
    // not at the first collective) and barriers know which GPU to use.
    pg->setBoundDeviceId(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
    pg->eagerConnectSingleDevice(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
    *backend = c10::intrusive_ptr<c10d::Backend>(std::move(pg)).release();
    return 0;
  } catch (const c10::Error& e) {
    return fail(err, e.what_without_backtrace());
  } catch (const std::exception& e) {
    return fail(err, e.what());
  } catch (...) {
    return fail(err, "unknown C++ exception while creating the NCCL process group");
  }
}

}  // extern "C"
