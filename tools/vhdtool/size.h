// Sizes on vhdtool's command line: "4096", "512K", "10G", "1T" (binary units), parsed strictly.
//
// Threading: stateless.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/status.h"

namespace blk::vhdtool {

// Digits, then at most one unit letter K, M, G or T (either case; powers of 1024). Anything else — signs,
// spaces, fractions, "GB", an empty string, a value that overflows 64 bits — is InvalidArgument naming the
// text.
Result<uint64_t> ParseSize(std::string_view text);
// "10 GiB", "512 MiB", "1536 bytes": the largest unit that divides the size exactly.
std::string FormatSize(uint64_t bytes);

}  // namespace blk::vhdtool
