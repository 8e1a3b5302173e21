// libtorch's autocast, switched on and off from Rust. tch binds CUDA autocast
// only; these two calls do what `torch.autocast(device, dtype)` does on entry
// and exit, for the CPU as well as CUDA. Autocast state is per thread.

#include <ATen/autocast_mode.h>

namespace {
at::DeviceType device_type(int device) { return device == 1 ? at::kCUDA : at::kCPU; }
}  // namespace

extern "C" {

// Enables autocast to `dtype` (a c10::ScalarType) on `device` (0: CPU, 1: CUDA).
// Writes the previous state to `was_enabled` and `was_dtype` for the exit call.
void runner_autocast_enter(int device, int dtype, int* was_enabled, int* was_dtype) {
  auto dev = device_type(device);
  *was_enabled = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
  *was_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dev));
  at::autocast::set_autocast_dtype(dev, static_cast<at::ScalarType>(dtype));
  at::autocast::set_autocast_enabled(dev, true);
  at::autocast::increment_nesting();
}

// Restores the state `runner_autocast_enter` saw; the outermost exit drops the
// cache of casted weights.
void runner_autocast_exit(int device, int was_enabled, int was_dtype) {
  auto dev = device_type(device);
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
  at::autocast::set_autocast_enabled(dev, was_enabled != 0);
  at::autocast::set_autocast_dtype(dev, static_cast<at::ScalarType>(was_dtype));
}

// Whether autocast is on for `device` in this thread.
int runner_autocast_is_enabled(int device) { return at::autocast::is_autocast_enabled(device_type(device)) ? 1 : 0; }
}
