// VHD on-disk structures and their codecs: footer, dynamic-disk header, parent locators, BAT entries, sector
// bitmaps and tapdisk's batmap. Pure functions over byte spans (big-endian on disk); no I/O, no allocation on
// the decode paths except for the parent name. See FORMAT.md for the format in prose.
//
// Threading: stateless; every function is safe to call from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"

namespace blk::vhd {

inline constexpr uint64_t kSectorSize = 512;
inline constexpr size_t kFooterSize = 512;
inline constexpr size_t kOldFooterSize = 511;  // some early Virtual PC images end with one byte less
inline constexpr size_t kHeaderSize = 1024;
inline constexpr size_t kLocatorCount = 8;
inline constexpr uint32_t kBatUnused = 0xFFFFFFFFu;
inline constexpr uint64_t kNoOffset = ~uint64_t{0};
inline constexpr uint32_t kFormatVersion = 0x00010000;
inline constexpr uint32_t kFeatureReserved = 0x2;  // must always be set
inline constexpr uint32_t kMinBlockSize = 512;
inline constexpr uint32_t kMaxBlockSize = 256u << 20;
inline constexpr uint64_t kMaxGeometrySectors = 65535ull * 16 * 255;
// 2040 GiB: the size limit every VHD implementation agrees on (the BAT's 32-bit sector offsets allow little
// more).
inline constexpr uint64_t kMaxVirtualSize = 2040ull << 30;
inline constexpr uint64_t kMaxChainDepth = 64;  // room for a guest snapshotted often (blkctl snapshot)

enum class DiskType : uint32_t { kFixed = 2, kDynamic = 3, kDifferencing = 4 };
const char* DiskTypeName(DiskType type);

using Uuid = std::array<uint8_t, 16>;
std::string UuidToString(const Uuid& uuid);

struct Geometry {
  uint16_t cylinders = 0;
  uint8_t heads = 0;
  uint8_t sectors_per_track = 0;
  uint64_t sectors() const { return uint64_t{cylinders} * heads * sectors_per_track; }
  bool operator==(const Geometry&) const = default;
};
// The CHS geometry the specification assigns to a disk of `sectors` sectors (capped at 65535/16/255).
Geometry GeometryForSectors(uint64_t sectors);

struct Footer {
  uint32_t features = kFeatureReserved;
  uint32_t format_version = kFormatVersion;
  uint64_t data_offset = kNoOffset;  // the dynamic header's offset, or kNoOffset for fixed disks
  uint32_t timestamp = 0;            // seconds since 2000-01-01 00:00:00 UTC
  std::array<char, 4> creator_app{};
  uint32_t creator_version = 0;
  uint32_t creator_os = 0;
  uint64_t original_size = 0;
  uint64_t current_size = 0;
  Geometry geometry;
  uint32_t disk_type = 0;
  uint32_t checksum = 0;  // as stored; Encode recomputes it
  Uuid uuid{};
  uint8_t saved_state = 0;

  DiskType type() const { return static_cast<DiskType>(disk_type); }
  std::string_view creator() const { return {creator_app.data(), creator_app.size()}; }
};

struct ParentLocator {
  uint32_t platform_code = 0;  // 'W2ku', 'W2ru', 'MacX', ... or 0 for an unused slot
  uint32_t data_space = 0;     // room reserved, in sectors (some writers store bytes; see LocatorSpaceBytes)
  uint32_t data_length = 0;    // bytes of the encoded path
  uint64_t data_offset = 0;
};
inline constexpr uint32_t kPlatformW2ku = 0x57326B75;  // absolute Windows path, UTF-16LE
inline constexpr uint32_t kPlatformW2ru = 0x57327275;  // path relative to the child, UTF-16LE
inline constexpr uint32_t kPlatformMacX = 0x4D616358;  // file:// URL, UTF-8
uint64_t LocatorSpaceBytes(const ParentLocator& locator);

struct DynamicHeader {
  uint64_t data_offset = kNoOffset;
  uint64_t table_offset = 0;
  uint32_t header_version = kFormatVersion;
  uint32_t max_table_entries = 0;
  uint32_t block_size = 2u << 20;
  uint32_t checksum = 0;
  Uuid parent_uuid{};
  uint32_t parent_timestamp = 0;
  std::array<uint8_t, 512> parent_name_utf16be{};
  std::array<ParentLocator, kLocatorCount> locators{};
};

// Ones' complement of the byte sum, the checksum field itself counted as zero.
uint32_t ComputeChecksum(std::span<const uint8_t> bytes, size_t checksum_offset);

// Decode verifies cookie and checksum and returns Corruption naming the field otherwise. `bytes` may be 511
// bytes (the old short footer) or 512.
Result<Footer> DecodeFooter(std::span<const uint8_t> bytes);
void EncodeFooter(const Footer& footer, std::span<uint8_t, kFooterSize> out);
Result<DynamicHeader> DecodeHeader(std::span<const uint8_t, kHeaderSize> bytes);
void EncodeHeader(const DynamicHeader& header, std::span<uint8_t, kHeaderSize> out);

// The virtual size: current_size, except where an image made by Virtual PC or an old qemu ("vpc ", "qemu")
// has a geometry that disagrees with it; there qemu's reading (the geometry) wins. `note` gets a sentence
// when it does.
uint64_t VirtualSize(const Footer& footer, std::string* note);

// Layout arithmetic.
inline uint64_t RoundUp(uint64_t value, uint64_t to) { return (value + to - 1) / to * to; }
inline bool IsPowerOfTwo(uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }
// Bytes of the sector bitmap in front of each block (padded to a sector).
inline uint64_t BitmapBytes(uint32_t block_size) {
  return RoundUp(RoundUp(block_size / kSectorSize, 8) / 8, kSectorSize);
}
inline uint64_t BatBytes(uint32_t entries) { return RoundUp(uint64_t{entries} * 4, kSectorSize); }
inline uint64_t BlocksFor(uint64_t size, uint32_t block_size) { return (size + block_size - 1) / block_size; }

// BAT entries are sector numbers (big-endian u32); kBatUnused marks an unallocated block.
uint32_t GetBatEntry(std::span<const uint8_t> bat, uint32_t index);
void SetBatEntry(std::span<uint8_t> bat, uint32_t index, uint32_t sector);

// Sector bitmaps (and the batmap): bit i is bit (7 - i % 8) of byte i / 8, most significant bit first.
inline bool TestBit(std::span<const uint8_t> bitmap, uint64_t bit) {
  return (bitmap[bit / 8] >> (7 - bit % 8)) & 1;
}
void SetBits(std::span<uint8_t> bitmap, uint64_t first, uint64_t count);
bool AllBitsSet(std::span<const uint8_t> bitmap, uint64_t count);

// tapdisk's batmap: a one-bit-per-block "this block is fully allocated" map behind a 512-byte header that
// sits in the sector after the BAT. Only images whose creator is "tap\0" carry one.
struct BatmapHeader {
  uint64_t batmap_offset = 0;
  uint32_t batmap_sectors = 0;
  uint32_t version = 0x00010002;
  uint32_t checksum = 0;  // ones' complement of the byte sum of the batmap itself
  uint8_t marker = 0;
};
inline constexpr std::string_view kBatmapCookie = "tdbatmap";
// NotFound when the sector holds no batmap cookie.
Result<BatmapHeader> DecodeBatmapHeader(std::span<const uint8_t, kSectorSize> bytes);
void EncodeBatmapHeader(const BatmapHeader& header, std::span<uint8_t, kSectorSize> out);
uint32_t BatmapChecksum(std::span<const uint8_t> batmap);

// Parent locators: the child-relative or absolute path a locator encodes, and the bytes for one.
Result<std::string> DecodeLocatorPath(uint32_t platform_code, std::span<const uint8_t> data);
std::string EncodeLocatorPath(uint32_t platform_code, std::string_view path);
// The parent's file name as the header stores it (UTF-16BE, NUL padded).
std::string DecodeParentName(const std::array<uint8_t, 512>& name);
void EncodeParentName(std::string_view name, std::array<uint8_t, 512>* out);

// Seconds since the VHD epoch (2000-01-01 UTC) for a Unix time.
uint32_t VhdTimestamp(int64_t unix_seconds);

}  // namespace blk::vhd
