// XenLibrary: the calls the real Xen ports make into libxengnttab and libxenevtchn, behind one interface so
// that a test can put a fake library in their place (failing a chosen call with a chosen errno, or succeeding
// over ordinary memory and pipes). Each method mirrors one C function one to one: same arguments, same
// result, and errno set on failure. RealXenLibrary() forwards to the real libraries.
//
// Threading: an implementation must accept calls from several threads at once, as the libraries do.
#pragma once

#include <cstdint>
#include <string>

// The library headers include the Xen public headers they need (GNTST_*, GNTCOPY_*, evtchn_port_t), and
// have no extern "C" of their own.
extern "C" {
#include <xenevtchn.h>
#include <xengnttab.h>
}

#include "base/format.h"
#include "base/status.h"

namespace blk {

class XenLibrary {
 public:
  virtual ~XenLibrary() = default;

  virtual xengnttab_handle* GnttabOpen() = 0;
  virtual int GnttabClose(xengnttab_handle* handle) = 0;
  virtual void* GnttabMapDomainGrantRefs(xengnttab_handle* handle, uint32_t count, uint32_t domid,
                                         uint32_t* refs, int prot) = 0;
  virtual int GnttabUnmap(xengnttab_handle* handle, void* addr, uint32_t count) = 0;
  virtual int GnttabGrantCopy(xengnttab_handle* handle, uint32_t count,
                              xengnttab_grant_copy_segment_t* segments) = 0;

  virtual xenevtchn_handle* EvtchnOpen() = 0;
  virtual int EvtchnClose(xenevtchn_handle* handle) = 0;
  virtual int EvtchnFd(xenevtchn_handle* handle) = 0;
  virtual xenevtchn_port_or_error_t EvtchnBindInterdomain(xenevtchn_handle* handle, uint32_t domid,
                                                          evtchn_port_t remote_port) = 0;
  virtual int EvtchnUnbind(xenevtchn_handle* handle, evtchn_port_t port) = 0;
  virtual int EvtchnNotify(xenevtchn_handle* handle, evtchn_port_t port) = 0;
  virtual xenevtchn_port_or_error_t EvtchnPending(xenevtchn_handle* handle) = 0;
  virtual int EvtchnUnmask(xenevtchn_handle* handle, evtchn_port_t port) = 0;
};

// The real libraries. Their own diagnostics go to blk::Log at debug level (subject "xen"): the Status each
// failing call becomes already says what went wrong.
XenLibrary& RealXenLibrary();

// errno after a failed library call; EIO if the library failed without setting it.
int LastXenErrno();


// The failure to open one of the Xen devices, with the hint an operator needs.
Status XenOpenFailure(const char* device, int err);

}  // namespace blk
