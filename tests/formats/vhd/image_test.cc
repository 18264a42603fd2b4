// Tests of formats/vhd/image.cc and image_write.cc: the resolve layer, bitmaps written after their data, the
// batmap kept up to date, and images whose trailing footer is missing or short.
#include "formats/vhd/image.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "formats/vhd/check.h"
#include "formats/vhd/create.h"
#include "tests/formats/vhd/test_util.h"

namespace blk::vhd {
namespace {

using testing::Pattern;
using testing::ReadWholeFile;
using testing::SameBytes;
using testing::TempDir;
using testing::WriteWholeFile;

constexpr uint32_t kBlock = 64 * 1024;

std::unique_ptr<VhdImage> OpenImage(const std::string& path, bool writable) {
  Result<std::unique_ptr<FileIo>> file = PosixFile::Open(path, writable);
  EXPECT_TRUE(file.ok());
  Result<std::unique_ptr<VhdImage>> image = VhdImage::Open(std::move(*file), writable);
  EXPECT_TRUE(image.ok()) << image.status().ToString();
  return image.ok() ? std::move(*image) : nullptr;
}

TEST(ImageTest, ResolveFillsACallerArrayAndAsksForBitmaps) {
  TempDir dir;
  std::string path = dir.File("d.vhd");
  ASSERT_TRUE(CreateImage(path, CreateOptions::Dynamic(4 * kBlock, kBlock)).ok());
  {
    auto image = OpenImage(path, true);
    ASSERT_TRUE(image->Write(kBlock, Pattern(kBlock, 1)).ok());
  }
  CreateOptions no_batmap = CreateOptions::Dynamic(4 * kBlock, kBlock);
  auto image = OpenImage(path, false);
  ASSERT_TRUE(image->has_batmap());
  std::array<Piece, 4> pieces;
  // Block 0 unallocated (zeros), block 1 allocated and marked full in the batmap (one file piece), block 2
  // zeros.
  size_t count = image->Resolve(kBlock / 2, 2 * kBlock, pieces);
  ASSERT_EQ(count, 3u);
  EXPECT_EQ(pieces[0].kind, Piece::Kind::kZero);
  EXPECT_EQ(pieces[0].length, kBlock / 2);
  EXPECT_EQ(pieces[1].kind, Piece::Kind::kFile);
  EXPECT_EQ(pieces[1].length, kBlock);
  EXPECT_EQ(pieces[1].file_offset, uint64_t{image->bat_entry(1)} * 512 + image->bitmap_bytes());
  EXPECT_EQ(pieces[1].file_offset % 4096, 0u);  // new blocks' data is 4 KiB aligned
  EXPECT_EQ(pieces[2].kind, Piece::Kind::kZero);
  // A one-piece array covers a prefix only.
  EXPECT_EQ(image->Resolve(0, 2 * kBlock, std::span(pieces).first(1)), 1u);
  EXPECT_EQ(pieces[0].length, kBlock);

  // Without a batmap the resolver needs the bitmap first.
  std::string plain = dir.File("plain.vhd");
  no_batmap.batmap = false;
  ASSERT_TRUE(CreateImage(plain, no_batmap).ok());
  {
    auto writer = OpenImage(plain, true);
    ASSERT_TRUE(writer->Write(kBlock, Pattern(kBlock, 1)).ok());
  }
  auto reader = OpenImage(plain, false);
  EXPECT_FALSE(reader->has_batmap());
  count = reader->Resolve(kBlock, kBlock, pieces);
  ASSERT_EQ(count, 1u);
  EXPECT_EQ(pieces[0].kind, Piece::Kind::kNeedBitmap);
  EXPECT_EQ(pieces[0].block, 1u);
  ASSERT_TRUE(reader->LoadBitmap(1).ok());
  count = reader->Resolve(kBlock, kBlock, pieces);
  ASSERT_EQ(count, 1u);
  EXPECT_EQ(pieces[0].kind, Piece::Kind::kFile);
}

// A block as tapdisk leaves it after a partial write: bits set only for the written sectors, zeros elsewhere.
TEST(ImageTest, WritingClearSectorsSetsTheirBitsAfterTheData) {
  TempDir dir;
  std::string path = dir.File("p.vhd");
  CreateOptions options = CreateOptions::Dynamic(4 * kBlock, kBlock);
  ASSERT_TRUE(CreateImage(path, options).ok());
  uint64_t bitmap_at;
  {
    auto image = OpenImage(path, true);
    ASSERT_TRUE(image->Write(0, std::vector<uint8_t>(kBlock, 0)).ok());
    bitmap_at = uint64_t{image->bat_entry(0)} * 512;
  }
  // Clear every bit but the first sector's, and clear the batmap (fixing its checksum).
  std::vector<uint8_t> bytes = ReadWholeFile(path);
  std::memset(bytes.data() + bitmap_at, 0, 16);
  bytes[bitmap_at] = 0x80;
  {
    auto image = OpenImage(path, false);
    ASSERT_TRUE(image->has_batmap());
  }
  uint64_t batmap_header_at = 1536 + 512;
  Result<BatmapHeader> header =
      DecodeBatmapHeader(std::span<const uint8_t, 512>(bytes.data() + batmap_header_at, 512));
  ASSERT_TRUE(header.ok());
  bytes[header->batmap_offset] = 0;
  header->checksum =
      BatmapChecksum(std::span(bytes).subspan(header->batmap_offset, header->batmap_sectors * 512));
  EncodeBatmapHeader(*header, std::span<uint8_t, 512>(bytes.data() + batmap_header_at, 512));
  WriteWholeFile(path, bytes);

  auto image = OpenImage(path, true);
  EXPECT_FALSE(image->BatmapBit(0));
  ASSERT_TRUE(image->LoadBitmap(0).ok());
  Result<BlockWritePlan> plan = image->PlanWrite(4096, 4096);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->action, BlockWritePlan::Action::kWriteThenBitmap);
  EXPECT_EQ(image->PlanWrite(0, 512)->action, BlockWritePlan::Action::kInPlace);
  EXPECT_EQ(image->PlanWrite(kBlock * 2, 512)->action, BlockWritePlan::Action::kAllocate);
  EXPECT_FALSE(image->PlanWrite(kBlock - 512, 1024).ok());  // crosses a block

  ASSERT_TRUE(image->Write(4096, Pattern(4096, 9)).ok());
  Result<std::span<const uint8_t>> bits = image->Bitmap(0);
  ASSERT_TRUE(bits.ok());
  EXPECT_EQ((*bits)[0], 0x80);
  EXPECT_EQ((*bits)[1], 0xFF);  // sectors 8-15
  EXPECT_FALSE(image->BatmapBit(0));
  // Filling the rest makes the block full: the batmap bit follows.
  ASSERT_TRUE(image->Write(512, std::vector<uint8_t>(3584, 0)).ok());
  ASSERT_TRUE(image->Write(8192, std::vector<uint8_t>(kBlock - 8192, 0)).ok());
  EXPECT_TRUE(image->BatmapBit(0));
  ASSERT_TRUE(image->Close().ok());
  image.reset();
  CheckReport report = CheckImage(path);
  EXPECT_TRUE(report.ok()) << report.problems[0];
  auto reopened = OpenImage(path, false);
  EXPECT_TRUE(reopened->BatmapBit(0));
  EXPECT_TRUE(reopened->notes().empty());
}

TEST(ImageTest, CheckFindsDataBehindClearBitsAndBatmapLies) {
  TempDir dir;
  std::string path = dir.File("c.vhd");
  ASSERT_TRUE(CreateImage(path, CreateOptions::Dynamic(4 * kBlock, kBlock)).ok());
  uint64_t bitmap_at;
  {
    auto image = OpenImage(path, true);
    ASSERT_TRUE(image->Write(0, Pattern(kBlock, 3)).ok());
    bitmap_at = uint64_t{image->bat_entry(0)} * 512;
  }
  std::vector<uint8_t> bytes = ReadWholeFile(path);
  bytes[bitmap_at + 1] = 0;  // sectors 8-15 now "absent" though their data is not zero; the batmap says full
  WriteWholeFile(path, bytes);
  CheckReport report = CheckImage(path);
  ASSERT_EQ(report.problems.size(), 2u);
  // Damage in a parent is found from the child too.
  std::string child = dir.File("child.vhd");
  ASSERT_TRUE(CreateImage(child, CreateOptions::Differencing(path)).ok());
  EXPECT_EQ(CheckImage(child).problems.size(), 2u);
  EXPECT_NE(report.problems[0].find("batmap"), std::string::npos) << report.problems[0];
  EXPECT_NE(report.problems[1].find("sector 8"), std::string::npos) << report.problems[1];
}

TEST(ImageTest, AStaleBatmapIsIgnoredAndRewrittenEmpty) {
  TempDir dir;
  std::string path = dir.File("s.vhd");
  ASSERT_TRUE(CreateImage(path, CreateOptions::Dynamic(4 * kBlock, kBlock)).ok());
  {
    auto image = OpenImage(path, true);
    ASSERT_TRUE(image->Write(0, Pattern(kBlock, 3)).ok());
  }
  std::vector<uint8_t> bytes = ReadWholeFile(path);
  bytes[1536 + 512 + 24] ^= 0xFF;  // the batmap checksum
  WriteWholeFile(path, bytes);
  {
    auto reader = OpenImage(path, false);
    EXPECT_FALSE(reader->BatmapBit(0));
    ASSERT_EQ(reader->notes().size(), 1u);
    EXPECT_NE(reader->notes()[0].find("batmap checksum"), std::string::npos);
  }
  { auto writer = OpenImage(path, true); }
  auto reader = OpenImage(path, false);
  EXPECT_TRUE(reader->notes().empty());
  std::vector<uint8_t> data(kBlock);
  ASSERT_TRUE(reader->Read(0, data).ok());
  EXPECT_TRUE(SameBytes(data, Pattern(kBlock, 3)));
}

TEST(ImageTest, AMissingTrailingFooterIsRecoveredFromTheCopy) {
  TempDir dir;
  std::string path = dir.File("m.vhd");
  ASSERT_TRUE(CreateImage(path, CreateOptions::Dynamic(4 * kBlock, kBlock)).ok());
  {
    auto image = OpenImage(path, true);
    ASSERT_TRUE(image->Write(0, Pattern(kBlock, 4)).ok());
  }
  uint64_t size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size - 512);
  {
    auto reader = OpenImage(path, false);
    ASSERT_FALSE(reader->notes().empty());
    EXPECT_NE(reader->notes()[0].find("copy at offset 0"), std::string::npos);
  }
  {
    auto writer = OpenImage(path, true);
    ASSERT_TRUE(writer->Close().ok());
  }
  EXPECT_EQ(std::filesystem::file_size(path), size);
  auto reader = OpenImage(path, false);
  EXPECT_TRUE(reader->notes().empty());
  EXPECT_TRUE(CheckImage(path).ok());
}

TEST(ImageTest, AnOld511ByteFooterIsReadAndRewrittenWhole) {
  TempDir dir;
  std::string path = dir.File("o.vhd");
  ASSERT_TRUE(CreateImage(path, CreateOptions::Fixed(1 << 20)).ok());
  {
    auto image = OpenImage(path, true);
    ASSERT_TRUE(image->Write(0, Pattern(4096, 5)).ok());
  }
  std::filesystem::resize_file(path, (1 << 20) + 511);
  {
    auto reader = OpenImage(path, false);
    EXPECT_EQ(reader->virtual_size(), 1u << 20);
    std::vector<uint8_t> data(4096);
    ASSERT_TRUE(reader->Read(0, data).ok());
    EXPECT_TRUE(SameBytes(data, Pattern(4096, 5)));
  }
  { auto writer = OpenImage(path, true); }
  EXPECT_EQ(std::filesystem::file_size(path), (1u << 20) + 512);
  EXPECT_TRUE(OpenImage(path, false)->notes().empty());
}

// The allocation steps as an engine with its own I/O would run them, on a differencing child (parent fill
// included).
TEST(ImageTest, AllocationStepsCanBeDrivenFromOutside) {
  TempDir dir;
  std::string base = dir.File("base.vhd");
  ASSERT_TRUE(CreateImage(base, CreateOptions::Dynamic(4 * kBlock, kBlock)).ok());
  {
    auto image = OpenImage(base, true);
    ASSERT_TRUE(image->Write(kBlock, Pattern(kBlock, 1)).ok());
  }
  std::string child = dir.File("child.vhd");
  ASSERT_TRUE(CreateImage(child, CreateOptions::Differencing(base)).ok());
  auto parent = OpenImage(base, false);
  auto image = OpenImage(child, true);
  image->set_parent(parent.get());

  std::vector<uint8_t> data = Pattern(1024, 2);
  Result<BlockWritePlan> plan = image->PlanWrite(kBlock + 2048, data.size());
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->action, BlockWritePlan::Action::kAllocate);
  ASSERT_TRUE(image->NeedsParentFill(*plan));
  std::vector<uint8_t> block(image->new_block_bytes());
  ASSERT_TRUE(parent->Read(kBlock, std::span(block).subspan(image->bitmap_bytes(), kBlock)).ok());
  image->BuildNewBlock(*plan, data, block);
  FileIo& file = image->file();
  ASSERT_TRUE(file.WriteAt(plan->new_footer_offset, image->EncodedFooter()).ok());
  ASSERT_TRUE(file.WriteAt(plan->block_offset, block).ok());
  ASSERT_TRUE(file.Sync().ok());
  ASSERT_TRUE(file.WriteAt(image->BatSectorOffset(*plan), image->BatSector(*plan)).ok());
  ASSERT_TRUE(file.Sync().ok());
  image->CommitAllocation(*plan);
  ASSERT_TRUE(image->SetBatmapBit(plan->block).ok());
  EXPECT_EQ(image->PlanWrite(kBlock, 512)->action, BlockWritePlan::Action::kInPlace);
  ASSERT_TRUE(image->Close().ok());
  image.reset();

  std::vector<uint8_t> expected = Pattern(kBlock, 1);
  std::copy(data.begin(), data.end(), expected.begin() + 2048);
  auto reread = OpenImage(child, false);
  reread->set_parent(parent.get());
  std::array<Piece, 2> pieces;
  ASSERT_EQ(reread->Resolve(kBlock, kBlock, pieces), 1u);
  EXPECT_EQ(pieces[0].kind, Piece::Kind::kFile);  // the whole block is the child's now
  std::vector<uint8_t> got(kBlock);
  ASSERT_TRUE(reread->Read(kBlock, got).ok());
  EXPECT_TRUE(SameBytes(got, expected));
  EXPECT_TRUE(CheckImage(child).ok());
}

}  // namespace
}  // namespace blk::vhd
