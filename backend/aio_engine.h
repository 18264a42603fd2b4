// The AIO engine: one Linux AIO context per worker, completions signalled on an eventfd.
//
// Callers prepare iocbs in memory they preallocated (one per request slot) and submit a whole batch with one
// io_submit. The eventfd lets the worker's epoll loop wait for completions together with event channels.
// Threading: owned by one worker thread.
#pragma once

#include <libaio.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "backend/aio_faults.h"
#include "base/status.h"
#include "base/unique_fd.h"

namespace blk {

class AioEngine {
 public:
  // `depth` bounds the iocbs in flight at once.
  static Result<std::unique_ptr<AioEngine>> Create(unsigned depth);
  ~AioEngine();
  AioEngine(const AioEngine&) = delete;
  AioEngine& operator=(const AioEngine&) = delete;

  int event_fd() const { return event_fd_.get(); }
  unsigned depth() const { return depth_; }

  // Fill `cb` for one operation whose completion carries `tag`, signalled on this engine's eventfd.
  void PrepareRead(iocb* cb, int fd, void* buffer, size_t length, uint64_t offset, void* tag) const;
  void PrepareWrite(iocb* cb, int fd, const void* buffer, size_t length, uint64_t offset, void* tag) const;
  void PrepareFdsync(iocb* cb, int fd, void* tag) const;
  // Vectored forms: one iocb for several buffers that are contiguous on disk.
  void PrepareReadv(iocb* cb, int fd, const iovec* iov, int count, uint64_t offset, void* tag) const;
  void PrepareWritev(iocb* cb, int fd, const iovec* iov, int count, uint64_t offset, void* tag) const;

  // Submits `batch` with one io_submit (more only if the kernel took part of it). Returns how many were
  // accepted, from the front. When fewer than all were accepted, `*first_error` holds the reason the next one
  // was refused (a retryable Status when the kernel is out of resources: submit it again later).
  size_t Submit(std::span<iocb*> batch, Status* first_error);
  // How many times Submit was called (each is one io_submit when the kernel takes the whole batch).
  uint64_t submit_calls() const { return submit_calls_; }

  // Clears the eventfd (unless `acknowledge` is false) and collects up to `out.size()` completions without
  // blocking.
  size_t Reap(std::span<io_event> out, bool acknowledge = true);
  // For a worker that polls: whether Reap would find anything, without a system call. It reaps without
  // acknowledging, and before it sleeps clears the eventfd with Acknowledge() and then looks once more.
  bool HasCompletions() const;
  void Acknowledge();

  // Tests: injects the faults `faults` describes (nullptr: none). Not owned; must outlive its use.
  void set_faults(AioFaults* faults) { faults_ = faults; }
  // Completions a fault holds back: the worker wakes up for them by `next_held_ns()` (CLOCK_MONOTONIC; 0:
  // none).
  uint64_t next_held_ns() const;

  // How long a request whose I/O keeps failing with a transient error (EAGAIN, EINTR, ENOMEM, EBUSY) is
  // retried before it fails; the pipelines of this engine's worker read it. See BlkbackDaemonOptions.
  uint64_t io_retry_ns() const { return io_retry_ns_; }
  void set_io_retry_ns(uint64_t ns) { io_retry_ns_ = ns; }

 private:
  AioEngine(io_context_t context, UniqueFd event_fd, unsigned depth)
      : context_(context), event_fd_(std::move(event_fd)), depth_(depth) {}

  size_t SubmitWithFaults(std::span<iocb*> batch, Status* first_error);
  size_t SubmitToKernel(std::span<iocb*> batch, Status* first_error);
  size_t ReapWithFaults(std::span<io_event> out, size_t reaped);

  io_context_t context_;
  UniqueFd event_fd_;
  unsigned depth_;
  uint64_t submit_calls_ = 0;
  uint64_t io_retry_ns_ = 120ull * 1000000000ull;
  AioFaults* faults_ = nullptr;
  // Fault state (tests only): completions made up without the kernel, iocbs whose completion is to be held
  // back and for how long, completions held back until a time.
  struct HeldEvent {
    io_event event;
    uint64_t due_ns;
  };
  std::vector<io_event> made_up_;
  std::vector<std::pair<iocb*, uint64_t>> to_stall_;
  std::vector<HeldEvent> held_;
};

}  // namespace blk
