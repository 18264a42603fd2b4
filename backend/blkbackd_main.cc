// blkbackd: the daemon's main. Reads its configuration, makes sure it is the only instance, opens the real
// Xen devices and xenstore, and serves until SIGTERM or SIGINT, after which every device is closed (frontends
// see Closing) and the requests already taken are finished. Everything it does is in libraries tested without
// it.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backend/blkback_daemon.h"
#include "backend/control_daemon_target.h"
#include "backend/control_server.h"
#include "backend/daemon_config.h"
#include "backend/daemon_process.h"
#include "base/log.h"
#include "ring/xen/xen_hypervisor.h"
#include "xenstore/libxenstore_client.h"

namespace {

constexpr const char* kSubject = "blkbackd";

int Fail(const blk::Status& status) {
  blk::Log(blk::LogLevel::kError, kSubject, "%s", status.message().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  blk::Result<blk::CommandLine> command_line =
      blk::ParseCommandLine(std::vector<std::string>(argv + 1, argv + argc));
  if (!command_line.ok()) {
    std::fprintf(stderr, "blkbackd: %s\n", command_line.status().message().c_str());
    return 2;
  }
  if (command_line->action == blk::CommandLineAction::kHelp) {
    std::fputs(blk::UsageText().c_str(), stdout);
    return 0;
  }
  if (command_line->action == blk::CommandLineAction::kVersion) {
    std::printf("blkbackd %s\n", BLKBACKD_VERSION);
    return 0;
  }
  const blk::BlkbackdConfig& config = command_line->config;
  blk::SetLogLevel(config.log_level);

  // Blocked here, before any thread exists, so that only the signal thread below ever takes them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  blk::Result<blk::InstanceLock> lock = blk::InstanceLock::Acquire(config.lock_file);
  if (!lock.ok()) return Fail(lock.status());
  blk::Result<std::unique_ptr<blk::XenHypervisor>> xen = blk::XenHypervisor::Open();
  if (!xen.ok()) return Fail(xen.status());
  blk::LibXenStoreClient::Options store_options;
  store_options.socket_path = config.xenstore_socket;
  auto store = blk::LibXenStoreClient::Open(store_options);
  if (!store.ok()) return Fail(store.status().Annotate("cannot connect to xenstore: "));
  auto daemon = blk::BlkbackDaemon::Create(std::move(store).value(), (*xen)->hypervisor(), config.daemon);
  if (!daemon.ok()) return Fail(daemon.status());
  blk::DaemonControlTarget control_target(**daemon);
  blk::ControlServerOptions control_options;
  control_options.socket_path = config.control_socket;
  control_options.stats_dir = config.stats_dir;
  auto control = blk::ControlServer::Create(control_options, control_target);
  if (!control.ok()) return Fail(control.status().Annotate("control socket: "));
  if (blk::Status attached = (*daemon)->AttachControl(control->get()); !attached.ok()) return Fail(attached);

  std::atomic<bool> run_failed{false};
  std::thread signals([&] {
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    if (run_failed) return;
    blk::Log(blk::LogLevel::kNotice, kSubject, "%s: closing every device", strsignal(signal_number));
    (*daemon)->Stop();
  });
  (void)blk::NotifySystemd("READY=1\nSTATUS=serving");
  blk::Status served = (*daemon)->Run();
  if (!served.ok()) {
    blk::Log(blk::LogLevel::kError, kSubject, "%s", served.message().c_str());
    run_failed = true;
    pthread_kill(signals.native_handle(), SIGTERM);  // ends the signal thread's wait
  }
  signals.join();
  (void)blk::NotifySystemd("STOPPING=1");
  (void)(*daemon)->AttachControl(nullptr);
  control->reset();
  uint32_t left = (*daemon)->Shutdown(config.shutdown_timeout_ms);
  daemon->reset();
  blk::Log(blk::LogLevel::kNotice, kSubject, "stopped");
  return served.ok() && left == 0 ? 0 : 1;
}
