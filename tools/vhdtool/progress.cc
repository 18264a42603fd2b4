// Progress: redraws "label [#####.....]  42%" in place, only when the percentage changes.
#include "tools/vhdtool/progress.h"

#include <unistd.h>

#include <cstdio>

namespace blk::vhdtool {

Progress::Progress(std::string label, bool enabled)
    : label_(std::move(label)), enabled_(enabled && ::isatty(STDERR_FILENO) == 1) {}

Progress::~Progress() { Finish(); }

void Progress::Update(uint64_t done, uint64_t total) {
  if (!enabled_ || total == 0) return;
  int percent = static_cast<int>(done * 100 / total);
  if (percent == last_percent_) return;
  last_percent_ = percent;
  constexpr int kWidth = 40;
  char bar[kWidth + 1];
  for (int i = 0; i < kWidth; ++i) bar[i] = i < percent * kWidth / 100 ? '#' : '.';
  bar[kWidth] = '\0';
  std::fprintf(stderr, "\r%s [%s] %3d%%", label_.c_str(), bar, percent);
  std::fflush(stderr);
}

void Progress::Finish() {
  if (enabled_ && last_percent_ >= 0) std::fputc('\n', stderr);
  enabled_ = false;
}

}  // namespace blk::vhdtool
