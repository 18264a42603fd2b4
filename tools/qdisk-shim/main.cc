// qdisk-shim: stands in for the QEMU device model libxl starts for a PV guest with `backendtype=qdisk`
// disks (xl cfg: device_model_override = "/path/to/qdisk-shim"), while blkbackd --kinds qdisk serves the
// disks. It speaks just enough QMP for libxl and exits on SIGHUP (libxl's way to stop a device model),
// SIGTERM, SIGINT or a "quit" command. Everything it does is in libraries tested without it.
#include <signal.h>
#include <sys/signalfd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "base/log.h"
#include "base/unique_fd.h"
#include "tools/qdisk-shim/shim_args.h"
#include "tools/qdisk-shim/shim_server.h"
#include "xenstore/libxenstore_client.h"

namespace {

constexpr const char* kSubject = "qdisk-shim";

int Fail(const blk::Status& status) {
  blk::Log(blk::LogLevel::kError, kSubject, "%s", status.message().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
    std::puts(
        "usage: qdisk-shim -xen-domid N [-chardev socket,id=ID,path=P|fd=N,...] [-mon chardev=ID,mode=control]\n"
        "                  [-S] [other QEMU options, ignored]\n"
        "A stand-in for libxl's PV device model (xl: device_model_override) when blkbackd serves the qdisk\n"
        "disks. Environment: QDISK_SHIM_LOG_LEVEL=error|warning|notice|info|debug (default info).");
    return 0;
  }
  blk::LogLevel level = blk::LogLevel::kInfo;
  if (const char* wanted = std::getenv("QDISK_SHIM_LOG_LEVEL")) blk::ParseLogLevel(wanted, &level);
  blk::SetLogLevel(level);

  blk::Result<blk::ShimOptions> options = blk::ParseShimArgs(args);
  if (!options.ok()) {
    std::fprintf(stderr, "qdisk-shim: %s\n", options.status().message().c_str());
    return 2;
  }
  for (const std::string& ignored : options->ignored) {
    blk::Log(blk::LogLevel::kDebug, kSubject, "ignoring %s", ignored.c_str());
  }

  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGHUP);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigprocmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  blk::UniqueFd stop(signalfd(-1, &stop_signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!stop.valid()) return Fail(blk::Status::FromErrno(errno, "signalfd"));

  auto store = blk::LibXenStoreClient::Open();
  if (!store.ok()) return Fail(store.status());
  auto server = blk::ShimServer::Create(*options, store->get());
  if (!server.ok()) return Fail(server.status());
  blk::Log(blk::LogLevel::kInfo, kSubject, "domain %u (%s): %zu QMP monitor(s)%s", options->domid,
           options->name.c_str(), options->monitors.size(), options->start_paused ? ", started paused" : "");
  blk::Status status = (*server)->Run(stop.get());
  if (!status.ok()) return Fail(status);
  blk::Log(blk::LogLevel::kInfo, kSubject, "domain %u: exiting", options->domid);
  return 0;
}
