// vhdtool: the operator's tool for VHD images (vhd-util is not packaged for Debian). Verbs follow vhd-util's
// names.
#include <cstdio>
#include <cstring>
#include <string>

#include "base/log.h"
#include "tools/vhdtool/commands.h"

namespace {

constexpr const char* kUsage = R"(usage: vhdtool VERB [ARGS...]

  create [--fixed|--dynamic] [--block-size SIZE] [--no-batmap] FILE SIZE
                         make a new image (dynamic by default; SIZE like 512M, 10G, 1T)
  snapshot PARENT CHILD  make CHILD, a differencing image over PARENT
  info [--json] FILE     describe an image
  check FILE             check an image and its chain; one line per problem, exit 1 if any
  convert [-O raw|vhd] [--fixed] SRC DST
                         copy a raw file or a VHD (chain) into a raw file or one flat VHD
                         (-O defaults to vhd when DST ends in .vhd, raw otherwise)
  coalesce CHILD         write a differencing image's data into its parent

example:
  vhdtool create disk.vhd 10G && vhdtool snapshot disk.vhd snap.vhd && vhdtool info snap.vhd
  vhdtool convert -O raw snap.vhd flat.img
)";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  // Notices from opening images (a size rule applied, a footer repaired) are for logs, not for this tool's
  // output.
  blk::SetLogLevel(blk::LogLevel::kWarning);
  std::string verb = argv[1];
  blk::vhdtool::Args args(argv + 2, argv + argc);
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
  }
  if (verb == "create") return blk::vhdtool::Create(args);
  if (verb == "snapshot") return blk::vhdtool::Snapshot(args);
  if (verb == "info") return blk::vhdtool::Info(args);
  if (verb == "check") return blk::vhdtool::Check(args);
  if (verb == "convert") return blk::vhdtool::Convert(args);
  if (verb == "coalesce") return blk::vhdtool::Coalesce(args);
  std::fprintf(stderr, "vhdtool: unknown verb \"%s\"\n%s", verb.c_str(), kUsage);
  return 2;
}
