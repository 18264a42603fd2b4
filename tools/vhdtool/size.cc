// Size parsing and formatting for vhdtool.
#include "tools/vhdtool/size.h"

namespace blk::vhdtool {

Result<uint64_t> ParseSize(std::string_view text) {
  auto bad = [&](const char* why) {
    return Status::InvalidArgument("bad size \"" + std::string(text) + "\": " + why +
                                   " (want digits and an optional K, M, G or T, e.g. 10G)");
  };
  if (text.empty()) return bad("empty");
  uint64_t value = 0;
  size_t i = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    if (__builtin_mul_overflow(value, 10, &value) || __builtin_add_overflow(value, text[i] - '0', &value)) {
      return bad("too large");
    }
  }
  if (i == 0) return bad("no digits");
  unsigned shift = 0;
  if (i < text.size()) {
    switch (text[i]) {
      case 'K':
      case 'k':
        shift = 10;
        break;
      case 'M':
      case 'm':
        shift = 20;
        break;
      case 'G':
      case 'g':
        shift = 30;
        break;
      case 'T':
      case 't':
        shift = 40;
        break;
      default:
        return bad("unknown unit");
    }
    if (i + 1 != text.size()) return bad("trailing characters");
  }
  if (shift > 0 && value > (~uint64_t{0} >> shift)) return bad("too large");
  return value << shift;
}

std::string FormatSize(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  size_t unit = 0;
  uint64_t value = bytes;
  while (unit + 1 < std::size(kUnits) && value != 0 && value % 1024 == 0) {
    value /= 1024;
    ++unit;
  }
  return std::to_string(value) + " " + kUnits[unit];
}

}  // namespace blk::vhdtool
