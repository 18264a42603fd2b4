// Crash consistency: a fault-injecting file stops the image after each single write of a sequence of
// allocating and in-place writes in turn (as a killed process, and as a power cut that loses everything not
// yet synced). Every resulting image must pass check, read the same in libvhdi (and in qemu-img, for the
// dynamic one), and hold every write that was acknowledged and flushed before the crash.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <set>
#include <string>

#include "base/log.h"
#include "formats/vhd/chain.h"
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
constexpr uint64_t kSize = 4 * kBlock;

struct Op {
  uint64_t offset;
  size_t length;
  uint32_t seed;
};
// A partial allocating write, an in-place write, a whole-block allocating write, a write across two new
// blocks.
const Op kOps[] = {
    {2 * kBlock + 4096, 4096, 21}, {8192, 4096, 22}, {3 * kBlock, kBlock, 23}, {kBlock - 512, 1024, 24}};

enum class Kind { kDynamic, kDifferencing };

struct Outcome {
  uint64_t writes = 0;
  bool crashed = false;
  size_t acknowledged = 0;  // ops whose Write and Flush both succeeded
};

class CrashTest : public ::testing::TestWithParam<Kind> {
 protected:
  // The image before the ops: block 0 holds pattern 1 (in the dynamic image, or in the differencing child's
  // parent).
  void MakeImage() {
    std::string first = dir_.File(GetParam() == Kind::kDynamic ? "top.vhd" : "base.vhd");
    ASSERT_TRUE(CreateImage(first, CreateOptions::Dynamic(kSize, kBlock)).ok());
    {
      Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(first, true);
      ASSERT_TRUE(chain.ok());
      ASSERT_TRUE((*chain)->top().Write(0, Pattern(kBlock, 1)).ok());
      if (GetParam() == Kind::kDifferencing) {
        ASSERT_TRUE((*chain)->top().Write(2 * kBlock, Pattern(kBlock, 2)).ok());
      }
    }
    before_.assign(kSize, 0);
    std::vector<uint8_t> a = Pattern(kBlock, 1);
    std::memcpy(before_.data(), a.data(), kBlock);
    if (GetParam() == Kind::kDifferencing) {
      std::vector<uint8_t> b = Pattern(kBlock, 2);
      std::memcpy(before_.data() + 2 * kBlock, b.data(), kBlock);
      ASSERT_TRUE(CreateImage(top(), CreateOptions::Differencing(first)).ok());
    }
  }

  std::string top() const { return dir_.File("top.vhd"); }

  Outcome RunOps(FaultInjectingFile::Fault fault, uint64_t fault_at) {
    Outcome outcome;
    FaultInjectingFile* injector = nullptr;
    auto wrap = [&](std::unique_ptr<FileIo> inner) -> std::unique_ptr<FileIo> {
      auto wrapped =
          std::make_unique<FaultInjectingFile>(std::move(inner), fault, fault_at, /*real_syncs=*/false);
      injector = wrapped.get();
      return wrapped;
    };
    Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(top(), true, wrap);
    EXPECT_TRUE(chain.ok()) << chain.status().ToString();
    if (!chain.ok()) return outcome;
    for (const Op& op : kOps) {
      if (!(*chain)->top().Write(op.offset, Pattern(op.length, op.seed)).ok()) break;
      if (!(*chain)->top().Flush().ok()) break;
      ++outcome.acknowledged;
    }
    outcome.writes = injector->writes();
    outcome.crashed = injector->crashed();
    chain->reset();  // closing a crashed file fails quietly: there is nothing left to save
    return outcome;
  }

  // Every check a surviving image must pass, at `label` (the fault and the write it hit).
  void Verify(const Outcome& outcome, const std::string& label) {
    CheckReport report = CheckImage(top());
    EXPECT_TRUE(report.ok()) << label << ": " << (report.problems.empty() ? "" : report.problems[0]);
    Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(top(), false);
    ASSERT_TRUE(chain.ok()) << label << ": " << chain.status().ToString();
    std::vector<uint8_t> ours(kSize);
    ASSERT_TRUE((*chain)->top().Read(0, ours).ok()) << label;
    for (size_t i = 0; i < std::size(kOps); ++i) {
      const Op& op = kOps[i];
      std::vector<uint8_t> got(ours.begin() + op.offset, ours.begin() + op.offset + op.length);
      std::vector<uint8_t> old(before_.begin() + op.offset, before_.begin() + op.offset + op.length);
      std::vector<uint8_t> wanted = Pattern(op.length, op.seed);
      if (i < outcome.acknowledged) {
        EXPECT_TRUE(SameBytes(got, wanted)) << label << ": acknowledged op " << i << " lost";
      } else if (i == outcome.acknowledged) {
        // A write in flight may land in part (it may span blocks), but each sector is either old or new.
        for (size_t at = 0; at < op.length; at += 512) {
          bool is_new = std::equal(got.begin() + at, got.begin() + at + 512, wanted.begin() + at);
          bool is_old = std::equal(got.begin() + at, got.begin() + at + 512, old.begin() + at);
          EXPECT_TRUE(is_new || is_old)
              << label << ": op " << i << " in flight: sector " << at / 512 << " is neither old nor new";
        }
      } else {
        EXPECT_TRUE(SameBytes(got, old)) << label << ": op " << i << " was never issued";
      }
    }
    // The rest of the disk is untouched.
    std::vector<uint8_t> expected = before_;
    for (const Op& op : kOps) std::memcpy(expected.data() + op.offset, ours.data() + op.offset, op.length);
    EXPECT_TRUE(SameBytes(ours, expected)) << label;
    // An independent reader agrees (asked once per distinct resulting file: many faults leave the same
    // bytes).
    std::string image_bytes;
    for (const std::string& path : {top(), dir_.File("base.vhd")}) {
      std::vector<uint8_t> bytes = ReadWholeFile(path);
      image_bytes.append(bytes.begin(), bytes.end());
    }
    if (!verified_.insert(std::hash<std::string>()(image_bytes)).second) return;
    std::string raw = dir_.File("other.raw");
    std::string libvhdi = std::string(VHDI_READ) + " " + raw + " " + top();
    if (GetParam() == Kind::kDifferencing) libvhdi += " " + dir_.File("base.vhd");
    std::vector<std::string> readers = {libvhdi};
    if (GetParam() == Kind::kDynamic)
      readers.push_back("qemu-img convert -f vpc -O raw " + top() + " " + raw);
    for (const std::string& command : readers) {
      std::string output;
      ASSERT_EQ(RunCommand(command, &output), 0) << label << ": " << command << ": " << output;
      EXPECT_TRUE(SameBytes(ReadWholeFile(raw), ours)) << label << ": " << command << " disagrees";
    }
  }

  TempDir dir_;
  std::vector<uint8_t> before_;
  std::set<size_t> verified_;
};

TEST_P(CrashTest, EveryWriteOfTheSequenceCanBeTheLast) {
  // Closing a crashed image logs an error each time; expected here, and noise in the test's output.
  SetLogSink([](LogLevel, const char*, void*) {}, nullptr);
  MakeImage();
  std::vector<uint8_t> pristine = ReadWholeFile(top());
  Outcome clean = RunOps(FaultInjectingFile::Fault::kNone, 0);
  ASSERT_EQ(clean.acknowledged, std::size(kOps));
  ASSERT_GE(clean.writes, 10u);  // two allocations of five writes each, at least
  Verify(clean, "no fault");
  for (auto fault : {FaultInjectingFile::Fault::kCrash, FaultInjectingFile::Fault::kPowerCut,
                     FaultInjectingFile::Fault::kFailWrite}) {
    for (uint64_t at = 1; at <= clean.writes; ++at) {
      testing::WriteWholeFile(top(), pristine);
      Outcome outcome = RunOps(fault, at);
      std::string label = std::string(fault == FaultInjectingFile::Fault::kCrash      ? "crash"
                                      : fault == FaultInjectingFile::Fault::kPowerCut ? "power cut"
                                                                                      : "failed write") +
                          " at write " + std::to_string(at);
      if (fault != FaultInjectingFile::Fault::kFailWrite) {
        EXPECT_TRUE(outcome.crashed) << label;
      }
      EXPECT_LT(outcome.acknowledged, std::size(kOps)) << label;
      Verify(outcome, label);
      if (HasFailure()) break;  // one broken case explains the rest
    }
  }
  SetLogSink(nullptr, nullptr);
}

INSTANTIATE_TEST_SUITE_P(Kinds, CrashTest, ::testing::Values(Kind::kDynamic, Kind::kDifferencing),
                         [](const auto& info) {
                           return std::string(info.param == Kind::kDynamic ? "dynamic" : "differencing");
                         });

TEST(FaultInjectingFileTest, PowerCutUndoesUnsyncedWritesAndSize) {
  TempDir dir;
  std::string path = dir.File("f");
  testing::WriteWholeFile(path, std::vector<uint8_t>(1024, 7));
  Result<std::unique_ptr<FileIo>> inner = PosixFile::Open(path, true);
  ASSERT_TRUE(inner.ok());
  FaultInjectingFile file(std::move(*inner), FaultInjectingFile::Fault::kPowerCut, 3);
  std::vector<uint8_t> ones(512, 1);
  ASSERT_TRUE(file.WriteAt(0, ones).ok());
  ASSERT_TRUE(file.Sync().ok());
  ASSERT_TRUE(file.WriteAt(512, ones).ok());    // unsynced: lost
  EXPECT_FALSE(file.WriteAt(2048, ones).ok());  // the third write: the power goes
  EXPECT_TRUE(file.crashed());
  EXPECT_FALSE(file.ReadAt(0, ones).ok());
  std::vector<uint8_t> after = ReadWholeFile(path);
  ASSERT_EQ(after.size(), 1024u);
  EXPECT_EQ(after[0], 1);
  EXPECT_EQ(after[600], 7);
}

}  // namespace
}  // namespace blk::vhd
