// blkctl: list, stats, pause, resume and resize blkbackd's devices over its control socket.
#include <cstdio>
#include <string>
#include <vector>

#include "tools/blkctl/commands.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  blk::Result<blk::blkctl::Invocation> invocation = blk::blkctl::ParseArgs(args);
  if (!invocation.ok()) {
    std::fprintf(stderr, "blkctl: %s (see blkctl --help)\n", invocation.status().message().c_str());
    return blk::blkctl::kExitUsage;
  }
  if (invocation->help) {
    std::fputs(blk::blkctl::kUsage, stdout);
    return blk::blkctl::kExitOk;
  }
  return blk::blkctl::Run(*invocation, stdout, stderr);
}
