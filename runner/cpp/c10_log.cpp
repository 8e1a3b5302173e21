// c10's logging and exception texts as the runner wants them (runner/src/c10_log.rs):
// libtorch's errors without their C++ stack, and c10's log level read and set,
// so that c10d's own retry and timeout lines can be held back while a process
// group forms (the runner's error says the same, once).

#include <c10/util/Backtrace.h>
#include <c10/util/Logging.h>

#include <string>

extern "C" {

// Every c10::Error made from now on carries no C++ stack in its what():
// only its message and the "Exception raised from <where>" line.
void runner_c10_hide_stack_traces() {
  c10::SetStackTraceFetcher([]() { return std::string(); });
}

// Reads TORCH_CPP_LOG_LEVEL into c10's log level, as torch's Python module does.
void runner_c10_log_level_from_env() { c10::initLogging(); }

// c10's log level: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL; messages below it are dropped.
int runner_c10_log_level() { return FLAGS_caffe2_log_level; }

void runner_c10_set_log_level(int level) { FLAGS_caffe2_log_level = level; }

}  // extern "C"
