// AioFaults: matching iocbs against the injected rules.
#include "backend/aio_faults.h"

#include <sys/uio.h>

namespace blk {
namespace {

FaultRule::Op OpOf(const iocb& cb) {
  switch (cb.aio_lio_opcode) {
    case IO_CMD_PREAD:
    case IO_CMD_PREADV:
      return FaultRule::Op::kRead;
    case IO_CMD_PWRITE:
    case IO_CMD_PWRITEV:
      return FaultRule::Op::kWrite;
    default:
      return FaultRule::Op::kSync;
  }
}

uint64_t LengthOf(const iocb& cb) {
  if (cb.aio_lio_opcode == IO_CMD_PREADV || cb.aio_lio_opcode == IO_CMD_PWRITEV) {
    const auto* iov = static_cast<const iovec*>(cb.u.v.vec);
    uint64_t total = 0;
    for (size_t i = 0; i < static_cast<size_t>(cb.u.v.nr); ++i) total += iov[i].iov_len;
    return total;
  }
  return cb.u.c.nbytes;
}

}  // namespace

const FaultRule* AioFaults::Match(const iocb& cb, FaultRule::When when, uint64_t now_ns) {
  FaultRule::Op op = OpOf(cb);
  for (Entry& entry : rules_) {
    const FaultRule& rule = entry.rule;
    if (rule.when != when || entry.fired >= rule.times || now_ns < rule.after_ns) continue;
    if (rule.op != FaultRule::Op::kAny && rule.op != op) continue;
    if (rule.fd >= 0 && rule.fd != cb.aio_fildes) continue;
    if (op != FaultRule::Op::kSync) {
      auto begin = static_cast<uint64_t>(cb.u.c.offset);  // u.v.offset shares the place
      if (begin >= rule.end || begin + LengthOf(cb) <= rule.begin) continue;
    }
    ++entry.matches;
    if (rule.nth != 0 && entry.matches != rule.nth) continue;
    ++entry.fired;
    ++fired_;
    return &rule;
  }
  return nullptr;
}

}  // namespace blk
