// AioEngine: libaio with eventfd completion and batched submission.
#include "backend/aio_engine.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "base/clock.h"

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
  ++submit_calls_;
  if (faults_ != nullptr) [[unlikely]]
    return SubmitWithFaults(batch, first_error);
  return SubmitToKernel(batch, first_error);
}

size_t AioEngine::SubmitToKernel(std::span<iocb*> batch, Status* first_error) {
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

void AioEngine::Acknowledge() {
  // One read takes the whole count (the eventfd is not a semaphore); a second would only fail with EAGAIN.
  uint64_t ignored;
  ssize_t rc = ::read(event_fd_.get(), &ignored, sizeof(ignored));
  (void)rc;
}

namespace {

// The kernel publishes completions in a ring mapped at the context's address: this header, then `nr`
// io_events. It is made for user space to read (libaio looks at head and tail before it enters the kernel,
// fio's userspace_reap consumes events from it, and the kernel reads head back when it counts free slots).
struct KernelAioRing {
  unsigned id, nr, head, tail, magic, compat_features, incompat_features, header_length;
  io_event events[];
};
constexpr unsigned kKernelAioRingMagic = 0xa10a10a1;

KernelAioRing* ReadableRing(io_context_t context) {
  auto* ring = reinterpret_cast<KernelAioRing*>(context);
  if (ring == nullptr || ring->magic != kKernelAioRingMagic || ring->incompat_features != 0) return nullptr;
  return ring;
}

}  // namespace

size_t AioEngine::Reap(std::span<io_event> out, bool acknowledge) {
  if (acknowledge) Acknowledge();
  size_t reaped = 0;
  if (KernelAioRing* ring = ReadableRing(context_)) {
    // One thread reaps, so the head is ours; the tail's acquire orders the event reads after it.
    unsigned head = ring->head;
    const unsigned tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
    while (head != tail && reaped < out.size()) {
      out[reaped++] = ring->events[head];
      head = head + 1 == ring->nr ? 0 : head + 1;
    }
    __atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
  } else {
    timespec no_wait{0, 0};
    int rc;
    do {
      rc = io_getevents(context_, 0, static_cast<long>(out.size()), out.data(), &no_wait);
    } while (rc == -EINTR);
    reaped = rc > 0 ? static_cast<size_t>(rc) : 0;
  }
  if (faults_ != nullptr || !held_.empty() || !made_up_.empty()) [[unlikely]]
    return ReapWithFaults(out, reaped);
  return reaped;
}

bool AioEngine::HasCompletions() const {
  if (faults_ != nullptr || !held_.empty() || !made_up_.empty()) [[unlikely]]
    return true;
  const KernelAioRing* ring = ReadableRing(context_);
  if (ring == nullptr) return true;  // an unknown layout: let Reap ask the kernel
  return __atomic_load_n(&ring->head, __ATOMIC_RELAXED) != __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
}

// One iocb at a time, so that each meets the rules in order; tests only.
size_t AioEngine::SubmitWithFaults(std::span<iocb*> batch, Status* first_error) {
  size_t accepted = 0;
  for (iocb* cb : batch) {
    uint64_t now = MonotonicNs();
    if (const FaultRule* rule = faults_->Match(*cb, FaultRule::When::kSubmit, now)) {
      *first_error = Status::FromErrno(rule->error, "io_submit (injected)");
      return accepted;
    }
    const FaultRule* rule = faults_->Match(*cb, FaultRule::When::kComplete, now);
    if (rule != nullptr && rule->effect == FaultRule::Effect::kError) {
      io_event event{};
      event.data = cb->data;
      event.obj = cb;
      event.res = static_cast<unsigned long>(-static_cast<long>(rule->error));
      made_up_.push_back(event);
      uint64_t one = 1;
      [[maybe_unused]] ssize_t ignored = ::write(event_fd_.get(), &one, sizeof(one));
      ++accepted;
      continue;
    }
    iocb* single[] = {cb};
    if (SubmitToKernel(single, first_error) != 1) return accepted;
    if (rule != nullptr && rule->effect == FaultRule::Effect::kStall) {
      to_stall_.emplace_back(cb, uint64_t{rule->stall_ms} * 1000000ull);
    } else if (rule != nullptr && rule->effect == FaultRule::Effect::kShort) {
      to_stall_.emplace_back(cb, ~0ull);  // marks "report short" (see ReapWithFaults)
    }
    ++accepted;
  }
  return accepted;
}

uint64_t AioEngine::next_held_ns() const {
  uint64_t next = 0;
  for (const HeldEvent& held : held_) {
    if (next == 0 || held.due_ns < next) next = held.due_ns;
  }
  return next;
}

size_t AioEngine::ReapWithFaults(std::span<io_event> out, size_t reaped) {
  uint64_t now = MonotonicNs();
  size_t kept = 0;
  for (size_t i = 0; i < reaped; ++i) {
    io_event event = out[i];
    auto marked = std::find_if(to_stall_.begin(), to_stall_.end(),
                               [&](const auto& entry) { return entry.first == event.obj; });
    if (marked != to_stall_.end()) {
      uint64_t stall = marked->second;
      to_stall_.erase(marked);
      if (stall == ~0ull) {
        long result = static_cast<long>(event.res);
        // Half, in whole sectors, and at least one sector moved.
        if (result > 512) event.res = static_cast<unsigned long>(std::max(512l, (result / 2) & ~511l));
      } else {
        held_.push_back({event, now + stall});
        continue;
      }
    }
    out[kept++] = event;
  }
  for (auto it = held_.begin(); it != held_.end() && kept < out.size();) {
    if (it->due_ns <= now) {
      out[kept++] = it->event;
      it = held_.erase(it);
    } else {
      ++it;
    }
  }
  size_t taken = std::min(made_up_.size(), out.size() - kept);
  std::copy_n(made_up_.begin(), taken, out.begin() + static_cast<long>(kept));
  made_up_.erase(made_up_.begin(), made_up_.begin() + static_cast<long>(taken));
  kept += taken;
  if (!made_up_.empty()) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t ignored = ::write(event_fd_.get(), &one, sizeof(one));
  }
  return kept;
}

}  // namespace blk
