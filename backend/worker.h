// A worker: one thread, one epoll loop, one AIO context, serving the rings attached to it.
//
// The loop waits on each ring's event channel, on the AIO completion eventfd and on a wake-up eventfd for
// control messages. Rings are attached and detached only on the worker's own thread: from outside, go through
// Post(), so no lock is ever taken on the data path. Tests may instead drive RunOnce() by hand with no
// thread.
#pragma once

#include <libaio.h>
#include <pthread.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backend/aio_engine.h"
#include "backend/request_pipeline.h"
#include "base/status.h"
#include "base/unique_fd.h"

namespace blk {

class Worker {
 public:
  // `poll_us`: after serving anything, keep looking at the rings and the AIO completions for this long before
  // sleeping in epoll (0: never poll). A sleeping worker costs a wake-up per kick, which on a VM whose vCPU
  // has halted is tens of microseconds; polling trades CPU for that.
  static Result<std::unique_ptr<Worker>> Create(std::string name, unsigned aio_depth, unsigned poll_us = 0);
  ~Worker();

  const std::string& name() const { return name_; }
  AioEngine& aio() { return *aio_; }

  // On the worker's thread (or before Start()): start serving `pipeline`; it must stay alive until Retire().
  Status Attach(RequestPipeline* pipeline);
  // On the worker's thread: stop serving `pipeline` and take it over. It is destroyed (ring unmapped, event
  // channel unbound) at once if nothing is in flight, else when its last I/O completes: the kernel may still
  // write into its buffers, and a hung disk must not hold up whoever retired it.
  void Retire(std::unique_ptr<RequestPipeline> pipeline);
  // Retired pipelines still waiting for their I/O.
  size_t retiring() const { return retiring_.size(); }
  // Requests those retired pipelines still have in flight. On the worker's thread.
  uint32_t retiring_requests() const;

  // Waits up to `timeout_ms` for events and handles them. Returns false once Stop() was called.
  bool RunOnce(int timeout_ms);

  void Start();
  // Stops the thread; pipelines still attached stay attached.
  void Stop();
  // Runs `task` on the worker's thread (or at the next RunOnce). Control path only.
  void Post(std::function<void()> task);
  // Runs `task` on the worker's thread and waits for it (runs it inline if there is no thread).
  void Call(const std::function<void()>& task);
  // CPU time the worker's thread has used, in nanoseconds (0 before Start()).
  uint64_t CpuTimeNs() const;

 private:
  Worker(std::string name, std::unique_ptr<AioEngine> aio, UniqueFd epoll, UniqueFd wake)
      : name_(std::move(name)), aio_(std::move(aio)), epoll_(std::move(epoll)), wake_(std::move(wake)) {}
  // Returns how many completions it handled.
  // `acknowledge`: false while polling (see AioEngine::HasCompletions).
  size_t HandleCompletions(bool acknowledge = true);
  // Polls rings and completions until `poll_us_` pass with nothing to do. Returns true if it stopped early
  // for the loop's other duties (a posted task, a timer that is due): the loop then comes back to polling.
  bool Poll();
  // When the next held completion or retry back-off is due (CLOCK_MONOTONIC; 0: none), and whether it is now.
  uint64_t NextTimerNs() const;
  bool TimerDue() const;
  void RunPosted();
  // Destroys retired pipelines whose I/O has completed.
  void ReapRetired();

  std::string name_;
  unsigned poll_us_ = 0;
  std::unique_ptr<AioEngine> aio_;
  UniqueFd epoll_;
  UniqueFd wake_;
  std::vector<RequestPipeline*> pipelines_;
  std::vector<std::unique_ptr<RequestPipeline>> retiring_;
  std::vector<io_event> events_;
  std::vector<CompletionHandler*> touched_;
  std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;
  std::atomic<bool> posted_waiting_{false};  // lets a polling loop see Post() without a system call
  bool keep_polling_ = false;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  pthread_t thread_handle_{};
  std::atomic<bool> running_{false};
};

}  // namespace blk
