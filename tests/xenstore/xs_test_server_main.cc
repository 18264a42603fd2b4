// xs_test_server: runs the test xenstore server on a socket until SIGINT or SIGTERM, for manual experiments:
//   xs_test_server /tmp/xs.sock &  XENSTORED_PATH=/tmp/xs.sock xenstore-write /a 1
#include <signal.h>

#include <cstdio>
#include <string>

#include "tests/xenstore/xs_test_server.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s SOCKET_PATH\n", argv[0]);
    return 2;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before the server thread starts, so it inherits the mask
  blk::Result<std::unique_ptr<blk::XsTestServer>> server = blk::XsTestServer::Start(argv[1]);
  if (!server.ok()) {
    std::fprintf(stderr, "xs_test_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "xs_test_server: serving %s (XENSTORED_PATH=%s)\n", argv[1], argv[1]);
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  return 0;
}
