// Helpers any test may use: a scratch directory and running a command (the programs under test, external
// tools).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

namespace blk::testing {

// A fresh directory under $TMPDIR, removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "blktest.XXXXXX").string();
    path_ = ::mkdtemp(pattern.data()) ? pattern : "";
    EXPECT_FALSE(path_.empty());
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Runs a shell command; returns its exit status and (through `output`) what it printed on stdout and stderr.
inline int RunCommand(const std::string& command, std::string* output = nullptr) {
  std::string full = command + " 2>&1";
  FILE* pipe = ::popen(full.c_str(), "r");
  if (pipe == nullptr) return -1;
  std::string text;
  char buffer[4096];
  size_t got;
  while ((got = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) text.append(buffer, got);
  int status = ::pclose(pipe);
  if (output != nullptr) *output = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A loop device over `backing` (an existing file), detached at the end. path() is empty when none can be set
// up here (no root, no loop driver): the test should then GTEST_SKIP.
class LoopDevice {
 public:
  explicit LoopDevice(const std::string& backing) {
    std::string output;
    if (RunCommand("losetup --find --show " + backing, &output) != 0) return;
    output.erase(output.find_last_not_of('\n') + 1);
    if (output.rfind("/dev/", 0) == 0) path_ = output;
  }
  ~LoopDevice() {
    if (!path_.empty()) RunCommand("losetup -d " + path_);
  }
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace blk::testing
