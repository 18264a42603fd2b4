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

  // Clears the eventfd and collects up to `out.size()` completions without blocking.
  size_t Reap(std::span<io_event> out);

 private:
  AioEngine(io_context_t context, UniqueFd event_fd, unsigned depth)
      : context_(context), event_fd_(std::move(event_fd)), depth_(depth) {}

  io_context_t context_;
  UniqueFd event_fd_;
  unsigned depth_;
};

}  // namespace blk
