// Process faults: a writer (the daemon's pipeline, a worker thread and the simulated frontend, in a forked
// child) writes self-describing sectors with a flush after every batch, and is killed with SIGKILL at random
// moments, round after round, on a dynamic VHD and on a raw file. After each kill the image must pass
// `vhd check` (VHD) and every sector written before the last acknowledged flush must read back with at least
// the generation acknowledged then (a later write may have landed, acknowledged or not, but never garbage).
//
// The child reports each acknowledged flush to a pipe, as one write() of at most PIPE_BUF bytes: a kill
// cannot tear a report.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "formats/vhd/chain.h"
#include "formats/vhd/check.h"
#include "formats/vhd/create.h"
#include "tests/backend/fault_fixture.h"

namespace blk {
namespace {

constexpr uint32_t kUnitBytes = 4096;
constexpr uint32_t kUnits = kDiskBytes / kUnitBytes;
constexpr uint32_t kBatch = 16;
constexpr uint32_t kEndOfReport = ~0u;

struct Record {
  uint32_t unit;
  uint32_t generation;
};

// Each sector names its unit, generation and index, and the rest of it follows from those.
void FillSector(uint8_t* sector, uint32_t unit, uint32_t generation, uint32_t index) {
  uint32_t header[3] = {unit, generation, index};
  std::memcpy(sector, header, sizeof(header));
  for (uint32_t i = sizeof(header); i < 512; ++i)
    sector[i] = static_cast<uint8_t>(unit * 31 + generation * 17 + index * 7 + i);
}

// The generation a sector holds (0: never written, all zeros), or -1 if it is neither.
int64_t SectorGeneration(const uint8_t* sector, uint32_t unit, uint32_t index) {
  uint32_t header[3];
  std::memcpy(header, sector, sizeof(header));
  if (header[0] == 0 && header[1] == 0 && header[2] == 0) {
    for (uint32_t i = 0; i < 512; ++i)
      if (sector[i] != 0) return -1;
    return 0;
  }
  uint8_t expected[512];
  FillSector(expected, unit, header[1], index);
  if (header[0] != unit || header[2] != index || std::memcmp(expected, sector, 512) != 0) return -1;
  return header[1];
}

// The child: writes batches of distinct units, flushes, reports; until killed (or a bound, then exits 0).
[[noreturn]] void RunWriter(const std::string& path, ImageFormatHint format, uint32_t first_generation,
                            uint64_t seed, int report_fd) {
  SimHypervisor sim;
  auto worker = Worker::Create("crash-worker", 128);
  if (!worker.ok()) ::_exit(3);
  BlkfrontConfig config;
  config.max_outstanding = kBatch;
  Guest guest(sim, path, 1, config, false, **worker, true, 0, format, false);
  if (::testing::Test::HasFailure()) ::_exit(4);
  (*worker)->Start();
  std::mt19937_64 random(seed);
  std::vector<Bytes> buffers(kBatch, Bytes(kUnitBytes));
  uint32_t generation = first_generation;
  for (unsigned round = 0; round < 100000; ++round) {
    Record report[kBatch + 1];
    std::vector<uint32_t> units;
    while (units.size() < kBatch) {
      auto unit = static_cast<uint32_t>(random() % kUnits);
      if (std::find(units.begin(), units.end(), unit) == units.end()) units.push_back(unit);
    }
    ++generation;
    for (uint32_t i = 0; i < kBatch; ++i) {
      for (uint32_t s = 0; s < kUnitBytes / 512; ++s)
        FillSector(&buffers[i][s * 512], units[i], generation, s);
      if (!guest.front
               ->Queue({IoOp::kWrite, uint64_t{units[i]} * (kUnitBytes >> kSectorShift), kUnitBytes,
                        buffers[i].data(), i})
               .ok())
        ::_exit(5);
      report[i] = {units[i], generation};
    }
    if (!guest.front->Push().ok()) ::_exit(6);
    for (uint32_t done = 0; done < kBatch;) {
      IoCompletion completions[kBatch];
      auto got = guest.front->Wait(completions, std::chrono::seconds(10));
      if (!got.ok() || *got == 0) ::_exit(7);
      for (size_t i = 0; i < *got; ++i)
        if (completions[i].status != BLKIF_RSP_OKAY) ::_exit(8);
      done += static_cast<uint32_t>(*got);
    }
    if (!guest.front->Submit({IoOp::kFlushDiskCache, 0, 0, nullptr, 99}).ok()) ::_exit(9);
    IoCompletion flushed[1];
    auto got = guest.front->Wait(flushed, std::chrono::seconds(10));
    if (!got.ok() || *got != 1 || flushed[0].status != BLKIF_RSP_OKAY) ::_exit(10);
    report[kBatch] = {kEndOfReport, generation};
    if (::write(report_fd, report, sizeof(report)) != static_cast<ssize_t>(sizeof(report))) ::_exit(11);
  }
  ::_exit(0);
}

class CrashTest : public ::testing::TestWithParam<ImageFormatHint> {
 protected:
  void TearDown() override { ::unlink(path_.c_str()); }

  // One round: fork a writer, kill it after `kill_after_ms`, and fold its acknowledged flushes into
  // `durable_`.
  void RunRound(uint32_t first_generation, uint64_t seed, unsigned kill_after_ms) {
    int pipe_fds[2];
    ASSERT_EQ(::pipe(pipe_fds), 0);
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::close(pipe_fds[0]);
      RunWriter(path_, GetParam(), first_generation, seed, pipe_fds[1]);
    }
    ::close(pipe_fds[1]);
    ::usleep(kill_after_ms * 1000);
    ASSERT_EQ(::kill(child, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer ended before the kill, exit status "
                                     << (WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    Record report[kBatch + 1];
    ssize_t got;
    while ((got = ::read(pipe_fds[0], report, sizeof(report))) == static_cast<ssize_t>(sizeof(report))) {
      ASSERT_EQ(report[kBatch].unit, kEndOfReport);
      for (uint32_t i = 0; i < kBatch; ++i)
        durable_[report[i].unit] = std::max(durable_[report[i].unit], report[i].generation);
      ++flushes_;
    }
    EXPECT_EQ(got, 0) << "a torn report";
    ::close(pipe_fds[0]);
  }

  void Verify() {
    Bytes image(kDiskBytes);
    if (GetParam() == ImageFormatHint::kVhd) {
      vhd::CheckReport report = vhd::CheckImage(path_);
      std::string problems;
      for (const std::string& problem : report.problems) problems += problem + "\n";
      ASSERT_TRUE(report.ok()) << problems;
      auto chain = vhd::VhdChain::Open(path_, true);
      ASSERT_TRUE(chain.ok()) << chain.status().ToString();
      ASSERT_TRUE((*chain)->top().Read(0, image).ok());
    } else {
      int fd = ::open(path_.c_str(), O_RDONLY);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(::pread(fd, image.data(), image.size(), 0), static_cast<ssize_t>(image.size()));
      ::close(fd);
    }
    unsigned lost = 0;
    for (uint32_t unit = 0; unit < kUnits; ++unit) {
      for (uint32_t s = 0; s < kUnitBytes / 512; ++s) {
        int64_t generation = SectorGeneration(&image[uint64_t{unit} * kUnitBytes + s * 512], unit, s);
        if (generation < static_cast<int64_t>(durable_[unit]) && ++lost <= 5) {
          ADD_FAILURE() << "unit " << unit << " sector " << s << ": generation " << generation
                        << ", acknowledged flushed " << durable_[unit];
        }
      }
    }
    EXPECT_EQ(lost, 0u);
  }

  std::string path_;
  std::vector<uint32_t> durable_ = std::vector<uint32_t>(kUnits, 0);
  unsigned flushes_ = 0;
};

TEST_P(CrashTest, KilledWritersLeaveAConsistentImageWithEveryFlushedWrite) {
  path_ = "/var/tmp/fault_crash." + std::to_string(::getpid());
  if (GetParam() == ImageFormatHint::kVhd) {
    ASSERT_TRUE(vhd::CreateImage(path_, vhd::CreateOptions::Dynamic(kDiskBytes)).ok());
  } else {
    path_ = MakeDiskFile("/var/tmp", "fault_crash_raw", kDiskBytes, 0);
  }
  std::mt19937 random(::testing::UnitTest::GetInstance()->random_seed());
  for (uint32_t round = 0; round < 5; ++round) {
    unsigned kill_after_ms = 60 + random() % 140;
    RunRound(round * 1000000u, random(), kill_after_ms);
    if (HasFatalFailure()) return;
    Verify();
    if (HasFailure()) return;
  }
  EXPECT_GT(flushes_, 5u) << "the writers barely ran: the test proved little";
}

INSTANTIATE_TEST_SUITE_P(Formats, CrashTest, ::testing::Values(ImageFormatHint::kVhd, ImageFormatHint::kRaw),
                         [](const auto& info) {
                           return info.param == ImageFormatHint::kVhd ? "Vhd" : "Raw";
                         });

}  // namespace
}  // namespace blk
