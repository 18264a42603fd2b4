// StrFormat: printf-style formatting into a std::string, for Status messages and log text.
#pragma once

#include <string>

namespace blk {

std::string StrFormat(const char* format, ...) __attribute__((format(printf, 1, 2)));

}  // namespace blk
