// VHD codecs: footer, dynamic header, BAT entries, bitmaps, batmap header, geometry and the virtual-size
// rule.
#include "formats/vhd/format.h"

#include <cstdio>
#include <cstring>

namespace blk::vhd {
namespace {

constexpr std::string_view kFooterCookie = "conectix";
constexpr std::string_view kHeaderCookie = "cxsparse";
constexpr size_t kFooterChecksumAt = 64;
constexpr size_t kHeaderChecksumAt = 36;
constexpr size_t kBatmapChecksumAt = 24;

uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t Get32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
}
uint64_t Get64(const uint8_t* p) { return uint64_t{Get32(p)} << 32 | Get32(p + 4); }
void Put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (24 - 8 * i));
}
void Put64(uint8_t* p, uint64_t v) {
  Put32(p, static_cast<uint32_t>(v >> 32));
  Put32(p + 4, static_cast<uint32_t>(v));
}

std::string Hex32(uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof(text), "0x%08x", value);
  return text;
}

}  // namespace

const char* DiskTypeName(DiskType type) {
  switch (type) {
    case DiskType::kFixed:
      return "fixed";
    case DiskType::kDynamic:
      return "dynamic";
    case DiskType::kDifferencing:
      return "differencing";
  }
  return "unknown";
}

std::string UuidToString(const Uuid& uuid) {
  char text[40];
  std::snprintf(text, sizeof(text), "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                uuid[0], uuid[1], uuid[2], uuid[3], uuid[4], uuid[5], uuid[6], uuid[7], uuid[8], uuid[9],
                uuid[10], uuid[11], uuid[12], uuid[13], uuid[14], uuid[15]);
  return text;
}

Geometry GeometryForSectors(uint64_t sectors) {
  // The specification's table: try ever larger sectors-per-track until cylinders*heads fits 65535*16.
  uint64_t total = sectors < kMaxGeometrySectors ? sectors : kMaxGeometrySectors;
  uint64_t per_track;
  uint64_t heads;
  uint64_t cylinder_heads;
  if (total >= 65535ull * 16 * 63) {
    per_track = 255;
    heads = 16;
    cylinder_heads = total / per_track;
  } else {
    per_track = 17;
    cylinder_heads = total / per_track;
    heads = (cylinder_heads + 1023) / 1024;
    if (heads < 4) heads = 4;
    if (cylinder_heads >= heads * 1024 || heads > 16) {
      per_track = 31;
      heads = 16;
      cylinder_heads = total / per_track;
    }
    if (cylinder_heads >= heads * 1024) {
      per_track = 63;
      heads = 16;
      cylinder_heads = total / per_track;
    }
  }
  return Geometry{static_cast<uint16_t>(cylinder_heads / heads), static_cast<uint8_t>(heads),
                  static_cast<uint8_t>(per_track)};
}

uint32_t ComputeChecksum(std::span<const uint8_t> bytes, size_t checksum_offset) {
  uint32_t sum = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (i >= checksum_offset && i < checksum_offset + 4) continue;
    sum += bytes[i];
  }
  return ~sum;
}

Result<Footer> DecodeFooter(std::span<const uint8_t> bytes) {
  if (bytes.size() != kFooterSize && bytes.size() != kOldFooterSize) {
    return Status::Corruption("footer has " + std::to_string(bytes.size()) + " bytes");
  }
  if (std::memcmp(bytes.data(), kFooterCookie.data(), 8) != 0) {
    return Status::Corruption("no footer cookie \"conectix\"");
  }
  const uint8_t* p = bytes.data();
  Footer footer;
  footer.features = Get32(p + 8);
  footer.format_version = Get32(p + 12);
  footer.data_offset = Get64(p + 16);
  footer.timestamp = Get32(p + 24);
  std::memcpy(footer.creator_app.data(), p + 28, 4);
  footer.creator_version = Get32(p + 32);
  footer.creator_os = Get32(p + 36);
  footer.original_size = Get64(p + 40);
  footer.current_size = Get64(p + 48);
  footer.geometry = Geometry{Get16(p + 56), p[58], p[59]};
  footer.disk_type = Get32(p + 60);
  footer.checksum = Get32(p + 64);
  std::memcpy(footer.uuid.data(), p + 68, 16);
  footer.saved_state = p[84];
  uint32_t expected = ComputeChecksum(bytes, kFooterChecksumAt);
  if (expected != footer.checksum) {
    return Status::Corruption("footer checksum " + Hex32(footer.checksum) + " should be " + Hex32(expected));
  }
  if (footer.format_version >> 16 != 1) {
    return Status::NotSupported("footer format version " + Hex32(footer.format_version) + " is not 1.x");
  }
  if (footer.disk_type != 2 && footer.disk_type != 3 && footer.disk_type != 4) {
    return Status::NotSupported("disk type " + std::to_string(footer.disk_type) +
                                " (want 2 fixed, 3 dynamic or 4 differencing)");
  }
  if (footer.saved_state != 0) return Status::NotSupported("the footer's saved-state flag is set");
  return footer;
}

void EncodeFooter(const Footer& footer, std::span<uint8_t, kFooterSize> out) {
  uint8_t* p = out.data();
  std::memset(p, 0, kFooterSize);
  std::memcpy(p, kFooterCookie.data(), 8);
  Put32(p + 8, footer.features);
  Put32(p + 12, footer.format_version);
  Put64(p + 16, footer.data_offset);
  Put32(p + 24, footer.timestamp);
  std::memcpy(p + 28, footer.creator_app.data(), 4);
  Put32(p + 32, footer.creator_version);
  Put32(p + 36, footer.creator_os);
  Put64(p + 40, footer.original_size);
  Put64(p + 48, footer.current_size);
  Put16(p + 56, footer.geometry.cylinders);
  p[58] = footer.geometry.heads;
  p[59] = footer.geometry.sectors_per_track;
  Put32(p + 60, footer.disk_type);
  std::memcpy(p + 68, footer.uuid.data(), 16);
  p[84] = footer.saved_state;
  Put32(p + kFooterChecksumAt, ComputeChecksum(out, kFooterChecksumAt));
}

Result<DynamicHeader> DecodeHeader(std::span<const uint8_t, kHeaderSize> bytes) {
  const uint8_t* p = bytes.data();
  if (std::memcmp(p, kHeaderCookie.data(), 8) != 0) {
    return Status::Corruption("no dynamic header cookie \"cxsparse\"");
  }
  DynamicHeader header;
  header.data_offset = Get64(p + 8);
  header.table_offset = Get64(p + 16);
  header.header_version = Get32(p + 24);
  header.max_table_entries = Get32(p + 28);
  header.block_size = Get32(p + 32);
  header.checksum = Get32(p + 36);
  std::memcpy(header.parent_uuid.data(), p + 40, 16);
  header.parent_timestamp = Get32(p + 56);
  std::memcpy(header.parent_name_utf16be.data(), p + 64, 512);
  for (size_t i = 0; i < kLocatorCount; ++i) {
    const uint8_t* entry = p + 576 + 24 * i;
    header.locators[i] = ParentLocator{Get32(entry), Get32(entry + 4), Get32(entry + 8), Get64(entry + 16)};
  }
  uint32_t expected = ComputeChecksum(bytes, kHeaderChecksumAt);
  if (expected != header.checksum) {
    return Status::Corruption("dynamic header checksum " + Hex32(header.checksum) + " should be " +
                              Hex32(expected));
  }
  if (header.header_version >> 16 != 1) {
    return Status::NotSupported("dynamic header version " + Hex32(header.header_version) + " is not 1.x");
  }
  return header;
}

void EncodeHeader(const DynamicHeader& header, std::span<uint8_t, kHeaderSize> out) {
  uint8_t* p = out.data();
  std::memset(p, 0, kHeaderSize);
  std::memcpy(p, kHeaderCookie.data(), 8);
  Put64(p + 8, header.data_offset);
  Put64(p + 16, header.table_offset);
  Put32(p + 24, header.header_version);
  Put32(p + 28, header.max_table_entries);
  Put32(p + 32, header.block_size);
  std::memcpy(p + 40, header.parent_uuid.data(), 16);
  Put32(p + 56, header.parent_timestamp);
  std::memcpy(p + 64, header.parent_name_utf16be.data(), 512);
  for (size_t i = 0; i < kLocatorCount; ++i) {
    uint8_t* entry = p + 576 + 24 * i;
    const ParentLocator& locator = header.locators[i];
    Put32(entry, locator.platform_code);
    Put32(entry + 4, locator.data_space);
    Put32(entry + 8, locator.data_length);
    Put64(entry + 16, locator.data_offset);
  }
  Put32(p + kHeaderChecksumAt, ComputeChecksum(out, kHeaderChecksumAt));
}

uint64_t LocatorSpaceBytes(const ParentLocator& locator) {
  // The specification says sectors; Windows writes bytes. A value below one sector can only be a sector
  // count.
  uint64_t space = locator.data_space;
  return space < kSectorSize ? space * kSectorSize : space;
}

uint64_t VirtualSize(const Footer& footer, std::string* note) {
  uint64_t geometry_bytes = footer.geometry.sectors() * kSectorSize;
  bool geometry_creator = footer.creator() == std::string_view("vpc ", 4) || footer.creator() == "qemu";
  if (geometry_creator && footer.geometry.sectors() != kMaxGeometrySectors &&
      geometry_bytes != footer.current_size) {
    if (note != nullptr) {
      *note = "creator \"" + std::string(footer.creator()) + "\": geometry " +
              std::to_string(footer.geometry.cylinders) + "/" + std::to_string(footer.geometry.heads) + "/" +
              std::to_string(footer.geometry.sectors_per_track) + " gives " + std::to_string(geometry_bytes) +
              " bytes but current_size says " + std::to_string(footer.current_size) +
              "; following the geometry, as qemu does";
    }
    return geometry_bytes;
  }
  return footer.current_size;
}

uint32_t GetBatEntry(std::span<const uint8_t> bat, uint32_t index) {
  return Get32(bat.data() + 4 * size_t{index});
}
void SetBatEntry(std::span<uint8_t> bat, uint32_t index, uint32_t sector) {
  Put32(bat.data() + 4 * size_t{index}, sector);
}

void SetBits(std::span<uint8_t> bitmap, uint64_t first, uint64_t count) {
  for (uint64_t bit = first; bit < first + count; ++bit) {
    if (bit % 8 == 0 && bit + 8 <= first + count) {
      bitmap[bit / 8] = 0xFF;
      bit += 7;
      continue;
    }
    bitmap[bit / 8] |= static_cast<uint8_t>(0x80 >> (bit % 8));
  }
}

bool AllBitsSet(std::span<const uint8_t> bitmap, uint64_t count) {
  for (uint64_t bit = 0; bit < count; ++bit) {
    if (bit % 8 == 0 && bit + 8 <= count) {
      if (bitmap[bit / 8] != 0xFF) return false;
      bit += 7;
      continue;
    }
    if (!TestBit(bitmap, bit)) return false;
  }
  return true;
}

Result<BatmapHeader> DecodeBatmapHeader(std::span<const uint8_t, kSectorSize> bytes) {
  const uint8_t* p = bytes.data();
  if (std::memcmp(p, kBatmapCookie.data(), 8) != 0) return Status::NotFound("no batmap cookie \"tdbatmap\"");
  BatmapHeader header;
  header.batmap_offset = Get64(p + 8);
  header.batmap_sectors = Get32(p + 16);
  header.version = Get32(p + 20);
  header.checksum = Get32(p + kBatmapChecksumAt);
  header.marker = p[28];
  if (header.version >> 16 != 1) {
    return Status::NotSupported("batmap version " + Hex32(header.version) + " is not 1.x");
  }
  return header;
}

void EncodeBatmapHeader(const BatmapHeader& header, std::span<uint8_t, kSectorSize> out) {
  uint8_t* p = out.data();
  std::memset(p, 0, kSectorSize);
  std::memcpy(p, kBatmapCookie.data(), 8);
  Put64(p + 8, header.batmap_offset);
  Put32(p + 16, header.batmap_sectors);
  Put32(p + 20, header.version);
  Put32(p + kBatmapChecksumAt, header.checksum);
  p[28] = header.marker;
}

uint32_t BatmapChecksum(std::span<const uint8_t> batmap) {
  uint32_t sum = 0;
  for (uint8_t byte : batmap) sum += byte;
  return ~sum;
}

uint32_t VhdTimestamp(int64_t unix_seconds) {
  constexpr int64_t kVhdEpoch = 946684800;  // 2000-01-01T00:00:00Z
  int64_t seconds = unix_seconds - kVhdEpoch;
  return seconds < 0 ? 0 : static_cast<uint32_t>(seconds);
}

}  // namespace blk::vhd
