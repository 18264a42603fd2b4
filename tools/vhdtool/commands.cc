// vhdtool verbs that describe or make images: create, snapshot, info, check.
#include "tools/vhdtool/commands.h"

#include <cstdio>

#include "formats/vhd/chain.h"
#include "formats/vhd/check.h"
#include "formats/vhd/create.h"
#include "tools/vhdtool/progress.h"
#include "tools/vhdtool/size.h"

namespace blk::vhdtool {
namespace {

std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string Creator(const vhd::Footer& footer) {
  std::string app;
  for (char c : footer.creator_app) {
    if (c != '\0') app += c;
  }
  return app + " " + std::to_string(footer.creator_version >> 16) + "." +
         std::to_string(footer.creator_version & 0xFFFF);
}

}  // namespace

int Fail(const std::string& message, int code) {
  std::fprintf(stderr, "vhdtool: %s\n", message.c_str());
  return code;
}

int Create(const Args& args) {
  vhd::CreateOptions options;
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--fixed") {
      options.type = vhd::DiskType::kFixed;
    } else if (arg == "--dynamic") {
      options.type = vhd::DiskType::kDynamic;
    } else if (arg == "--no-batmap") {
      options.batmap = false;
    } else if (arg == "--block-size" && i + 1 < args.size()) {
      Result<uint64_t> size = ParseSize(args[++i]);
      if (!size.ok()) return Fail(size.status().message(), 2);
      if (*size > vhd::kMaxBlockSize) return Fail("block size " + args[i] + " is over 256 MiB", 2);
      options.block_size = static_cast<uint32_t>(*size);
    } else if (!arg.empty() && arg[0] == '-') {
      return Fail("create: unknown option " + arg, 2);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 2)
    return Fail("usage: vhdtool create [--fixed|--dynamic] [--block-size SIZE] FILE SIZE", 2);
  Result<uint64_t> size = ParseSize(positional[1]);
  if (!size.ok()) return Fail(size.status().message(), 2);
  options.size = *size;
  Status status = vhd::CreateImage(positional[0], options);
  if (!status.ok()) return Fail(status.message());
  return 0;
}

int Snapshot(const Args& args) {
  if (args.size() != 2 || args[0][0] == '-' || args[1][0] == '-') {
    return Fail("usage: vhdtool snapshot PARENT CHILD", 2);
  }
  // The parent must itself open as a whole chain, or the child would be born broken.
  Result<std::unique_ptr<vhd::VhdChain>> parent = vhd::VhdChain::Open(args[0], false);
  if (!parent.ok()) return Fail(parent.status().message());
  parent->reset();
  Status status = vhd::CreateImage(args[1], vhd::CreateOptions::Differencing(args[0]));
  if (!status.ok()) return Fail(status.message());
  return 0;
}

int Info(const Args& args) {
  bool json = false;
  std::string path;
  for (const std::string& arg : args) {
    if (arg == "--json") {
      json = true;
    } else if (!arg.empty() && arg[0] == '-') {
      return Fail("info: unknown option " + arg, 2);
    } else if (path.empty()) {
      path = arg;
    } else {
      return Fail("usage: vhdtool info [--json] FILE", 2);
    }
  }
  if (path.empty()) return Fail("usage: vhdtool info [--json] FILE", 2);
  Result<std::unique_ptr<vhd::FileIo>> file = vhd::PosixFile::Open(path, false);
  if (!file.ok()) return Fail(file.status().message());
  Result<std::unique_ptr<vhd::VhdImage>> opened = vhd::VhdImage::Open(std::move(*file), false);
  if (!opened.ok()) return Fail(opened.status().message());
  vhd::VhdImage& image = **opened;
  const vhd::Footer& footer = image.footer();
  bool dynamic = image.type() != vhd::DiskType::kFixed;
  uint64_t allocated = 0;
  for (uint32_t block = 0; dynamic && block < image.block_count(); ++block) {
    if (image.bat_entry(block) != vhd::kBatUnused) ++allocated;
  }
  std::string parent;
  std::string parent_problem;
  if (image.type() == vhd::DiskType::kDifferencing) {
    Result<std::string> found = vhd::VhdChain::FindParent(image);
    if (found.ok()) {
      parent = *found;
    } else {
      parent_problem = found.status().message();
    }
  }
  const char* type = vhd::DiskTypeName(image.type());
  if (json) {
    std::printf("{\"file\": %s, \"type\": \"%s\", \"virtual_size\": %llu, \"uuid\": \"%s\", \"creator\": %s",
                JsonString(path).c_str(), type, static_cast<unsigned long long>(image.virtual_size()),
                vhd::UuidToString(footer.uuid).c_str(), JsonString(Creator(footer)).c_str());
    std::printf(", \"geometry\": [%u, %u, %u], \"current_size\": %llu", footer.geometry.cylinders,
                footer.geometry.heads, footer.geometry.sectors_per_track,
                static_cast<unsigned long long>(footer.current_size));
    if (dynamic) {
      std::printf(", \"block_size\": %u, \"blocks\": %u, \"blocks_allocated\": %llu, \"batmap\": %s",
                  image.header().block_size, image.block_count(), static_cast<unsigned long long>(allocated),
                  image.has_batmap() ? "true" : "false");
    }
    if (image.type() == vhd::DiskType::kDifferencing) {
      std::printf(", \"parent_uuid\": \"%s\", \"parent\": %s",
                  vhd::UuidToString(image.header().parent_uuid).c_str(),
                  parent.empty() ? "null" : JsonString(parent).c_str());
    }
    std::printf("}\n");
    return 0;
  }
  std::printf("file:          %s\n", path.c_str());
  std::printf("type:          %s\n", type);
  std::printf("virtual size:  %llu (%s)\n", static_cast<unsigned long long>(image.virtual_size()),
              FormatSize(image.virtual_size()).c_str());
  std::printf("uuid:          %s\n", vhd::UuidToString(footer.uuid).c_str());
  std::printf("creator:       %s\n", Creator(footer).c_str());
  std::printf("geometry:      %u/%u/%u\n", footer.geometry.cylinders, footer.geometry.heads,
              footer.geometry.sectors_per_track);
  if (dynamic) {
    std::printf("block size:    %s\n", FormatSize(image.header().block_size).c_str());
    std::printf("blocks:        %llu of %u allocated\n", static_cast<unsigned long long>(allocated),
                image.block_count());
    std::printf("batmap:        %s\n", image.has_batmap() ? "yes" : "no");
  }
  if (image.type() == vhd::DiskType::kDifferencing) {
    std::printf("parent uuid:   %s\n", vhd::UuidToString(image.header().parent_uuid).c_str());
    std::printf("parent:        %s\n", parent.empty() ? parent_problem.c_str() : parent.c_str());
  }
  for (const std::string& note : image.notes()) std::printf("note:          %s\n", note.c_str());
  return 0;
}

int Check(const Args& args) {
  if (args.size() != 1 || args[0][0] == '-') return Fail("usage: vhdtool check FILE", 2);
  Progress progress("checking", true);
  vhd::CheckReport report =
      vhd::CheckImage(args[0], [&](uint64_t done, uint64_t total) { progress.Update(done, total); });
  progress.Finish();
  for (const std::string& note : report.notes) std::printf("note: %s\n", note.c_str());
  for (const std::string& problem : report.problems) std::printf("%s\n", problem.c_str());
  if (!report.ok()) return 1;
  std::printf("%s: ok (%llu allocated blocks checked)\n", args[0].c_str(),
              static_cast<unsigned long long>(report.blocks_checked));
  return 0;
}

}  // namespace blk::vhdtool
