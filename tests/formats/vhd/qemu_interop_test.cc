// Interoperability with qemu (Debian's qemu-utils): images qemu-img makes read here byte for byte as qemu
// reads them, and images written here read identically in qemu. A missing qemu-img fails the tests
// (install-deps has it).
#include <gtest/gtest.h>

#include <cstring>

#include "formats/vhd/chain.h"
#include "formats/vhd/create.h"
#include "tests/formats/vhd/test_util.h"

namespace blk::vhd {
namespace {

using testing::Pattern;
using testing::ReadWholeFile;
using testing::RunCommand;
using testing::SameBytes;
using testing::TempDir;

// Not a multiple of the 2 MiB block size, nor of a geometry.
constexpr uint64_t kOddSize = (5ull << 20) + 3 * 512;

void RunOk(const std::string& command) {
  std::string output;
  int status = RunCommand(command, &output);
  ASSERT_EQ(status, 0) << command << "\n" << output;
}

uint64_t QemuVirtualSize(const std::string& path) {
  std::string output;
  EXPECT_EQ(RunCommand("qemu-img info -f vpc --output=json " + path, &output), 0) << output;
  size_t at = output.find("\"virtual-size\":");
  if (at == std::string::npos) return 0;
  return std::stoull(output.substr(at + 15));
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(path, false);
  EXPECT_TRUE(chain.ok()) << chain.status().ToString();
  if (!chain.ok()) return {};
  std::vector<uint8_t> data((*chain)->top().virtual_size());
  Status status = (*chain)->top().Read(0, data);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return data;
}

// A raw disk with data in a few places (including the last sector) and holes between.
std::vector<uint8_t> MakeRawSource(const std::string& path) {
  std::vector<uint8_t> raw(kOddSize, 0);
  auto put = [&](uint64_t offset, size_t length, uint32_t seed) {
    std::vector<uint8_t> bytes = Pattern(length, seed);
    std::memcpy(raw.data() + offset, bytes.data(), length);
  };
  put(0, 4096, 1);
  put((2 << 20) - 1024, 8192, 2);  // across the first block boundary
  put(kOddSize - 512, 512, 3);
  testing::WriteWholeFile(path, raw);
  return raw;
}

class QemuMadeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(QemuMadeTest, ReadsAsQemuReadsIt) {
  TempDir dir;
  std::string raw = dir.File("src.raw");
  MakeRawSource(raw);
  std::string vhd = dir.File("q.vhd");
  RunOk("qemu-img convert -f raw -O vpc -o " + GetParam() + " " + raw + " " + vhd);
  std::string back = dir.File("back.raw");
  RunOk("qemu-img convert -f vpc -O raw " + vhd + " " + back);
  std::vector<uint8_t> expected = ReadWholeFile(back);
  std::vector<uint8_t> ours = ReadAll(vhd);
  EXPECT_EQ(ours.size(), QemuVirtualSize(vhd));
  EXPECT_TRUE(SameBytes(ours, expected));
}

INSTANTIATE_TEST_SUITE_P(Subformats, QemuMadeTest,
                         ::testing::Values("subformat=fixed", "subformat=dynamic",
                                           "subformat=fixed,force_size=on",
                                           "subformat=dynamic,force_size=on"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

class OursTest : public ::testing::TestWithParam<int> {};

TEST_P(OursTest, QemuReadsWhatWeWrote) {
  TempDir dir;
  std::string vhd = dir.File("ours.vhd");
  CreateOptions options = GetParam() == 0 ? CreateOptions::Fixed(kOddSize) : CreateOptions::Dynamic(kOddSize);
  options.batmap = GetParam() == 1;
  ASSERT_TRUE(CreateImage(vhd, options).ok());
  std::vector<uint8_t> model(kOddSize, 0);
  {
    Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(vhd, true);
    ASSERT_TRUE(chain.ok()) << chain.status().ToString();
    VhdImage& image = (*chain)->top();
    auto put = [&](uint64_t offset, size_t length, uint32_t seed) {
      std::vector<uint8_t> bytes = Pattern(length, seed);
      ASSERT_TRUE(image.Write(offset, bytes).ok());
      std::memcpy(model.data() + offset, bytes.data(), length);
    };
    put(512, 4096, 10);
    put((2 << 20) - 2048, 16384, 11);  // two blocks at once
    put(kOddSize - 1024, 1024, 12);    // the short last block
    put(1024, 512, 13);                // over an earlier write
    ASSERT_TRUE(image.Close().ok());
  }
  EXPECT_EQ(QemuVirtualSize(vhd), kOddSize);
  std::string back = dir.File("back.raw");
  RunOk("qemu-img convert -f vpc -O raw " + vhd + " " + back);
  EXPECT_TRUE(SameBytes(ReadWholeFile(back), model));
  EXPECT_TRUE(SameBytes(ReadAll(vhd), model));
}

INSTANTIATE_TEST_SUITE_P(Types, OursTest, ::testing::Values(0, 1, 2), [](const auto& info) {
  return std::string(info.param == 0 ? "fixed" : info.param == 1 ? "dynamic" : "dynamic_without_batmap");
});

constexpr uint64_t kBig = 200ull << 30;  // beyond the 127 GiB a CHS geometry can describe

TEST(QemuInteropTest, OurImagesOver127GiB) {
  TempDir dir;
  std::string vhd = dir.File("big.vhd");
  ASSERT_TRUE(CreateImage(vhd, CreateOptions::Dynamic(kBig)).ok());
  {
    Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(vhd, true);
    ASSERT_TRUE(chain.ok()) << chain.status().ToString();
    std::vector<uint8_t> fives(65536, 0x5A);
    ASSERT_TRUE((*chain)->top().Write(150ull << 30, fives).ok());
    std::vector<uint8_t> tail(4096, 0xA5);
    ASSERT_TRUE((*chain)->top().Write(kBig - 4096, tail).ok());
  }
  EXPECT_EQ(QemuVirtualSize(vhd), kBig);
  std::string output;
  ASSERT_EQ(RunCommand("qemu-io -r -f vpc -c 'read -P 0x5a 150G 64k' -c 'read -P 0xa5 " +
                           std::to_string(kBig - 4096) + " 4k' -c 'read -P 0 149G 64k' " + vhd,
                       &output),
            0)
      << output;
  EXPECT_EQ(output.find("verification failed"), std::string::npos) << output;
  EXPECT_NE(output.find("read 65536/65536"), std::string::npos) << output;
}

TEST(QemuInteropTest, QemuImagesOver127GiB) {
  TempDir dir;
  for (std::string options : {"force_size=on", "subformat=dynamic"}) {
    std::string vhd = dir.File("q.vhd");
    RunOk("qemu-img create -q -f vpc -o " + options + " " + vhd + " 200G");
    RunOk("qemu-io -f vpc -c 'write -P 0x77 150G 64k' " + vhd);
    Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(vhd, false);
    ASSERT_TRUE(chain.ok()) << chain.status().ToString();
    EXPECT_EQ((*chain)->top().virtual_size(), QemuVirtualSize(vhd)) << options;
    std::vector<uint8_t> data(3 * 65536);
    ASSERT_TRUE((*chain)->top().Read((150ull << 30) - 65536, data).ok());
    for (size_t i = 0; i < data.size(); ++i) {
      ASSERT_EQ(data[i], i >= 65536 && i < 2 * 65536 ? 0x77 : 0) << options << " byte " << i;
    }
  }
}

// Virtual PC's images (and old qemu's) may carry a current_size that disagrees with their geometry; qemu
// reads the geometry there, and so must we, saying so in a notice.
TEST(QemuInteropTest, GeometryCreatorsFollowQemusSizeRule) {
  TempDir dir;
  for (const char* creator : {"qemu", "vpc "}) {
    std::string vhd = dir.File("vpc.vhd");
    RunOk("qemu-img create -q -f vpc -o subformat=dynamic " + vhd + " 10M");
    std::vector<uint8_t> bytes = ReadWholeFile(vhd);
    for (size_t at : {size_t{0}, bytes.size() - kFooterSize}) {
      Result<Footer> footer = DecodeFooter(std::span<const uint8_t>(bytes).subspan(at, kFooterSize));
      ASSERT_TRUE(footer.ok());
      std::memcpy(footer->creator_app.data(), creator, 4);
      footer->current_size = 10u << 20;  // the size asked for, not the geometry's
      EncodeFooter(*footer, std::span<uint8_t, kFooterSize>(bytes.data() + at, kFooterSize));
    }
    testing::WriteWholeFile(vhd, bytes);
    Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(vhd, false);
    ASSERT_TRUE(chain.ok()) << chain.status().ToString();
    const VhdImage& image = (*chain)->top();
    EXPECT_EQ(image.virtual_size(), QemuVirtualSize(vhd)) << creator;
    EXPECT_NE(image.virtual_size(), 10u << 20) << creator;
    ASSERT_EQ(image.notes().size(), 1u) << creator;
    EXPECT_NE(image.notes()[0].find("following the geometry"), std::string::npos) << image.notes()[0];
  }
}

}  // namespace
}  // namespace blk::vhd
