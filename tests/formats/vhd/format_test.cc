// Tests of formats/vhd/format.cc and locator.cc: codecs round-trip, checksums catch damage, bit order,
// geometry, the virtual-size rule, locator paths.
#include "formats/vhd/format.h"

#include <gtest/gtest.h>

#include <cstring>

namespace blk::vhd {
namespace {

Footer SampleFooter() {
  Footer footer;
  footer.data_offset = 512;
  footer.timestamp = 12345;
  footer.creator_app = {'b', 'k', 'b', 'd'};
  footer.creator_version = 0x00010000;
  footer.creator_os = 0x5769326B;
  footer.original_size = 64ull << 20;
  footer.current_size = 64ull << 20;
  footer.geometry = GeometryForSectors(footer.current_size / 512);
  footer.disk_type = 3;
  for (size_t i = 0; i < footer.uuid.size(); ++i) footer.uuid[i] = static_cast<uint8_t>(i * 7 + 1);
  return footer;
}

TEST(FormatTest, FooterRoundTripsBigEndianWithChecksum) {
  Footer footer = SampleFooter();
  std::array<uint8_t, kFooterSize> bytes;
  EncodeFooter(footer, bytes);
  EXPECT_EQ(std::memcmp(bytes.data(), "conectix", 8), 0);
  // current_size is big-endian at offset 48: 64 MiB = 0x04000000.
  EXPECT_EQ(bytes[48 + 4], 0x04);
  EXPECT_EQ(bytes[48 + 7], 0x00);
  EXPECT_EQ(bytes[63], 3);  // disk type, last byte of a big-endian u32
  Result<Footer> decoded = DecodeFooter(bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->current_size, footer.current_size);
  EXPECT_EQ(decoded->data_offset, 512u);
  EXPECT_EQ(decoded->uuid, footer.uuid);
  EXPECT_EQ(decoded->geometry, footer.geometry);
  EXPECT_EQ(decoded->creator(), "bkbd");
  EXPECT_EQ(decoded->checksum, ComputeChecksum(bytes, 64));
}

TEST(FormatTest, FooterDamageIsRefusedWithTheReason) {
  std::array<uint8_t, kFooterSize> bytes;
  EncodeFooter(SampleFooter(), bytes);
  auto damaged = bytes;
  damaged[50] ^= 1;
  Result<Footer> bad_sum = DecodeFooter(damaged);
  ASSERT_FALSE(bad_sum.ok());
  EXPECT_EQ(bad_sum.status().code(), Status::Code::kCorruption);
  EXPECT_NE(bad_sum.status().message().find("checksum"), std::string::npos);

  damaged = bytes;
  damaged[0] = 'X';
  EXPECT_NE(DecodeFooter(damaged).status().message().find("cookie"), std::string::npos);

  Footer wrong_type = SampleFooter();
  wrong_type.disk_type = 5;
  EncodeFooter(wrong_type, damaged);
  EXPECT_EQ(DecodeFooter(damaged).status().code(), Status::Code::kNotSupported);
}

TEST(FormatTest, OldShortFooterDecodes) {
  std::array<uint8_t, kFooterSize> bytes;
  EncodeFooter(SampleFooter(), bytes);
  // The last byte is reserved (zero), so the 511-byte form has the same checksum.
  Result<Footer> decoded = DecodeFooter(std::span<const uint8_t>(bytes).first(kOldFooterSize));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->current_size, 64ull << 20);
  EXPECT_FALSE(DecodeFooter(std::span<const uint8_t>(bytes).first(100)).ok());
}

TEST(FormatTest, HeaderRoundTripsLocatorsAndParentName) {
  DynamicHeader header;
  header.table_offset = 1536;
  header.max_table_entries = 32;
  header.block_size = 2u << 20;
  header.parent_uuid[3] = 9;
  header.parent_timestamp = 777;
  EncodeParentName("parent-ü.vhd", &header.parent_name_utf16be);
  header.locators[1] = ParentLocator{kPlatformW2ru, 512, 30, 4096};
  std::array<uint8_t, kHeaderSize> bytes;
  EncodeHeader(header, bytes);
  EXPECT_EQ(std::memcmp(bytes.data(), "cxsparse", 8), 0);
  Result<DynamicHeader> decoded = DecodeHeader(bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->table_offset, 1536u);
  EXPECT_EQ(decoded->max_table_entries, 32u);
  EXPECT_EQ(decoded->parent_uuid, header.parent_uuid);
  EXPECT_EQ(decoded->locators[1].platform_code, kPlatformW2ru);
  EXPECT_EQ(decoded->locators[1].data_offset, 4096u);
  EXPECT_EQ(DecodeParentName(decoded->parent_name_utf16be), "parent-ü.vhd");
  // UTF-16BE: 'p' is 0x00 0x70.
  EXPECT_EQ(bytes[64], 0x00);
  EXPECT_EQ(bytes[65], 'p');

  bytes[30] ^= 0xFF;
  EXPECT_NE(DecodeHeader(bytes).status().message().find("checksum"), std::string::npos);
}

TEST(FormatTest, BitmapsAreMostSignificantBitFirst) {
  std::array<uint8_t, 4> bitmap{};
  SetBits(bitmap, 0, 1);
  EXPECT_EQ(bitmap[0], 0x80);
  SetBits(bitmap, 7, 1);
  EXPECT_EQ(bitmap[0], 0x81);
  SetBits(bitmap, 9, 10);  // bits 9..18
  EXPECT_EQ(bitmap[1], 0x7F);
  EXPECT_EQ(bitmap[2], 0xE0);
  EXPECT_TRUE(TestBit(bitmap, 18));
  EXPECT_FALSE(TestBit(bitmap, 19));
  EXPECT_FALSE(TestBit(bitmap, 8));
  EXPECT_FALSE(AllBitsSet(bitmap, 19));
  SetBits(bitmap, 1, 6);
  SetBits(bitmap, 8, 1);
  EXPECT_TRUE(AllBitsSet(bitmap, 19));
  EXPECT_FALSE(AllBitsSet(bitmap, 20));
}

TEST(FormatTest, BatEntriesAreBigEndianSectors) {
  std::array<uint8_t, 8> bat;
  bat.fill(0xFF);
  EXPECT_EQ(GetBatEntry(bat, 1), kBatUnused);
  SetBatEntry(bat, 1, 0x01020304);
  EXPECT_EQ(bat[4], 0x01);
  EXPECT_EQ(bat[7], 0x04);
  EXPECT_EQ(GetBatEntry(bat, 1), 0x01020304u);
  EXPECT_EQ(GetBatEntry(bat, 0), kBatUnused);
}

TEST(FormatTest, LayoutArithmetic) {
  EXPECT_EQ(BitmapBytes(2u << 20), 512u);   // 4096 sectors, 512 bytes of bits
  EXPECT_EQ(BitmapBytes(4096), 512u);       // 8 sectors, one byte, padded to a sector
  EXPECT_EQ(BitmapBytes(8u << 20), 2048u);  // 16384 sectors
  EXPECT_EQ(BatBytes(1), 512u);
  EXPECT_EQ(BatBytes(129), 1024u);
  EXPECT_EQ(BlocksFor((2u << 20) * 3 + 512, 2u << 20), 4u);
}

TEST(FormatTest, GeometryFollowsTheSpecificationTable) {
  // 10 MiB: 17 sectors per track, at least 4 heads.
  Geometry small = GeometryForSectors(20480);
  EXPECT_EQ(small, (Geometry{301, 4, 17}));
  EXPECT_LE(small.sectors(), 20480u);
  // Beyond 65535*16*63 sectors the geometry uses 255 sectors per track, and it caps at the maximum.
  Geometry huge = GeometryForSectors(200ull << 21);
  EXPECT_EQ(huge, (Geometry{65535, 16, 255}));
  EXPECT_EQ(huge.sectors(), kMaxGeometrySectors);
  Geometry mid = GeometryForSectors(1ull << 21);  // 1 GiB
  EXPECT_EQ(mid.sectors_per_track, 63);
  EXPECT_EQ(mid.heads, 16);
  EXPECT_EQ(mid.cylinders, (1u << 21) / 63 / 16);
}

TEST(FormatTest, VirtualSizeFollowsQemuOnlyForGeometryCreators) {
  Footer footer = SampleFooter();
  footer.current_size = 10u << 20;
  footer.geometry = Geometry{301, 4, 17};
  std::string note;
  EXPECT_EQ(VirtualSize(footer, &note), 10u << 20);  // "bkbd": current_size
  EXPECT_TRUE(note.empty());
  footer.creator_app = {'q', 'e', 'm', 'u'};
  EXPECT_EQ(VirtualSize(footer, &note), 301u * 4 * 17 * 512);
  EXPECT_NE(note.find("geometry"), std::string::npos);
  footer.creator_app = {'v', 'p', 'c', ' '};
  EXPECT_EQ(VirtualSize(footer, nullptr), 301u * 4 * 17 * 512);
  // A maxed-out geometry says nothing; current_size wins.
  footer.geometry = Geometry{65535, 16, 255};
  footer.current_size = 200ull << 30;
  EXPECT_EQ(VirtualSize(footer, nullptr), 200ull << 30);
  footer.creator_app = {'q', 'e', 'm', '2'};
  footer.geometry = Geometry{301, 4, 17};
  EXPECT_EQ(VirtualSize(footer, nullptr), 200ull << 30);
}

TEST(FormatTest, LocatorPathsRoundTrip) {
  std::string w2ru = EncodeLocatorPath(kPlatformW2ru, "./dir/base.vhd");
  // UTF-16LE with backslashes: '.' 0x00 '\\' 0x00 ...
  ASSERT_GE(w2ru.size(), 4u);
  EXPECT_EQ(w2ru[0], '.');
  EXPECT_EQ(w2ru[1], '\0');
  EXPECT_EQ(w2ru[2], '\\');
  auto bytes = [](const std::string& s) {
    return std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  Result<std::string> back = DecodeLocatorPath(kPlatformW2ru, bytes(w2ru));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, "./dir/base.vhd");
  std::string macx = EncodeLocatorPath(kPlatformMacX, "/srv/images/base.vhd");
  EXPECT_EQ(macx, "file:///srv/images/base.vhd");
  EXPECT_EQ(DecodeLocatorPath(kPlatformMacX, bytes(macx)).value(), "/srv/images/base.vhd");
  EXPECT_EQ(DecodeLocatorPath(kPlatformW2ku, bytes(EncodeLocatorPath(kPlatformW2ku, "/a/ü.vhd"))).value(),
            "/a/ü.vhd");

  EXPECT_FALSE(DecodeLocatorPath(0x12345678, bytes(macx)).ok());
  EXPECT_FALSE(DecodeLocatorPath(kPlatformW2ku, bytes(std::string("a\0b", 3))).ok());  // odd length
  std::string lone_surrogate("\x00\xD8", 2);
  EXPECT_FALSE(DecodeLocatorPath(kPlatformW2ku, bytes(lone_surrogate)).ok());
  EXPECT_FALSE(DecodeLocatorPath(kPlatformMacX, bytes(std::string())).ok());
}

TEST(FormatTest, BatmapHeaderRoundTrips) {
  BatmapHeader header{4096, 2, 0x00010002, 0, 0};
  std::array<uint8_t, 8> map{0x80, 0, 0, 0, 0, 0, 0, 0};
  header.checksum = BatmapChecksum(map);
  EXPECT_EQ(header.checksum, ~uint32_t{0x80});
  std::array<uint8_t, kSectorSize> bytes;
  EncodeBatmapHeader(header, bytes);
  Result<BatmapHeader> decoded = DecodeBatmapHeader(bytes);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->batmap_offset, 4096u);
  EXPECT_EQ(decoded->batmap_sectors, 2u);
  EXPECT_EQ(decoded->checksum, header.checksum);
  bytes[0] = 0;
  EXPECT_EQ(DecodeBatmapHeader(bytes).status().code(), Status::Code::kNotFound);
}

}  // namespace
}  // namespace blk::vhd
