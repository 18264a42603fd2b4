// FakeXenLibrary: a XenLibrary for tests, with no Xen behind it. Grant maps are anonymous mappings filled
// from fake guest pages, grant copies are memcpy to and from those pages, event channel handles are pipes.
// Any call can be made to fail with a chosen errno; every call is counted and the arguments that matter
// are recorded, so a test can check what the real ports would have handed the libraries.
//
// Threading: every method may be called from any thread (one mutex guards the fake's state).
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ring/blkif_abi.h"
#include "ring/hypervisor.h"
#include "ring/xen/xen_library.h"

namespace blk {

enum class XenCall {
  kGnttabOpen,
  kGnttabClose,
  kMap,
  kUnmap,
  kCopy,
  kEvtchnOpen,
  kEvtchnClose,
  kEvtchnFd,
  kBind,
  kUnbind,
  kNotify,
  kPending,
  kUnmask,
  kCount,
};

// Passes if `text` contains `part`, and shows both if not (for checking error messages).
inline ::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

class FakeXenLibrary final : public XenLibrary {
 public:
  static constexpr EvtchnPort kFirstLocalPort = 100;

  FakeXenLibrary() = default;
  FakeXenLibrary(const FakeXenLibrary&) = delete;
  FakeXenLibrary& operator=(const FakeXenLibrary&) = delete;
  ~FakeXenLibrary() override;

  // The `nth` next call of `call` (1: the very next one) fails with `err`.
  void FailCall(XenCall call, int err, int nth = 1);
  int calls(XenCall call) const;

  // Grant side. A guest page exists once a test asked for it; maps and copies of other refs fail.
  uint8_t* GuestPage(DomId domid, GrantRef ref);
  // Copies of `ref` report `status` and move no data.
  void SetCopyStatus(DomId domid, GrantRef ref, int16_t status);
  struct LiveMapping {
    void* addr;
    uint32_t pages;
    uint32_t domid;
    std::vector<uint32_t> refs;
    int prot;
  };
  std::vector<LiveMapping> live_mappings() const;
  // Unmaps of an address or length that no map returned (a partial unmap would count here).
  int bad_unmaps() const;
  // Runs `hook` once, at the start of the next grant copy and outside the fake's lock, so that a test can
  // hold one thread inside the library while another calls it.
  void SetCopyHook(std::function<void()> hook);
  // The last batch handed to grant copy, as it was handed.
  std::vector<xengnttab_grant_copy_segment_t> last_copy() const;
  int open_gnttab_handles() const;

  // Event channel side. Local ports are handed out from kFirstLocalPort up.
  struct Binding {
    uint32_t remote_domid;
    evtchn_port_t remote_port;
  };
  // Makes the handle bound to `local_port` report `returned_port` pending and its fd readable.
  void QueuePending(EvtchnPort local_port, int returned_port);
  void Kick(EvtchnPort local_port) { QueuePending(local_port, static_cast<int>(local_port)); }
  std::map<EvtchnPort, Binding> bound_ports() const;
  std::vector<EvtchnPort> notified() const;
  std::vector<EvtchnPort> unmasked() const;
  std::vector<EvtchnPort> unbound() const;
  int open_evtchn_handles() const;

  xengnttab_handle* GnttabOpen() override;
  int GnttabClose(xengnttab_handle* handle) override;
  void* GnttabMapDomainGrantRefs(xengnttab_handle* handle, uint32_t count, uint32_t domid, uint32_t* refs,
                                 int prot) override;
  int GnttabUnmap(xengnttab_handle* handle, void* addr, uint32_t count) override;
  int GnttabGrantCopy(xengnttab_handle* handle, uint32_t count,
                      xengnttab_grant_copy_segment_t* segments) override;
  xenevtchn_handle* EvtchnOpen() override;
  int EvtchnClose(xenevtchn_handle* handle) override;
  int EvtchnFd(xenevtchn_handle* handle) override;
  xenevtchn_port_or_error_t EvtchnBindInterdomain(xenevtchn_handle* handle, uint32_t domid,
                                                  evtchn_port_t remote_port) override;
  int EvtchnUnbind(xenevtchn_handle* handle, evtchn_port_t port) override;
  int EvtchnNotify(xenevtchn_handle* handle, evtchn_port_t port) override;
  xenevtchn_port_or_error_t EvtchnPending(xenevtchn_handle* handle) override;
  int EvtchnUnmask(xenevtchn_handle* handle, evtchn_port_t port) override;

 private:
  using PageKey = std::pair<uint32_t, uint32_t>;  // domid, ref
  struct Page {
    std::array<uint8_t, kPageSize> bytes{};
    int16_t copy_status = GNTST_okay;
  };
  struct Evtchn {
    int read_fd = -1;
    int write_fd = -1;
    int bound_port = -1;
    std::deque<int> pending;
  };
  struct Failure {
    int countdown;
    int err;
  };

  // Counts the call; true (errno set) if it is the one to fail. Requires mu_.
  bool CountAndMaybeFailLocked(XenCall call);
  Evtchn* FindEvtchnLocked(xenevtchn_handle* handle);

  mutable std::mutex mu_;
  std::array<int, static_cast<size_t>(XenCall::kCount)> calls_{};
  std::map<XenCall, Failure> failures_;
  std::map<PageKey, std::unique_ptr<Page>> pages_;
  std::vector<std::unique_ptr<int>> gnttab_handles_;
  std::map<void*, LiveMapping> mappings_;
  int bad_unmaps_ = 0;
  std::vector<xengnttab_grant_copy_segment_t> last_copy_;
  std::function<void()> copy_hook_;
  std::map<xenevtchn_handle*, std::unique_ptr<Evtchn>> evtchns_;
  EvtchnPort next_port_ = kFirstLocalPort;
  std::map<EvtchnPort, Binding> bindings_;
  std::vector<EvtchnPort> notified_;
  std::vector<EvtchnPort> unmasked_;
  std::vector<EvtchnPort> unbound_;
};

}  // namespace blk
