// Fuzz target: the VHD codecs of formats/vhd/format.h on file-supplied bytes: footers (512 and the old 511
// bytes), dynamic headers and the parent name, parent locators of every platform, BAT entries and sector
// bitmaps, tapdisk's batmap header. Checks that whatever decodes re-encodes to bytes that decode to the same
// thing, and that the bitmap helpers agree with each other.
//
// Input: one byte choosing the structure, then its bytes.
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "formats/vhd/format.h"
#include "tests/fuzz/fuzz_input.h"

namespace blk::vhd {
namespace {

void FuzzFooter(fuzz::FuzzInput& input) {
  bool old_size = input.Bool();
  std::vector<uint8_t> bytes(old_size ? kOldFooterSize : kFooterSize);
  input.Fill(bytes);
  Result<Footer> footer = DecodeFooter(bytes);
  if (!footer.ok()) {
    FUZZ_CHECK(footer.status().code() == Status::Code::kCorruption ||
               footer.status().code() == Status::Code::kNotSupported);
    return;
  }
  std::array<uint8_t, kFooterSize> encoded;
  EncodeFooter(*footer, encoded);
  Result<Footer> again = DecodeFooter(encoded);
  FUZZ_CHECK(again.ok());
  std::array<uint8_t, kFooterSize> reencoded;
  EncodeFooter(*again, reencoded);
  FUZZ_CHECK(encoded == reencoded);
  // The first 85 bytes hold every field; the rest of a footer is reserved.
  FUZZ_CHECK(std::memcmp(encoded.data(), bytes.data(), 64) == 0);
  FUZZ_CHECK(std::memcmp(encoded.data() + 68, bytes.data() + 68, 17) == 0);
  std::string note;
  uint64_t size = VirtualSize(*footer, &note);
  FUZZ_CHECK(size == footer->current_size || size == footer->geometry.sectors() * kSectorSize);
  Geometry geometry = GeometryForSectors(size / kSectorSize);
  FUZZ_CHECK(geometry.sectors() <= kMaxGeometrySectors);
}

void FuzzHeader(fuzz::FuzzInput& input) {
  std::array<uint8_t, kHeaderSize> bytes;
  input.Fill(bytes);
  Result<DynamicHeader> header = DecodeHeader(bytes);
  if (!header.ok()) return;
  std::array<uint8_t, kHeaderSize> encoded;
  EncodeHeader(*header, encoded);
  Result<DynamicHeader> again = DecodeHeader(encoded);
  FUZZ_CHECK(again.ok());
  std::array<uint8_t, kHeaderSize> reencoded;
  EncodeHeader(*again, reencoded);
  FUZZ_CHECK(encoded == reencoded);
  for (const ParentLocator& locator : header->locators) {
    uint64_t space = LocatorSpaceBytes(locator);
    FUZZ_CHECK(space == locator.data_space || space == uint64_t{locator.data_space} * kSectorSize);
  }
  // A parent name that fits comes back unchanged through the header's UTF-16BE field.
  std::string name = DecodeParentName(header->parent_name_utf16be);
  FUZZ_CHECK(name.find('\0') == std::string::npos);
  if (name.size() < 255) {
    std::array<uint8_t, 512> field;
    EncodeParentName(name, &field);
    FUZZ_CHECK(DecodeParentName(field) == name);
  }
}

void FuzzLocator(fuzz::FuzzInput& input) {
  static constexpr uint32_t kCodes[] = {kPlatformW2ku, kPlatformW2ru, kPlatformMacX, 0, 0x57693272};
  uint8_t choice = input.U8();
  uint32_t code = choice < 250 ? kCodes[choice % 5] : input.U32();
  std::span<const uint8_t> rest = input.Rest();
  std::vector<uint8_t> data(rest.begin(), rest.end());  // exactly the locator's bytes, for ASan
  Result<std::string> path = DecodeLocatorPath(code, data);
  if (!path.ok()) return;
  FUZZ_CHECK(!path->empty());
  FUZZ_CHECK(path->find('\0') == std::string::npos);
  std::string encoded = EncodeLocatorPath(code, *path);
  Result<std::string> again =
      DecodeLocatorPath(code, std::span(reinterpret_cast<const uint8_t*>(encoded.data()), encoded.size()));
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(*again == *path);
}

void FuzzBatAndBitmaps(fuzz::FuzzInput& input) {
  uint32_t entries = 1 + input.U8();
  std::vector<uint8_t> bat(size_t{entries} * 4);
  input.Fill(bat);
  uint32_t index = input.U32() % entries;
  uint32_t sector = input.U32();
  uint32_t neighbour = index + 1 < entries ? GetBatEntry(bat, index + 1) : 0;
  SetBatEntry(bat, index, sector);
  FUZZ_CHECK(GetBatEntry(bat, index) == sector);
  if (index + 1 < entries) FUZZ_CHECK(GetBatEntry(bat, index + 1) == neighbour);

  std::vector<uint8_t> bitmap(1 + input.U8() % 64);
  input.Fill(bitmap);
  uint64_t bits = bitmap.size() * 8;
  uint64_t first = input.U16() % bits;
  uint64_t count = input.U16() % (bits - first + 1);
  std::vector<uint8_t> before = bitmap;
  SetBits(bitmap, first, count);
  for (uint64_t bit = 0; bit < bits; ++bit) {
    bool in_range = bit >= first && bit < first + count;
    FUZZ_CHECK(TestBit(bitmap, bit) == (in_range || TestBit(before, bit)));
  }
  uint64_t prefix = input.U16() % (bits + 1);
  bool all = true;
  for (uint64_t bit = 0; bit < prefix; ++bit) all = all && TestBit(bitmap, bit);
  FUZZ_CHECK(AllBitsSet(bitmap, prefix) == all);
}

void FuzzBatmapHeader(fuzz::FuzzInput& input) {
  std::array<uint8_t, kSectorSize> bytes;
  input.Fill(bytes);
  Result<BatmapHeader> header = DecodeBatmapHeader(bytes);
  if (!header.ok()) return;
  std::array<uint8_t, kSectorSize> encoded;
  EncodeBatmapHeader(*header, encoded);
  Result<BatmapHeader> again = DecodeBatmapHeader(encoded);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->batmap_offset == header->batmap_offset &&
             again->batmap_sectors == header->batmap_sectors && again->version == header->version &&
             again->checksum == header->checksum && again->marker == header->marker);
}

}  // namespace
}  // namespace blk::vhd

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blk::vhd;
  blk::fuzz::FuzzInput input(data, size);
  switch (input.U8() % 5) {
    case 0:
      FuzzFooter(input);
      break;
    case 1:
      FuzzHeader(input);
      break;
    case 2:
      FuzzLocator(input);
      break;
    case 3:
      FuzzBatAndBitmaps(input);
      break;
    default:
      FuzzBatmapHeader(input);
      break;
  }
  return 0;
}
