// What the fault tests share: a stepped worker whose AIO engine injects faults (backend/aio_faults.h), guests
// on raw or VHD disks attached to it, and helpers to do one I/O and to find an image's file descriptors.
#pragma once

#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <memory>
#include <string>
#include <vector>

#include "backend/aio_faults.h"
#include "tests/backend/datapath_fixture.h"

namespace blk {

inline Bytes Pattern(size_t bytes, uint32_t seed) {
  Bytes data(bytes);
  for (size_t i = 0; i < bytes; ++i)
    data[i] = static_cast<uint8_t>((i * 131 + seed * 7919 + (i >> 9)) & 0xff);
  return data;
}

// The descriptors this process holds on `path` (a VHD image has one for data and one for metadata).
inline std::vector<int> FdsOf(const std::string& path) {
  std::vector<int> fds;
  char real[PATH_MAX];
  if (::realpath(path.c_str(), real) == nullptr) return fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  while (dirent* entry = ::readdir(dir)) {
    char target[PATH_MAX];
    std::string link = std::string("/proc/self/fd/") + entry->d_name;
    ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    if (std::string(target) == real) fds.push_back(std::atoi(entry->d_name));
  }
  ::closedir(dir);
  return fds;
}

class FaultTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kRetryNs = 300'000'000;  // io-retry-seconds, shortened for the tests

  void SetUp() override {
    auto worker = Worker::Create("worker0", 256);
    ASSERT_TRUE(worker.ok());
    worker_ = std::move(*worker);
    worker_->aio().set_faults(&faults_);
    worker_->aio().set_io_retry_ns(kRetryNs);
  }
  void TearDown() override {
    guests_.clear();
    for (const std::string& path : paths_) ::unlink(path.c_str());
  }
  // A guest (domid 1, 2...) on a new raw disk filled with `fill`.
  Guest& AddRaw(const std::string& name, uint8_t fill) {
    paths_.push_back(MakeDiskFile("/var/tmp", name, kDiskBytes, fill));
    return AddGuest(paths_.back(), ImageFormatHint::kRaw);
  }
  Guest& AddGuest(const std::string& path, ImageFormatHint format, BlkfrontConfig front = {}) {
    auto domid = static_cast<DomId>(guests_.size() + 1);
    guests_.push_back(
        std::make_unique<Guest>(sim_, path, domid, front, false, *worker_, true, 0, format, false));
    return *guests_.back();
  }
  // Steps the worker until `front` has `count` completions or `limit` passes.
  std::vector<IoCompletion> Step(Blkfront& front, size_t count,
                                 std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    return StepUntil(*worker_, front, count, {}, limit);
  }
  int16_t Do(Blkfront& front, IoOp op, uint64_t sector, Bytes& buffer, uint64_t tag = 1000) {
    return StepOne(*worker_, front, op, sector, buffer, tag);
  }
  int16_t Flush(Blkfront& front) {
    Bytes none;
    return Do(front, IoOp::kFlushDiskCache, 0, none);
  }
  // Runs `round` until `whole` holds for what it returned, at most `limit` times: whether it did. The
  // pipeline judges a device by its recent latency, counted up to the worker's reap, and on a loaded machine
  // (a sanitizer build beside other tests) even tmpfs can look slow for a few rounds.
  template <typename Round, typename Whole>
  static bool EventuallyWhole(Round round, Whole whole, int limit = 50) {
    for (int i = 0; i < limit; ++i) {
      if (whole(round())) return true;
    }
    return false;
  }
  // Holds every completion of `op` back 2 ms: a device the pipeline takes for slow from its first ones on.
  void StallEvery(FaultRule::Op op) {
    FaultRule slow;
    slow.op = op;
    slow.effect = FaultRule::Effect::kStall;
    slow.stall_ms = 2;
    faults_.Add(slow);
  }
  // A rule on writes to [begin, end) of `fd`.
  static FaultRule WriteRule(int fd, uint64_t begin, uint64_t end, int error) {
    FaultRule rule;
    rule.op = FaultRule::Op::kWrite;
    rule.fd = fd;
    rule.begin = begin;
    rule.end = end;
    rule.error = error;
    return rule;
  }

  AioFaults faults_;
  SimHypervisor sim_;
  std::unique_ptr<Worker> worker_;
  std::vector<std::unique_ptr<Guest>> guests_;
  std::vector<std::string> paths_;
};

}  // namespace blk
