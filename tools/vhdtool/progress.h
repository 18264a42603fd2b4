// A one-line progress bar on stderr for commands that walk an image's data; silent when stderr is not a
// terminal (or when disabled), so scripts and tests see only the result.
//
// Threading: one thread.
#pragma once

#include <cstdint>
#include <string>

namespace blk::vhdtool {

class Progress {
 public:
  Progress(std::string label, bool enabled);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void Update(uint64_t done, uint64_t total);
  // Ends the line (called by the destructor too).
  void Finish();

 private:
  std::string label_;
  bool enabled_;
  int last_percent_ = -1;
};

}  // namespace blk::vhdtool
