// Differencing chains: reads fall through to parents, partial writes to new blocks fill from the parent,
// parents are found through relative then absolute locators, and libvhdi (an independent reader) sees what we
// see.
#include "formats/vhd/chain.h"

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
using testing::RunCommand;
using testing::SameBytes;
using testing::TempDir;

constexpr uint32_t kBlock = 64 * 1024;
constexpr uint64_t kSize = 6 * kBlock - 4096;  // the last block is short

struct Model {
  std::vector<uint8_t> bytes = std::vector<uint8_t>(kSize, 0);
  void Put(VhdImage& image, uint64_t offset, size_t length, uint32_t seed) {
    std::vector<uint8_t> data = Pattern(length, seed);
    Status status = image.Write(offset, data);
    ASSERT_TRUE(status.ok()) << status.ToString();
    std::memcpy(bytes.data() + offset, data.data(), length);
  }
};

std::vector<uint8_t> ReadChain(const std::string& top) {
  Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(top, false);
  EXPECT_TRUE(chain.ok()) << chain.status().ToString();
  if (!chain.ok()) return {};
  std::vector<uint8_t> data((*chain)->top().virtual_size());
  EXPECT_TRUE((*chain)->top().Read(0, data).ok());
  return data;
}

std::vector<uint8_t> ReadWithLibvhdi(const TempDir& dir, const std::vector<std::string>& chain) {
  std::string out = dir.File("vhdi.raw");
  std::string command = std::string(VHDI_READ) + " " + out;
  for (const std::string& path : chain) command += " " + path;
  std::string output;
  EXPECT_EQ(RunCommand(command, &output), 0) << output;
  return ReadWholeFile(out);
}

// base (dynamic) <- mid <- top, each with its own writes.
struct ThreeLevels {
  TempDir dir;
  std::string base = dir.File("base.vhd");
  std::string mid = dir.File("mid.vhd");
  std::string top = dir.File("top.vhd");
  Model model;

  void Build() {
    ASSERT_TRUE(CreateImage(base, CreateOptions::Dynamic(kSize, kBlock)).ok());
    {
      Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(base, true);
      ASSERT_TRUE(chain.ok());
      model.Put((*chain)->top(), 0, 3 * kBlock, 1);  // blocks 0-2 full
      model.Put((*chain)->top(), kSize - 4096, 4096, 2);
    }
    ASSERT_TRUE(CreateImage(mid, CreateOptions::Differencing(base)).ok());
    {
      Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(mid, true);
      ASSERT_TRUE(chain.ok()) << chain.status().ToString();
      model.Put((*chain)->top(), kBlock + 4096, 8192, 3);     // partial write into a block the base has
      model.Put((*chain)->top(), 4 * kBlock + 512, 1024, 4);  // one the base lacks
    }
    ASSERT_TRUE(CreateImage(top, CreateOptions::Differencing(mid)).ok());
    {
      Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(top, true);
      ASSERT_TRUE(chain.ok()) << chain.status().ToString();
      EXPECT_EQ((*chain)->images().size(), 3u);
      model.Put((*chain)->top(), kBlock + 8192, 512, 5);
      model.Put((*chain)->top(), 2 * kBlock - 512, 1024, 6);  // across a block boundary
    }
  }
};

TEST(ChainTest, ReadsFallThroughAndMatchLibvhdi) {
  ThreeLevels chain;
  chain.Build();
  EXPECT_TRUE(SameBytes(ReadChain(chain.top), chain.model.bytes));
  EXPECT_TRUE(SameBytes(ReadWithLibvhdi(chain.dir, {chain.top, chain.mid, chain.base}), chain.model.bytes));
  for (const std::string& path : {chain.base, chain.mid, chain.top}) {
    CheckReport report = CheckImage(path);
    EXPECT_TRUE(report.ok()) << path << ": " << (report.problems.empty() ? "" : report.problems[0]);
  }
}

TEST(ChainTest, PartialWriteToANewBlockFillsFromTheParent) {
  ThreeLevels chain;
  chain.Build();
  Result<std::unique_ptr<VhdChain>> opened = VhdChain::Open(chain.mid, false);
  ASSERT_TRUE(opened.ok());
  VhdImage& mid = (*opened)->top();
  // Block 1 was allocated in mid by an 8 KiB write; it holds the whole block, every bit set.
  ASSERT_NE(mid.bat_entry(1), kBatUnused);
  Result<std::span<const uint8_t>> bitmap = mid.Bitmap(1);
  ASSERT_TRUE(bitmap.ok());
  EXPECT_TRUE(AllBitsSet(*bitmap, kBlock / 512));
  std::vector<uint8_t> raw(kBlock);
  ASSERT_TRUE(mid.file().ReadAt(uint64_t{mid.bat_entry(1)} * 512 + mid.bitmap_bytes(), raw).ok());
  std::vector<uint8_t> base_part = Pattern(3 * kBlock, 1);
  EXPECT_TRUE(std::equal(raw.begin(), raw.begin() + 4096, base_part.begin() + kBlock));  // from the parent
  EXPECT_TRUE(
      SameBytes(std::vector<uint8_t>(raw.begin() + 4096, raw.begin() + 4096 + 8192), Pattern(8192, 3)));
  EXPECT_EQ(mid.bat_entry(0), kBatUnused);
  EXPECT_TRUE(mid.BatmapBit(1));
}

TEST(ChainTest, ParentsAreFoundRelativeThenAbsolute) {
  ThreeLevels chain;
  chain.Build();
  // Moving the whole directory breaks the absolute locators; the relative ones still lead home.
  TempDir elsewhere;
  std::string moved = elsewhere.File("moved");
  std::filesystem::rename(chain.dir.path(), moved);
  EXPECT_TRUE(SameBytes(ReadChain(moved + "/top.vhd"), chain.model.bytes));
  // Moving only the top breaks the relative locator; the absolute one (where mid now is) is used.
  std::filesystem::rename(moved, chain.dir.path());
  std::string lonely = elsewhere.File("top.vhd");
  std::filesystem::copy_file(chain.top, lonely);
  Result<std::unique_ptr<VhdChain>> opened = VhdChain::Open(lonely, false);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ((*opened)->images()[1]->path(), chain.mid);
}

TEST(ChainTest, FixedBaseUnderADifferencingChild) {
  TempDir dir;
  std::string base = dir.File("fixed.vhd");
  ASSERT_TRUE(CreateImage(base, CreateOptions::Fixed(kSize)).ok());
  Model model;
  {
    Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(base, true);
    ASSERT_TRUE(chain.ok());
    model.Put((*chain)->top(), 0, kSize, 7);
  }
  std::string child = dir.File("child.vhd");
  ASSERT_TRUE(CreateImage(child, CreateOptions::Differencing(base)).ok());
  {
    Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(child, true);
    ASSERT_TRUE(chain.ok());
    EXPECT_EQ((*chain)->top().header().block_size, 2u << 20);  // a fixed parent has no block size to inherit
    model.Put((*chain)->top(), 4096, 4096, 8);
  }
  EXPECT_TRUE(SameBytes(ReadChain(child), model.bytes));
  EXPECT_TRUE(SameBytes(ReadWithLibvhdi(dir, {child, base}), model.bytes));
}

TEST(ChainTest, ReadOnlyAndUnalignedWritesAreRefused) {
  ThreeLevels chain;
  chain.Build();
  Result<std::unique_ptr<VhdChain>> opened = VhdChain::Open(chain.top, false);
  ASSERT_TRUE(opened.ok());
  std::vector<uint8_t> data(512);
  EXPECT_EQ((*opened)->top().Write(0, data).code(), Status::Code::kPermissionDenied);
  Result<std::unique_ptr<VhdChain>> writable = VhdChain::Open(chain.top, true);
  ASSERT_TRUE(writable.ok());
  EXPECT_EQ((*writable)->top().Write(100, data).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ((*writable)->top().Write(kSize, data).code(), Status::Code::kInvalidArgument);
  std::vector<uint8_t> out(1024);
  EXPECT_EQ((*writable)->top().Read(kSize - 512, out).code(), Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace blk::vhd
