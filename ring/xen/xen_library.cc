// RealXenLibrary: XenLibrary on libxengnttab and libxenevtchn, with their log routed to blk::Log.
#include "ring/xen/xen_library.h"

extern "C" {
#include <xentoollog.h>
}

#include <cerrno>
#include <cstdarg>
#include <cstdio>

#include "base/log.h"

namespace blk {
namespace {

// The libraries log to stderr through their own logger unless given one; this one keeps their lines in
// the daemon's log format. Only the struct is needed, not libxentoollog.
void ForwardXenMessage(xentoollog_logger* /*logger*/, xentoollog_level /*level*/, int errnoval,
                       const char* context, const char* format, va_list args) {
  char message[512];
  vsnprintf(message, sizeof(message), format, args);
  if (errnoval >= 0) {
    Log(LogLevel::kDebug, "xen", "%s: %s (errno %d)", context ? context : "xen", message, errnoval);
  } else {
    Log(LogLevel::kDebug, "xen", "%s: %s", context ? context : "xen", message);
  }
}

xentoollog_logger xen_logger = {ForwardXenMessage, nullptr, nullptr};

class RealLibrary final : public XenLibrary {
 public:
  xengnttab_handle* GnttabOpen() override { return xengnttab_open(&xen_logger, 0); }
  int GnttabClose(xengnttab_handle* handle) override { return xengnttab_close(handle); }
  void* GnttabMapDomainGrantRefs(xengnttab_handle* handle, uint32_t count, uint32_t domid, uint32_t* refs,
                                 int prot) override {
    return xengnttab_map_domain_grant_refs(handle, count, domid, refs, prot);
  }
  int GnttabUnmap(xengnttab_handle* handle, void* addr, uint32_t count) override {
    return xengnttab_unmap(handle, addr, count);
  }
  int GnttabGrantCopy(xengnttab_handle* handle, uint32_t count,
                      xengnttab_grant_copy_segment_t* segments) override {
    return xengnttab_grant_copy(handle, count, segments);
  }

  xenevtchn_handle* EvtchnOpen() override { return xenevtchn_open(&xen_logger, 0); }
  int EvtchnClose(xenevtchn_handle* handle) override { return xenevtchn_close(handle); }
  int EvtchnFd(xenevtchn_handle* handle) override { return xenevtchn_fd(handle); }
  xenevtchn_port_or_error_t EvtchnBindInterdomain(xenevtchn_handle* handle, uint32_t domid,
                                                  evtchn_port_t remote_port) override {
    return xenevtchn_bind_interdomain(handle, domid, remote_port);
  }
  int EvtchnUnbind(xenevtchn_handle* handle, evtchn_port_t port) override {
    return xenevtchn_unbind(handle, port);
  }
  int EvtchnNotify(xenevtchn_handle* handle, evtchn_port_t port) override {
    return xenevtchn_notify(handle, port);
  }
  xenevtchn_port_or_error_t EvtchnPending(xenevtchn_handle* handle) override {
    return xenevtchn_pending(handle);
  }
  int EvtchnUnmask(xenevtchn_handle* handle, evtchn_port_t port) override {
    return xenevtchn_unmask(handle, port);
  }
};

}  // namespace

XenLibrary& RealXenLibrary() {
  static RealLibrary library;
  return library;
}

int LastXenErrno() { return errno != 0 ? errno : EIO; }

Status XenOpenFailure(const char* device, int err) {
  Status status = Status::FromErrno(err, StrFormat("cannot open %s", device));
  return Status::Error(
      status.code(), status.message() + " \u2014 is this a Xen domain with the gntdev/evtchn drivers loaded?",
      err);
}

}  // namespace blk
