// Who handles an AIO completion: every iocb's `data` points at an AioTag naming its handler, so one worker's
// AIO context can serve request pipelines and the engines they own.
//
// Threading: handlers run on the worker that owns the AIO context.
#pragma once

#include <libaio.h>

namespace blk {

// Receives the completions of iocbs whose `data` points at an AioTag.
class CompletionHandler {
 public:
  virtual void OnCompletion(const io_event& event) = 0;
  // Called once after a run of OnCompletion calls.
  virtual void FinishCompletions() = 0;

 protected:
  ~CompletionHandler() = default;
};

struct AioTag {
  CompletionHandler* handler;
};

}  // namespace blk
