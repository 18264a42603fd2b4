// Worker: the epoll loop that drives request pipelines and AIO completions.
#include "backend/worker.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>

#include "base/clock.h"
#include "base/log.h"
#include "base/spin.h"

namespace blk {
namespace {

constexpr int kMaxEpollEvents = 64;
// While submissions wait for AIO resources, the loop wakes this often to retry them.
constexpr int kDeferredRetryMs = 1;

}  // namespace

Result<std::unique_ptr<Worker>> Worker::Create(std::string name, unsigned aio_depth, unsigned poll_us) {
  auto aio = AioEngine::Create(aio_depth);
  if (!aio.ok()) return aio.status().Annotate(name + ": ");
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll.valid()) return Status::FromErrno(errno, name + ": epoll_create1");
  UniqueFd wake(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake.valid()) return Status::FromErrno(errno, name + ": eventfd");
  std::unique_ptr<Worker> worker(
      new Worker(std::move(name), std::move(*aio), std::move(epoll), std::move(wake)));
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.ptr = worker->aio_.get();
  if (::epoll_ctl(worker->epoll_.get(), EPOLL_CTL_ADD, worker->aio_->event_fd(), &event) != 0) {
    return Status::FromErrno(errno, worker->name_ + ": epoll_ctl");
  }
  event.data.ptr = worker.get();
  if (::epoll_ctl(worker->epoll_.get(), EPOLL_CTL_ADD, worker->wake_.get(), &event) != 0) {
    return Status::FromErrno(errno, worker->name_ + ": epoll_ctl");
  }
  worker->events_.resize(worker->aio_->depth());
  worker->poll_us_ = poll_us;
  return worker;
}

Worker::~Worker() {
  Stop();
  // io_destroy waits for the I/O still in flight; only then may retired pipelines free their buffers.
  aio_.reset();
  retiring_.clear();
}

Status Worker::Attach(RequestPipeline* pipeline) {
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.ptr = pipeline;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, pipeline->event_fd(), &event) != 0) {
    return Status::FromErrno(errno, pipeline->name() + ": epoll_ctl");
  }
  pipelines_.push_back(pipeline);
  // Requests published before the attach raised no event we could see.
  pipeline->OnKick();
  return Status::Ok();
}

void Worker::Retire(std::unique_ptr<RequestPipeline> pipeline) {
  pipeline->StopTaking();
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, pipeline->event_fd(), nullptr);
  pipelines_.erase(std::remove(pipelines_.begin(), pipelines_.end(), pipeline.get()), pipelines_.end());
  if (pipeline->outstanding() > 0) retiring_.push_back(std::move(pipeline));
}

uint32_t Worker::retiring_requests() const {
  uint32_t total = 0;
  for (const auto& pipeline : retiring_) total += pipeline->outstanding();
  return total;
}

void Worker::ReapRetired() {
  std::erase_if(retiring_, [](const std::unique_ptr<RequestPipeline>& p) { return p->outstanding() == 0; });
}

bool Worker::RunOnce(int timeout_ms) {
  bool deferred = false;
  auto retry = [&](RequestPipeline* pipeline) {
    if (!pipeline->has_deferred_submissions()) return;
    deferred = true;
    pipeline->RetryDeferred();
  };
  for (RequestPipeline* pipeline : pipelines_) retry(pipeline);
  for (auto& pipeline : retiring_) retry(pipeline.get());
  if (deferred) timeout_ms = timeout_ms < 0 ? kDeferredRetryMs : std::min(timeout_ms, kDeferredRetryMs);
  // A ring whose last round ran out of budget has requests waiting and no kick coming for them.
  bool another_round = false;
  for (RequestPipeline* pipeline : pipelines_) {
    if (pipeline->wants_another_round()) another_round = true;
  }
  if (another_round || keep_polling_) timeout_ms = 0;
  // Back-offs of transient I/O errors, and completions a test's fault holds back, wake the loop by a timeout.
  const uint64_t next_timer_ns = NextTimerNs();
  if (next_timer_ns != 0) {
    uint64_t now = MonotonicNs();
    int wait_ms = next_timer_ns <= now ? 0 : static_cast<int>((next_timer_ns - now + 999999) / 1000000);
    timeout_ms = timeout_ms < 0 ? wait_ms : std::min(timeout_ms, wait_ms);
  }
  epoll_event events[kMaxEpollEvents];
  int ready = ::epoll_wait(epoll_.get(), events, kMaxEpollEvents, timeout_ms);
  if (ready < 0 && errno != EINTR) {
    Log(LogLevel::kError, name_.c_str(), "epoll_wait: %s", std::strerror(errno));
  }
  bool posted = false;
  for (int i = 0; i < ready; ++i) {
    void* source = events[i].data.ptr;
    if (source == aio_.get()) {
      HandleCompletions();
    } else if (source == this) {
      posted = true;
    } else {
      static_cast<RequestPipeline*>(source)->OnKick();
    }
  }
  // Last: a posted task may retire (and free) a pipeline whose kick is further down this batch of events.
  if (posted) RunPosted();
  if (next_timer_ns != 0) {
    uint64_t now = MonotonicNs();
    if (aio_->next_held_ns() != 0 && aio_->next_held_ns() <= now) HandleCompletions();
    auto run_due = [&](RequestPipeline* pipeline) {
      if (pipeline->next_retry_ns() != 0 && pipeline->next_retry_ns() <= now) pipeline->RunDueRetries();
    };
    for (RequestPipeline* pipeline : pipelines_) run_due(pipeline);
    for (size_t i = 0; i < retiring_.size(); ++i) run_due(retiring_[i].get());
    if (!retiring_.empty()) ReapRetired();
  }
  if (another_round) {
    for (RequestPipeline* pipeline : pipelines_) {
      if (pipeline->wants_another_round()) pipeline->TakeAnotherRound();
    }
  }
  if (poll_us_ > 0 && (ready > 0 || keep_polling_)) keep_polling_ = Poll();
  return !stop_.load(std::memory_order_relaxed);
}

bool Worker::Poll() {
  using Clock = std::chrono::steady_clock;
  const auto window = std::chrono::microseconds(poll_us_);
  for (RequestPipeline* pipeline : pipelines_) pipeline->set_polling(true);
  auto idle_until = Clock::now() + window;
  SpinYielder yielder;
  bool interrupted = false;
  while (!stop_.load(std::memory_order_relaxed)) {
    bool busy = aio_->HasCompletions() && HandleCompletions(/*acknowledge=*/false) > 0;
    for (RequestPipeline* pipeline : pipelines_) {
      if (pipeline->has_deferred_submissions()) pipeline->RetryDeferred();
      busy = pipeline->PollRing() || busy;
    }
    // Control tasks (a pause, a disconnect) and back-off timers must not wait for the guest to go quiet.
    if (posted_waiting_.load(std::memory_order_relaxed) || TimerDue()) {
      interrupted = true;
      break;
    }
    const auto now = Clock::now();
    if (busy) {
      idle_until = now + window;
      continue;
    }
    if (now < idle_until) {
      yielder.Idle(now);
      continue;
    }
    // About to sleep: every ring must notify again, and requests that came while arming are served first.
    aio_->Acknowledge();
    bool arrived = aio_->HasCompletions();
    for (RequestPipeline* pipeline : pipelines_) arrived = pipeline->ArmForSleep() || arrived;
    if (!arrived) break;
    idle_until = now + window;
  }
  for (RequestPipeline* pipeline : pipelines_) pipeline->set_polling(false);
  return interrupted;
}

uint64_t Worker::NextTimerNs() const {
  uint64_t next = aio_->next_held_ns();
  auto earliest = [&](const RequestPipeline& pipeline) {
    const uint64_t at = pipeline.next_retry_ns();
    if (at != 0 && (next == 0 || at < next)) next = at;
  };
  for (const RequestPipeline* pipeline : pipelines_) earliest(*pipeline);
  for (const auto& pipeline : retiring_) earliest(*pipeline);
  return next;
}

bool Worker::TimerDue() const {
  const uint64_t next = NextTimerNs();
  return next != 0 && next <= MonotonicNs();
}

size_t Worker::HandleCompletions(bool acknowledge) {
  size_t total = 0;
  size_t reaped;
  do {
    reaped = aio_->Reap(events_, acknowledge);
    total += reaped;
    for (size_t i = 0; i < reaped; ++i) {
      CompletionHandler* handler = static_cast<AioTag*>(events_[i].data)->handler;
      handler->OnCompletion(events_[i]);
      if (std::find(touched_.begin(), touched_.end(), handler) == touched_.end()) touched_.push_back(handler);
    }
  } while (reaped == events_.size());
  for (CompletionHandler* handler : touched_) handler->FinishCompletions();
  touched_.clear();
  if (!retiring_.empty()) ReapRetired();
  return total;
}

void Worker::RunPosted() {
  uint64_t ignored;
  while (::read(wake_.get(), &ignored, sizeof(ignored)) == sizeof(ignored)) {
  }
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard lock(posted_mutex_);
    tasks.swap(posted_);
    posted_waiting_.store(false, std::memory_order_relaxed);
  }
  for (auto& task : tasks) task();
}

void Worker::Post(std::function<void()> task) {
  {
    std::lock_guard lock(posted_mutex_);
    posted_.push_back(std::move(task));
    posted_waiting_.store(true, std::memory_order_relaxed);
  }
  uint64_t one = 1;
  ssize_t ignored = ::write(wake_.get(), &one, sizeof(one));
  (void)ignored;
}

void Worker::Call(const std::function<void()>& task) {
  if (!running_.load()) {
    task();
    return;
  }
  std::mutex mutex;
  std::condition_variable done_signal;
  bool done = false;
  Post([&] {
    task();
    std::lock_guard lock(mutex);
    done = true;
    done_signal.notify_one();
  });
  std::unique_lock lock(mutex);
  done_signal.wait(lock, [&] { return done; });
}

void Worker::Start() {
  stop_.store(false);
  running_.store(true);
  thread_ = std::thread([this] {
    while (RunOnce(-1)) {
    }
  });
  thread_handle_ = thread_.native_handle();
  // Operators (top -H, perf) see which thread is which; the kernel keeps 15 characters.
  pthread_setname_np(thread_handle_, ("blk-" + name_).substr(0, 15).c_str());
}

void Worker::Stop() {
  if (!thread_.joinable()) return;
  Post([this] { stop_.store(true); });
  thread_.join();
  running_.store(false);
}

uint64_t Worker::CpuTimeNs() const {
  if (!running_.load()) return 0;
  clockid_t clock;
  if (pthread_getcpuclockid(thread_handle_, &clock) != 0) return 0;
  timespec now;
  if (::clock_gettime(clock, &now) != 0) return 0;
  return static_cast<uint64_t>(now.tv_sec) * 1000000000ull + static_cast<uint64_t>(now.tv_nsec);
}

}  // namespace blk
