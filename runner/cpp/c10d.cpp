// libtorch's c10d process groups for data-parallel training, behind a C
// interface the runner calls (runner/src/dist/c10d.rs): a TCPStore for the
// rendezvous, a Gloo backend on it, and all-reduce (sum), broadcast and
// barrier on any c10d::Backend (Gloo here, NCCL from librunner_nccl.so).
// Every entry point catches C++ exceptions and returns them as messages
// (see c10d.h).
//
// The torch wheel ships ProcessGroupGloo.hpp but not the Gloo headers it
// includes; those come from Debian's libgloo-dev (0.0~git20220518). That
// Gloo is older than the one the wheel was built with (its rendezvous Store
// lacks the "v2" calls, so the header leaves out GlooStore's overrides of
// them). That is sound here because this file holds Gloo objects only behind
// std::shared_ptr (transport::Device) and never lays out or calls into one:
// devices, the ProcessGroupGloo constructor and every collective are compiled
// into libtorch_cpu.so against the wheel's own Gloo. The header's inline
// GlooStore adapter is never instantiated here (libtorch makes its own).

#define USE_C10D_GLOO 1

#include "c10d.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

struct runner_c10d_group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  // CUDA device index for NCCL (barrier needs it), -1 for Gloo.
  int device;
};

namespace {

c10d::Store* as_store(runner_c10d_store* s) { return reinterpret_cast<c10d::Store*>(s); }

int fail(char** err, const std::string& message) {
  if (err != nullptr) {
    *err = static_cast<char*>(std::malloc(message.size() + 1));
    if (*err != nullptr) std::memcpy(*err, message.c_str(), message.size() + 1);
  }
  return 1;
}

// Runs `body`, turning any C++ exception into an error code and message.
template <typename F>
int guarded(char** err, F&& body) {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    // what_without_backtrace: the message, not libtorch's C++ stack.
    return fail(err, e.what_without_backtrace());
  } catch (const std::exception& e) {
    return fail(err, e.what());
  } catch (...) {
    return fail(err, "unknown C++ exception in c10d");
  }
}

std::vector<at::Tensor> tensors_of(at::Tensor* const* tensors, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  // Copies share storage with the caller's tensors: the collectives write
  // through them in place.
  for (size_t i = 0; i < n; ++i) v.push_back(*tensors[i]);
  return v;
}

// Waits for `work` and rethrows its failure; Gloo's own timeout (the group's)
// bounds it, the wait's timeout is a second bound.
void finish(const c10::intrusive_ptr<c10d::Work>& work, std::chrono::milliseconds timeout, const char* what) {
  if (!work->wait(timeout)) {
    std::ostringstream m;
    m << what << " did not complete within " << timeout.count() << " ms";
    throw std::runtime_error(m.str());
  }
}

// Gloo's transport devices as torch.distributed picks them: one per
// interface named in GLOO_SOCKET_IFNAME (comma-separated) when it is set,
// else the address this machine's hostname resolves to (loopback if none).
std::vector<std::shared_ptr<::gloo::transport::Device>> gloo_devices() {
  std::vector<std::shared_ptr<::gloo::transport::Device>> devices;
  const char* ifnames = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifnames != nullptr && *ifnames != '\0') {
    std::stringstream list(ifnames);
    std::string name;
    while (std::getline(list, name, ',')) {
      if (!name.empty()) devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
    }
  }
  if (devices.empty()) devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  return devices;
}

}  // namespace

extern "C" {

void runner_c10d_string_free(char* s) { std::free(s); }

// Connects to (rank 0: serves) the TCPStore at host:port that `world_size`
// processes meet at. Rank 0 waits up to `timeout_ms` for the others.
int runner_c10d_store_new(const char* host, uint16_t port, int world_size, int is_master, int64_t timeout_ms,
                          runner_c10d_store** out, char** err) {
  return guarded(err, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_master != 0;
    opts.numWorkers = static_cast<size_t>(world_size);
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = reinterpret_cast<runner_c10d_store*>(c10::intrusive_ptr<c10d::Store>(std::move(store)).release());
  });
}

void runner_c10d_store_free(runner_c10d_store* store) {
  if (store != nullptr) c10::intrusive_ptr<c10d::Store>::reclaim(as_store(store));
}

// A Gloo process group of `size` ranks on `store` (which it keeps a
// reference to); collectives fail after `timeout_ms`.
int runner_c10d_gloo_new(runner_c10d_store* store, int rank, int size, int64_t timeout_ms, runner_c10d_group** out,
                         char** err) {
  return guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices = gloo_devices();
    auto s = c10::intrusive_ptr<c10d::Store>::unsafe_reclaim_from_nonowning(as_store(store));
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(s, rank, size, options);
    *out = new runner_c10d_group{s, std::move(backend), timeout, -1};
  });
}

// Wraps a backend made elsewhere (librunner_nccl.so), taking over the one
// reference `backend` (a c10d::Backend*) holds.
int runner_c10d_group_from_backend(runner_c10d_store* store, void* backend, int64_t timeout_ms, int device,
                                   runner_c10d_group** out, char** err) {
  return guarded(err, [&] {
    auto b = c10::intrusive_ptr<c10d::Backend>::reclaim(static_cast<c10d::Backend*>(backend));
    auto s = c10::intrusive_ptr<c10d::Store>::unsafe_reclaim_from_nonowning(as_store(store));
    *out = new runner_c10d_group{s, std::move(b), std::chrono::milliseconds(timeout_ms), device};
  });
}

void runner_c10d_group_free(runner_c10d_group* group) {
  if (group == nullptr) return;
  try {
    group->backend->shutdown();
  } catch (...) {
    // Shutting down a group whose peers are gone may throw; it is going away.
  }
  delete group;
}

// Sums each of the `n` tensors over the ranks, in place.
int runner_c10d_all_reduce_sum(runner_c10d_group* group, at::Tensor* const* tensors, size_t n, char** err) {
  return guarded(err, [&] {
    auto v = tensors_of(tensors, n);
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = group->timeout;
    // One call per tensor (allreduce over a vector of tensors reduces them
    // into each other, as one rank's inputs on several devices), all queued
    // before the first wait so the backend's threads overlap them.
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& t : v) {
      std::vector<at::Tensor> one{t};
      works.push_back(group->backend->allreduce(one, opts));
    }
    for (auto& w : works) finish(w, group->timeout, "all_reduce");
  });
}

// Overwrites each of the `n` tensors with rank `root`'s.
int runner_c10d_broadcast(runner_c10d_group* group, at::Tensor* const* tensors, size_t n, int root, char** err) {
  return guarded(err, [&] {
    auto v = tensors_of(tensors, n);
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = group->timeout;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& t : v) {
      std::vector<at::Tensor> one{t};
      works.push_back(group->backend->broadcast(one, opts));
    }
    for (auto& w : works) finish(w, group->timeout, "broadcast");
  });
}

// Returns once every rank has called it.
int runner_c10d_barrier(runner_c10d_group* group, char** err) {
  return guarded(err, [&] {
    c10d::BarrierOptions opts;
    opts.timeout = group->timeout;
    if (group->device >= 0) opts.device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(group->device));
    finish(group->backend->barrier(opts), group->timeout, "barrier");
  });
}

}  // extern "C"
