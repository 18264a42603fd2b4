// Parent locators and the parent name: UTF-8 paths to and from the UTF-16 and URL forms VHD stores.
#include <cstring>

#include "formats/vhd/format.h"

namespace blk::vhd {
namespace {

// Appends `code` as UTF-8.
void AppendUtf8(uint32_t code, std::string* out) {
  if (code < 0x80) {
    out->push_back(static_cast<char>(code));
  } else if (code < 0x800) {
    out->push_back(static_cast<char>(0xC0 | code >> 6));
    out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
  } else if (code < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | code >> 12));
    out->push_back(static_cast<char>(0x80 | (code >> 6 & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | code >> 18));
    out->push_back(static_cast<char>(0x80 | (code >> 12 & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code >> 6 & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
  }
}

// UTF-16 code units (already in host order) to UTF-8; stops at a NUL. False on a broken surrogate pair.
template <typename GetUnit>
bool Utf16ToUtf8(size_t units, GetUnit get, std::string* out) {
  for (size_t i = 0; i < units; ++i) {
    uint32_t unit = get(i);
    if (unit == 0) break;
    if (unit >= 0xD800 && unit < 0xDC00) {
      if (i + 1 >= units) return false;
      uint32_t low = get(++i);
      if (low < 0xDC00 || low >= 0xE000) return false;
      unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
    } else if (unit >= 0xDC00 && unit < 0xE000) {
      return false;
    }
    AppendUtf8(unit, out);
  }
  return true;
}

// UTF-8 to UTF-16 code units; bytes that are not valid UTF-8 pass through as Latin-1.
std::u16string Utf8ToUtf16(std::string_view text) {
  std::u16string out;
  for (size_t i = 0; i < text.size();) {
    auto byte = static_cast<uint8_t>(text[i]);
    uint32_t code = byte;
    size_t extra = byte >= 0xF0 ? 3 : byte >= 0xE0 ? 2 : byte >= 0xC0 ? 1 : 0;
    if (extra > 0 && i + extra < text.size()) {
      code = byte & (0x3F >> extra);
      for (size_t k = 1; k <= extra; ++k) code = code << 6 | (text[i + k] & 0x3F);
      i += extra + 1;
    } else {
      ++i;
    }
    if (code >= 0x10000) {
      code -= 0x10000;
      out.push_back(static_cast<char16_t>(0xD800 + (code >> 10)));
      out.push_back(static_cast<char16_t>(0xDC00 + (code & 0x3FF)));
    } else {
      out.push_back(static_cast<char16_t>(code));
    }
  }
  return out;
}

constexpr std::string_view kFileUrl = "file://";

}  // namespace

Result<std::string> DecodeLocatorPath(uint32_t platform_code, std::span<const uint8_t> data) {
  std::string path;
  if (platform_code == kPlatformW2ku || platform_code == kPlatformW2ru) {
    if (data.size() % 2 != 0) return Status::Corruption("UTF-16 locator has an odd length");
    bool ok = Utf16ToUtf8(
        data.size() / 2, [&](size_t i) { return uint32_t{data[2 * i]} | uint32_t{data[2 * i + 1]} << 8; },
        &path);
    if (!ok) return Status::Corruption("UTF-16 locator holds a broken surrogate pair");
    for (char& c : path) {
      if (c == '\\') c = '/';
    }
    // A Windows drive ("C:/...") cannot name a file here; the relative form is the one that can work.
  } else if (platform_code == kPlatformMacX) {
    path.assign(reinterpret_cast<const char*>(data.data()), data.size());
    if (size_t nul = path.find('\0'); nul != std::string::npos) path.resize(nul);
    if (path.rfind(kFileUrl, 0) == 0) path.erase(0, kFileUrl.size());
  } else {
    return Status::NotSupported("locator platform code is not W2ku, W2ru or MacX");
  }
  if (path.empty()) return Status::Corruption("locator holds an empty path");
  return path;
}

std::string EncodeLocatorPath(uint32_t platform_code, std::string_view path) {
  std::string out;
  if (platform_code == kPlatformMacX) {
    out.append(kFileUrl);
    out.append(path);
    return out;
  }
  std::u16string units = Utf8ToUtf16(path);
  for (char16_t unit : units) {
    if (unit == u'/') unit = u'\\';
    out.push_back(static_cast<char>(unit & 0xFF));
    out.push_back(static_cast<char>(unit >> 8));
  }
  return out;
}

std::string DecodeParentName(const std::array<uint8_t, 512>& name) {
  std::string out;
  if (!Utf16ToUtf8(
          256, [&](size_t i) { return uint32_t{name[2 * i]} << 8 | name[2 * i + 1]; }, &out))
    return {};
  return out;
}

void EncodeParentName(std::string_view name, std::array<uint8_t, 512>* out) {
  out->fill(0);
  std::u16string units = Utf8ToUtf16(name);
  for (size_t i = 0; i < units.size() && i < 255; ++i) {
    (*out)[2 * i] = static_cast<uint8_t>(units[i] >> 8);
    (*out)[2 * i + 1] = static_cast<uint8_t>(units[i] & 0xFF);
  }
}

}  // namespace blk::vhd
