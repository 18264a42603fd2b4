// Hostile and damaged images, made here by patching good ones: each must be refused with a message that names
// the file and the problem, never followed.
#include <gtest/gtest.h>

#include <filesystem>

#include "formats/vhd/chain.h"
#include "formats/vhd/create.h"
#include "formats/vhd/image.h"
#include "tests/formats/vhd/test_util.h"

namespace blk::vhd {
namespace {

using testing::ReadWholeFile;
using testing::TempDir;
using testing::WriteWholeFile;

constexpr uint32_t kBlock = 64 * 1024;

Result<std::unique_ptr<VhdImage>> OpenImage(const std::string& path) {
  Result<std::unique_ptr<FileIo>> file = PosixFile::Open(path, false);
  if (!file.ok()) return file.status();
  return VhdImage::Open(std::move(*file), false);
}

// Creates a dynamic image of four blocks with blocks 0 and 2 allocated.
std::string MakeDynamic(const TempDir& dir, const std::string& name = "d.vhd") {
  std::string path = dir.File(name);
  EXPECT_TRUE(CreateImage(path, CreateOptions::Dynamic(4 * kBlock, kBlock)).ok());
  Result<std::unique_ptr<FileIo>> file = PosixFile::Open(path, true);
  EXPECT_TRUE(file.ok());
  Result<std::unique_ptr<VhdImage>> image = VhdImage::Open(std::move(*file), true);
  EXPECT_TRUE(image.ok());
  std::vector<uint8_t> data = testing::Pattern(4096, 1);
  EXPECT_TRUE((*image)->Write(0, data).ok());
  EXPECT_TRUE((*image)->Write(2 * kBlock + 8192, data).ok());
  EXPECT_TRUE((*image)->Close().ok());
  return path;
}

void PatchHeader(const std::string& path, const std::function<void(DynamicHeader*)>& change) {
  std::vector<uint8_t> bytes = ReadWholeFile(path);
  Result<DynamicHeader> header =
      DecodeHeader(std::span<const uint8_t, kHeaderSize>(bytes.data() + 512, kHeaderSize));
  ASSERT_TRUE(header.ok());
  change(&*header);
  EncodeHeader(*header, std::span<uint8_t, kHeaderSize>(bytes.data() + 512, kHeaderSize));
  WriteWholeFile(path, bytes);
}

void PatchFooters(const std::string& path, const std::function<void(Footer*)>& change) {
  std::vector<uint8_t> bytes = ReadWholeFile(path);
  for (size_t at : {size_t{0}, bytes.size() - kFooterSize}) {
    Result<Footer> footer = DecodeFooter(std::span<const uint8_t>(bytes).subspan(at, kFooterSize));
    if (!footer.ok()) continue;
    change(&*footer);
    EncodeFooter(*footer, std::span<uint8_t, kFooterSize>(bytes.data() + at, kFooterSize));
  }
  WriteWholeFile(path, bytes);
}

void PatchBatEntry(const std::string& path, uint32_t block, uint32_t sector) {
  std::vector<uint8_t> bytes = ReadWholeFile(path);
  SetBatEntry(std::span(bytes).subspan(1536), block, sector);
  WriteWholeFile(path, bytes);
}

// Expects the open to fail with a message naming the file and containing `words`.
void ExpectRefused(const std::string& path, const std::string& words) {
  Result<std::unique_ptr<VhdImage>> image = OpenImage(path);
  ASSERT_FALSE(image.ok()) << "opened a damaged image; expected: " << words;
  const std::string& message = image.status().message();
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find(words), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

TEST(CorruptionTest, TheUndamagedImageOpens) {
  TempDir dir;
  std::string path = MakeDynamic(dir);
  Result<std::unique_ptr<VhdImage>> image = OpenImage(path);
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_TRUE((*image)->notes().empty());
}

TEST(CorruptionTest, BadChecksumsAreRefused) {
  TempDir dir;
  std::string path = MakeDynamic(dir);
  std::vector<uint8_t> bytes = ReadWholeFile(path);
  bytes[48] ^= 0x10;                       // the copy's current_size
  bytes[bytes.size() - 512 + 48] ^= 0x10;  // the footer's
  WriteWholeFile(path, bytes);
  ExpectRefused(path, "checksum");

  std::string header_path = MakeDynamic(dir, "h.vhd");
  bytes = ReadWholeFile(header_path);
  bytes[512 + 28] ^= 0x01;  // max_table_entries without fixing the checksum
  WriteWholeFile(header_path, bytes);
  ExpectRefused(header_path, "dynamic header checksum");
}

TEST(CorruptionTest, HugeOrShortTablesAreRefused) {
  TempDir dir;
  std::string huge = MakeDynamic(dir, "huge.vhd");
  PatchHeader(huge, [](DynamicHeader* h) { h->max_table_entries = 0xFFFFFFFF; });
  ExpectRefused(huge, "reaches past the end of the file");

  std::string small = MakeDynamic(dir, "small.vhd");
  PatchHeader(small, [](DynamicHeader* h) { h->max_table_entries = 3; });
  ExpectRefused(small, "cannot map");

  std::string far = MakeDynamic(dir, "far.vhd");
  PatchHeader(far, [](DynamicHeader* h) { h->table_offset = ~uint64_t{0} - 4; });  // overflows when added to
  ExpectRefused(far, "reaches past the end of the file");

  std::string on_header = MakeDynamic(dir, "onheader.vhd");
  PatchHeader(on_header, [](DynamicHeader* h) { h->table_offset = 1024; });
  ExpectRefused(on_header, "overlaps");
}

TEST(CorruptionTest, TablesTooLargeToHoldAreRefused) {
  TempDir dir;
  // 2000 GiB in 512-byte blocks: four billion BAT entries; the file is made large (sparse) enough to hold
  // them.
  std::string path = MakeDynamic(dir, "tiny-blocks.vhd");
  PatchHeader(path, [](DynamicHeader* h) {
    h->block_size = 512;
    h->max_table_entries = 0xFFFFFFFF;
  });
  PatchFooters(path, [](Footer* f) { f->current_size = 2000ull << 30; });
  std::vector<uint8_t> bytes = ReadWholeFile(path);
  std::vector<uint8_t> footer(bytes.end() - 512, bytes.end());
  std::filesystem::resize_file(path, 20ull << 30);
  Result<std::unique_ptr<FileIo>> file = PosixFile::Open(path, true);
  ASSERT_TRUE(file.ok());
  ASSERT_TRUE((*file)->WriteAt((20ull << 30) - 512, footer).ok());
  file->reset();
  ExpectRefused(path, "blocks this implementation maps");
}

TEST(CorruptionTest, BadBlockSizesAreRefused) {
  TempDir dir;
  for (uint32_t size : {0u, 3000u, 256u, 1u << 30}) {
    std::string path = MakeDynamic(dir, "bs" + std::to_string(size) + ".vhd");
    PatchHeader(path, [&](DynamicHeader* h) { h->block_size = size; });
    ExpectRefused(path, "block size");
  }
}

TEST(CorruptionTest, BadBatEntriesAreRefused) {
  TempDir dir;
  std::string past = MakeDynamic(dir, "past.vhd");
  PatchBatEntry(past, 1, 0x00FFFFFF);
  ExpectRefused(past, "past the end of the file");

  std::string into_header = MakeDynamic(dir, "into.vhd");
  PatchBatEntry(into_header, 1, 1);  // sector 1: the dynamic header
  ExpectRefused(into_header, "inside the metadata");

  std::string overlap = MakeDynamic(dir, "overlap.vhd");
  Result<std::unique_ptr<VhdImage>> good = OpenImage(overlap);
  ASSERT_TRUE(good.ok());
  uint32_t first = (*good)->bat_entry(0);
  good->reset();
  PatchBatEntry(overlap, 3, first + 8);  // block 3 starts 4 KiB into block 0
  ExpectRefused(overlap, "overlap");
}

TEST(CorruptionTest, BadHeaderOffsetsAreRefused) {
  TempDir dir;
  std::string path = MakeDynamic(dir);
  PatchFooters(path, [](Footer* f) { f->data_offset = ~uint64_t{0} - 100; });
  ExpectRefused(path, "dynamic header offset");
  std::string zero = MakeDynamic(dir, "zero.vhd");
  PatchFooters(zero, [](Footer* f) { f->data_offset = 0; });
  ExpectRefused(zero, "dynamic header offset");
}

TEST(CorruptionTest, BadSizesAreRefused) {
  TempDir dir;
  std::string odd = MakeDynamic(dir, "odd.vhd");
  PatchFooters(odd, [](Footer* f) { f->current_size = 4 * kBlock - 100; });
  ExpectRefused(odd, "not a multiple of 512");
  std::string giant = MakeDynamic(dir, "giant.vhd");
  PatchFooters(giant, [](Footer* f) { f->current_size = 1ull << 62; });
  ExpectRefused(giant, "2040 GiB");
}

TEST(CorruptionTest, TruncatedFilesAreRefused) {
  TempDir dir;
  std::string path = MakeDynamic(dir);
  std::filesystem::resize_file(path, 4096);  // keeps the copy at 0, loses the blocks and the footer
  ExpectRefused(path, "past the end of the file");
  std::filesystem::resize_file(path, 100);
  ExpectRefused(path, "truncated");

  std::string fixed = dir.File("f.vhd");
  ASSERT_TRUE(CreateImage(fixed, CreateOptions::Fixed(1 << 20)).ok());
  std::filesystem::resize_file(fixed, 600 * 1024);
  ExpectRefused(fixed, "footer");
  std::string claims = dir.File("claims.vhd");
  ASSERT_TRUE(CreateImage(claims, CreateOptions::Fixed(1 << 20)).ok());
  PatchFooters(claims, [](Footer* f) { f->current_size = 4 << 20; });
  ExpectRefused(claims, "truncated");
}

// A differencing child of a dynamic base, in `dir`.
std::string MakeChild(const TempDir& dir) {
  std::string base = MakeDynamic(dir, "base.vhd");
  std::string child = dir.File("child.vhd");
  CreateOptions options;
  options.type = DiskType::kDifferencing;
  options.parent = base;
  EXPECT_TRUE(CreateImage(child, options).ok());
  return child;
}

TEST(CorruptionTest, BadLocatorsAreRefused) {
  TempDir dir;
  std::string child = MakeChild(dir);
  PatchHeader(child, [](DynamicHeader* h) { h->locators[0].data_offset = 1ull << 40; });
  ExpectRefused(child, "lies outside the file");
  PatchHeader(child, [](DynamicHeader* h) { h->locators[0].data_offset = ~uint64_t{0} - 2; });
  ExpectRefused(child, "lies outside the file");
  PatchHeader(child, [](DynamicHeader* h) { h->locators[0].data_offset = 600; });
  ExpectRefused(child, "overlaps");
  PatchHeader(child, [](DynamicHeader* h) { h->locators[0].data_length = 1u << 30; });
  ExpectRefused(child, "more than any path");
}

TEST(CorruptionTest, LocatorsLeadingNowhereAreRefused) {
  TempDir dir;
  std::string child = MakeChild(dir);
  std::filesystem::rename(dir.File("base.vhd"), dir.File("moved.vhd"));
  Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(child, false);
  ASSERT_FALSE(chain.ok());
  EXPECT_NE(chain.status().message().find("parent not found"), std::string::npos) << chain.status().message();
  EXPECT_NE(chain.status().message().find("base.vhd"), std::string::npos) << chain.status().message();
}

TEST(CorruptionTest, WrongParentUuidIsRefused) {
  TempDir dir;
  std::string child = MakeChild(dir);
  ASSERT_TRUE(
      CreateImage(dir.File("base.vhd"), CreateOptions::Dynamic(4 * kBlock, kBlock)).ok());  // a new UUID
  Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(child, false);
  ASSERT_FALSE(chain.ok());
  EXPECT_NE(chain.status().message().find("UUID"), std::string::npos) << chain.status().message();
}

TEST(CorruptionTest, ChainCyclesAreRefused) {
  TempDir dir;
  // base <- b <- c, then c's bytes replace base: b's parent is now c, whose parent is b.
  std::string base = MakeDynamic(dir, "base.vhd");
  std::string b = dir.File("b.vhd");
  std::string c = dir.File("c.vhd");
  CreateOptions options;
  options.type = DiskType::kDifferencing;
  options.parent = base;
  ASSERT_TRUE(CreateImage(b, options).ok());
  options.parent = b;
  ASSERT_TRUE(CreateImage(c, options).ok());
  Result<std::unique_ptr<VhdImage>> c_image = OpenImage(c);
  ASSERT_TRUE(c_image.ok());
  Uuid c_uuid = (*c_image)->footer().uuid;
  c_image->reset();
  std::filesystem::copy_file(c, base, std::filesystem::copy_options::overwrite_existing);
  PatchHeader(b, [&](DynamicHeader* h) { h->parent_uuid = c_uuid; });
  Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(b, false);
  ASSERT_FALSE(chain.ok());
  EXPECT_NE(chain.status().message().find("cycle"), std::string::npos) << chain.status().message();
}

TEST(CorruptionTest, OverDeepChainsAreRefused) {
  TempDir dir;
  std::string parent = dir.File("0.vhd");
  ASSERT_TRUE(CreateImage(parent, CreateOptions::Dynamic(4 * kBlock, kBlock)).ok());
  for (uint64_t depth = 1; depth <= kMaxChainDepth; ++depth) {
    std::string child = dir.File(std::to_string(depth) + ".vhd");
    CreateOptions options;
    options.type = DiskType::kDifferencing;
    options.parent = parent;
    ASSERT_TRUE(CreateImage(child, options).ok());
    parent = child;
  }
  // 29 differencing images over a base: 30 in all, the limit.
  Result<std::unique_ptr<VhdChain>> at_limit =
      VhdChain::Open(dir.File(std::to_string(kMaxChainDepth - 1) + ".vhd"), false);
  ASSERT_TRUE(at_limit.ok()) << at_limit.status().ToString();
  EXPECT_EQ((*at_limit)->images().size(), kMaxChainDepth);
  Result<std::unique_ptr<VhdChain>> too_deep = VhdChain::Open(parent, false);
  ASSERT_FALSE(too_deep.ok());
  EXPECT_NE(too_deep.status().message().find("deeper than 64"), std::string::npos)
      << too_deep.status().message();
}

}  // namespace
}  // namespace blk::vhd
