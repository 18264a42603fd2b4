// AioEngine: libaio with eventfd completion and batched submission.
#include "backend/aio_engine.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

namespace blk {

Result<std::unique_ptr<AioEngine>> AioEngine::Create(unsigned depth) {
  UniqueFd event_fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!event_fd.valid()) return Status::FromErrno(errno, "eventfd for AIO completions");
  io_context_t context = nullptr;
  int rc = io_setup(static_cast<int>(depth), &context);
  if (rc < 0) {
    return Status::FromErrno(-rc, "io_setup(" + std::to_string(depth) +
                                      ") (see /proc/sys/fs/aio-max-nr for the system-wide limit)");
  }
  return std::unique_ptr<AioEngine>(new AioEngine(context, std::move(event_fd), depth));
}

AioEngine::~AioEngine() { io_destroy(context_); }

void AioEngine::PrepareRead(iocb* cb, int fd, void* buffer, size_t length, uint64_t offset, void* tag) const {
  io_prep_pread(cb, fd, buffer, length, static_cast<long long>(offset));
  io_set_eventfd(cb, event_fd_.get());
  cb->data = tag;
}

void AioEngine::PrepareWrite(iocb* cb, int fd, const void* buffer, size_t length, uint64_t offset,
                             void* tag) const {
  io_prep_pwrite(cb, fd, const_cast<void*>(buffer), length, static_cast<long long>(offset));
  io_set_eventfd(cb, event_fd_.get());
  cb->data = tag;
}

void AioEngine::PrepareReadv(iocb* cb, int fd, const iovec* iov, int count, uint64_t offset,
                             void* tag) const {
  io_prep_preadv(cb, fd, iov, count, static_cast<long long>(offset));
  io_set_eventfd(cb, event_fd_.get());
  cb->data = tag;
}

void AioEngine::PrepareWritev(iocb* cb, int fd, const iovec* iov, int count, uint64_t offset,
                              void* tag) const {
  io_prep_pwritev(cb, fd, iov, count, static_cast<long long>(offset));
  io_set_eventfd(cb, event_fd_.get());
  cb->data = tag;
}

void AioEngine::PrepareFdsync(iocb* cb, int fd, void* tag) const {
  io_prep_fdsync(cb, fd);
  io_set_eventfd(cb, event_fd_.get());
  cb->data = tag;
}

size_t AioEngine::Submit(std::span<iocb*> batch, Status* first_error) {
  size_t accepted = 0;
  while (accepted < batch.size()) {
    int rc = io_submit(context_, static_cast<long>(batch.size() - accepted), batch.data() + accepted);
    if (rc < 0) {
      if (rc == -EINTR) continue;
      *first_error = Status::FromErrno(-rc, "io_submit");
      break;
    }
    if (rc == 0) {
      *first_error = Status::Busy("io_submit accepted nothing");
      break;
    }
    accepted += static_cast<size_t>(rc);
  }
  return accepted;
}

size_t AioEngine::Reap(std::span<io_event> out) {
  uint64_t ignored;
  while (::read(event_fd_.get(), &ignored, sizeof(ignored)) == sizeof(ignored)) {
  }
  timespec no_wait{0, 0};
  int rc;
  do {
    rc = io_getevents(context_, 0, static_cast<long>(out.size()), out.data(), &no_wait);
  } while (rc == -EINTR);
  return rc > 0 ? static_cast<size_t>(rc) : 0;
}

}  // namespace blk
