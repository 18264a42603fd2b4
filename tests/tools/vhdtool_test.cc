// Tests of tools/vhdtool: strict size parsing, and each verb end to end through the built binary, checked
// against qemu-img where qemu can see the result.
#include <gtest/gtest.h>

#include <cstring>

#include "formats/vhd/chain.h"
#include "tests/formats/vhd/test_util.h"
#include "tools/vhdtool/size.h"

namespace blk::vhdtool {
namespace {

using vhd::testing::Pattern;
using vhd::testing::ReadWholeFile;
using vhd::testing::RunCommand;
using vhd::testing::SameBytes;
using vhd::testing::TempDir;

const std::string kTool = VHDTOOL;

int Tool(const std::string& args, std::string* output = nullptr) {
  return RunCommand(kTool + " " + args, output);
}

TEST(SizeTest, AcceptsDigitsWithOneBinaryUnit) {
  EXPECT_EQ(ParseSize("4096").value(), 4096u);
  EXPECT_EQ(ParseSize("512K").value(), 512u << 10);
  EXPECT_EQ(ParseSize("512M").value(), 512u << 20);
  EXPECT_EQ(ParseSize("10G").value(), 10ull << 30);
  EXPECT_EQ(ParseSize("1T").value(), 1ull << 40);
  EXPECT_EQ(ParseSize("3g").value(), 3ull << 30);
  EXPECT_EQ(ParseSize("0").value(), 0u);
}

TEST(SizeTest, RejectsGarbage) {
  for (const char* text : {"", "G", "10GB", "1.5G", "-1G", "+1G", " 10G", "10G ", "10 G", "0x10", "10P",
                           "ten", "99999999999999999999", "16777216T", "18446744073709551616"}) {
    Result<uint64_t> size = ParseSize(text);
    EXPECT_FALSE(size.ok()) << "accepted \"" << text << "\"";
    if (!size.ok()) {
      EXPECT_NE(size.status().message().find("bad size"), std::string::npos);
    }
  }
}

TEST(SizeTest, FormatsWithTheLargestExactUnit) {
  EXPECT_EQ(FormatSize(10ull << 30), "10 GiB");
  EXPECT_EQ(FormatSize(3072), "3 KiB");
  EXPECT_EQ(FormatSize(1536), "1536 bytes");
  EXPECT_EQ(FormatSize(1000), "1000 bytes");
}

TEST(VhdtoolTest, HelpShowsAnExampleAndBadUsageSaysSo) {
  std::string output;
  EXPECT_EQ(Tool("--help", &output), 0);
  EXPECT_NE(output.find("example:"), std::string::npos);
  EXPECT_NE(output.find("vhdtool create disk.vhd 10G"), std::string::npos);
  EXPECT_EQ(Tool("", &output), 2);
  EXPECT_EQ(Tool("frobnicate x", &output), 2);
  EXPECT_NE(output.find("unknown verb"), std::string::npos);
  EXPECT_EQ(Tool("create only-a-file.vhd", &output), 2);
  EXPECT_EQ(Tool("create x.vhd 10GB", &output), 2);
  EXPECT_NE(output.find("bad size \"10GB\""), std::string::npos) << output;
}

TEST(VhdtoolTest, CreateMakesImagesQemuSizesExactly) {
  TempDir dir;
  std::string output;
  ASSERT_EQ(Tool("create " + dir.File("d.vhd") + " 10M", &output), 0) << output;
  ASSERT_EQ(Tool("create --fixed " + dir.File("f.vhd") + " 3M", &output), 0) << output;
  ASSERT_EQ(Tool("create --block-size 512K " + dir.File("b.vhd") + " 1G", &output), 0) << output;
  for (auto [name, size] : {std::pair{"d.vhd", 10ull << 20}, {"f.vhd", 3ull << 20}, {"b.vhd", 1ull << 30}}) {
    ASSERT_EQ(RunCommand("qemu-img info -f vpc --output=json " + dir.File(name), &output), 0) << output;
    EXPECT_NE(output.find("\"virtual-size\": " + std::to_string(size)), std::string::npos) << name << output;
  }
  ASSERT_EQ(Tool("info --json " + dir.File("b.vhd"), &output), 0);
  EXPECT_NE(output.find("\"block_size\": 524288"), std::string::npos) << output;
  EXPECT_EQ(Tool("create --block-size 3000 " + dir.File("x.vhd") + " 1G", &output), 1);
  EXPECT_NE(output.find("power of two"), std::string::npos) << output;
}

// base.vhd with qemu's writes, snap.vhd over it with ours; returns what the chain holds.
std::vector<uint8_t> MakeChain(const TempDir& dir) {
  std::string output;
  EXPECT_EQ(Tool("create " + dir.File("base.vhd") + " 5M", &output), 0) << output;
  EXPECT_EQ(RunCommand("qemu-io -f vpc -c 'write -P 0x41 0 3M' " + dir.File("base.vhd"), &output), 0)
      << output;
  EXPECT_EQ(Tool("snapshot " + dir.File("base.vhd") + " " + dir.File("snap.vhd"), &output), 0) << output;
  std::vector<uint8_t> model(5 << 20, 0);
  std::memset(model.data(), 0x41, 3 << 20);
  Result<std::unique_ptr<vhd::VhdChain>> chain = vhd::VhdChain::Open(dir.File("snap.vhd"), true);
  EXPECT_TRUE(chain.ok()) << chain.status().ToString();
  if (!chain.ok()) return model;
  std::vector<uint8_t> data = Pattern(8192, 7);
  for (uint64_t offset : {uint64_t{4096}, uint64_t{(4 << 20) + 512}}) {
    EXPECT_TRUE((*chain)->top().Write(offset, data).ok());
    std::memcpy(model.data() + offset, data.data(), data.size());
  }
  return model;
}

TEST(VhdtoolTest, SnapshotInfoAndCheck) {
  TempDir dir;
  MakeChain(dir);
  std::string base_info;
  ASSERT_EQ(Tool("info --json " + dir.File("base.vhd"), &base_info), 0);
  std::string output;
  ASSERT_EQ(Tool("info --json " + dir.File("snap.vhd"), &output), 0) << output;
  EXPECT_NE(output.find("\"type\": \"differencing\""), std::string::npos) << output;
  EXPECT_NE(output.find("\"parent\": \"" + dir.File("base.vhd") + "\""), std::string::npos) << output;
  size_t uuid_at = base_info.find("\"uuid\": \"");
  ASSERT_NE(uuid_at, std::string::npos);
  EXPECT_NE(output.find("\"parent_uuid\": \"" + base_info.substr(uuid_at + 9, 36)), std::string::npos)
      << output;
  ASSERT_EQ(Tool("info " + dir.File("snap.vhd"), &output), 0);
  EXPECT_NE(output.find("virtual size:  5242880 (5 MiB)"), std::string::npos) << output;
  EXPECT_NE(output.find("blocks:        2 of 3 allocated"), std::string::npos) << output;

  ASSERT_EQ(Tool("check " + dir.File("snap.vhd"), &output), 0) << output;
  EXPECT_NE(output.find(": ok"), std::string::npos);
  // Point a BAT entry past the end of the file: one line naming the problem, exit 1.
  std::vector<uint8_t> bytes = ReadWholeFile(dir.File("snap.vhd"));
  vhd::SetBatEntry(std::span(bytes).subspan(1536), 2, 0x00FFFFFF);
  vhd::testing::WriteWholeFile(dir.File("snap.vhd"), bytes);
  ASSERT_EQ(Tool("check " + dir.File("snap.vhd"), &output), 1);
  EXPECT_NE(output.find("BAT entry 2"), std::string::npos) << output;
  EXPECT_NE(output.find("past the end of the file"), std::string::npos) << output;
}

TEST(VhdtoolTest, ConvertBothWaysAndFlattensChains) {
  TempDir dir;
  std::vector<uint8_t> model = MakeChain(dir);
  std::string output;
  ASSERT_EQ(Tool("convert " + dir.File("snap.vhd") + " " + dir.File("flat.raw"), &output), 0) << output;
  EXPECT_TRUE(SameBytes(ReadWholeFile(dir.File("flat.raw")), model));
  ASSERT_EQ(Tool("convert -O vhd " + dir.File("snap.vhd") + " " + dir.File("flat.vhd"), &output), 0)
      << output;
  ASSERT_EQ(RunCommand("qemu-img compare -f raw -F vpc " + dir.File("flat.raw") + " " + dir.File("flat.vhd"),
                       &output),
            0)
      << output;
  ASSERT_EQ(Tool("convert --fixed " + dir.File("flat.raw") + " " + dir.File("fixed.vhd"), &output), 0)
      << output;
  ASSERT_EQ(RunCommand("qemu-img compare -f raw -F vpc " + dir.File("flat.raw") + " " + dir.File("fixed.vhd"),
                       &output),
            0)
      << output;
  // An odd-sized raw file is padded to whole sectors.
  vhd::testing::WriteWholeFile(dir.File("odd.raw"), Pattern(1000, 3));
  ASSERT_EQ(Tool("convert " + dir.File("odd.raw") + " " + dir.File("odd.vhd"), &output), 0) << output;
  ASSERT_EQ(Tool("convert -O raw " + dir.File("odd.vhd") + " " + dir.File("odd.back"), &output), 0) << output;
  std::vector<uint8_t> padded = Pattern(1000, 3);
  padded.resize(1024, 0);
  EXPECT_TRUE(SameBytes(ReadWholeFile(dir.File("odd.back")), padded));
  // An existing target is never overwritten.
  EXPECT_EQ(Tool("convert " + dir.File("snap.vhd") + " " + dir.File("flat.raw"), &output), 1);
  EXPECT_NE(output.find("exists"), std::string::npos) << output;
}

// On a terminal (script(1) provides one; bsdutils is essential in Debian) convert draws a bar; in a pipe it
// does not.
TEST(VhdtoolTest, ProgressBarOnlyOnATerminal) {
  TempDir dir;
  vhd::testing::WriteWholeFile(dir.File("src.raw"), Pattern(3 << 20, 4));
  std::string output;
  ASSERT_EQ(RunCommand("script -qec '" + kTool + " convert " + dir.File("src.raw") + " " + dir.File("a.vhd") +
                           "' /dev/null",
                       &output),
            0)
      << output;
  EXPECT_NE(output.find("converting ["), std::string::npos) << output;
  EXPECT_NE(output.find("100%"), std::string::npos) << output;
  ASSERT_EQ(Tool("convert " + dir.File("src.raw") + " " + dir.File("b.vhd"), &output), 0) << output;
  EXPECT_EQ(output, "");
}

TEST(VhdtoolTest, CoalesceWritesTheChildIntoItsParent) {
  TempDir dir;
  std::vector<uint8_t> model = MakeChain(dir);
  std::string output;
  ASSERT_EQ(Tool("coalesce " + dir.File("snap.vhd"), &output), 0) << output;
  EXPECT_NE(output.find("coalesced 2 blocks"), std::string::npos) << output;
  ASSERT_EQ(RunCommand("qemu-img convert -f vpc -O raw " + dir.File("base.vhd") + " " + dir.File("base.raw"),
                       &output),
            0)
      << output;
  EXPECT_TRUE(SameBytes(ReadWholeFile(dir.File("base.raw")), model));
  ASSERT_EQ(Tool("check " + dir.File("base.vhd"), &output), 0) << output;
  EXPECT_EQ(Tool("coalesce " + dir.File("base.vhd"), &output), 1);
  EXPECT_NE(output.find("not a differencing image"), std::string::npos) << output;
}

}  // namespace
}  // namespace blk::vhdtool
