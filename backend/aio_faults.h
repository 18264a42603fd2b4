// A test double under the AIO engine: rules that make chosen I/Os fail, come back short or late.
//
// The seam is narrow, after LevelDB's fault-injection Env: AioEngine asks its AioFaults (when one is set)
// about each iocb it submits, and holds back completions a rule delays. A rule matches by operation, file,
// byte range, the Nth match and a start time; it fires at most `times` times. What it does:
//   at submission  io_submit refuses the iocb with `error` (as the kernel does when it is out of resources);
//   at completion  the I/O is not done and completes with -`error` (EIO, ENOSPC: the data never reaches the
//                  file), or it is done and reports a short transfer (half its length, whole sectors), or it
//                  is done and its completion is held back for `stall_ms`.
// With no AioFaults set the engine pays one null check per submission and per reap.
//
// Threading: used by the engine's worker only; rules may be added between RunOnce calls (stepped tests) or
// before the worker starts.
#pragma once

#include <libaio.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace blk {

struct FaultRule {
  enum class Op : uint8_t { kAny, kRead, kWrite, kSync };
  enum class When : uint8_t { kSubmit, kComplete };
  enum class Effect : uint8_t { kError, kShort, kStall };

  Op op = Op::kWrite;
  int fd = -1;  // -1: any file
  // Matches an I/O that touches [begin, end) of the file (syncs: always).
  uint64_t begin = 0;
  uint64_t end = std::numeric_limits<uint64_t>::max();
  // 0: every match; N: the Nth match only (counted from 1).
  uint64_t nth = 0;
  // CLOCK_MONOTONIC nanoseconds before which the rule does not match (0: at once).
  uint64_t after_ns = 0;
  uint64_t times = std::numeric_limits<uint64_t>::max();
  When when = When::kComplete;
  Effect effect = Effect::kError;
  int error = 5;  // EIO
  uint32_t stall_ms = 0;
};

class AioFaults {
 public:
  void Add(const FaultRule& rule) { rules_.push_back({rule, 0, 0}); }
  void Clear() { rules_.clear(); }
  // How many I/Os the rules changed.
  uint64_t fired() const { return fired_; }

  // The rule that fires for `cb` at `when`, counting the match; nullptr if none.
  const FaultRule* Match(const iocb& cb, FaultRule::When when, uint64_t now_ns);

 private:
  struct Entry {
    FaultRule rule;
    uint64_t matches;
    uint64_t fired;
  };
  std::vector<Entry> rules_;
  uint64_t fired_ = 0;
};

}  // namespace blk
