// Tests of bench/options.cc, bench/histogram.cc and bench/fio_runner.cc.
#include "bench/options.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <random>

#include "bench/fio_runner.h"
#include "bench/histogram.h"
#include "bench/workload.h"

namespace blk {
namespace {

TEST(BenchOptionsTest, ParsesFioNamesInBothForms) {
  auto options = ParseBenchOptions({"--filename=/tmp/x.img", "--size", "1g", "--rw=randread", "--bs=64k",
                                    "--iodepth=128", "--runtime=2.5", "--direct=0", "--verify", "--json",
                                    "--abi=x86_32-abi", "--rwmixread=70", "--poll=200", "--frontend-poll=50",
                                    "--ring-order=3"});
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  EXPECT_EQ(options->filename, "/tmp/x.img");
  EXPECT_EQ(options->size, 1ull << 30);
  EXPECT_EQ(options->rw, Pattern::kRandRead);
  EXPECT_EQ(options->bs, 65536u);
  EXPECT_EQ(options->iodepth, 128u);
  EXPECT_DOUBLE_EQ(options->runtime_s, 2.5);
  EXPECT_FALSE(options->direct);
  EXPECT_TRUE(options->verify);
  EXPECT_TRUE(options->json);
  EXPECT_EQ(options->abi, "x86_32-abi");
  EXPECT_EQ(options->rwmixread, 70u);
  EXPECT_EQ(options->poll_us, 200u);
  EXPECT_EQ(options->frontend_poll_us, 50u);
  EXPECT_EQ(options->ring_order, 3u);
}

TEST(BenchOptionsTest, RejectsBadValuesNamingThem) {
  const std::vector<std::vector<std::string>> bad = {{"--rw=sideways"},
                                                     {"--bs=1000"},
                                                     {"--bs=0"},
                                                     {"--iodepth=0"},
                                                     {"--iodepth=12x"},
                                                     {"--runtime=-1"},
                                                     {"--size=lots"},
                                                     {"--size=1q"},
                                                     {"--direct=2"},
                                                     {"--frobnicate=1"},
                                                     {"stray"},
                                                     {"--iodepth"},
                                                     {"--size=99999999999999999999"},
                                                     {"--size=16777216t"},
                                                     {"--sector-size=4096", "--bs=512"},
                                                     {"--abi=arm-abi"},
                                                     {"--rwmixread=101"},
                                                     {"--poll=soon"},
                                                     {"--poll=1000000"},
                                                     {"--frontend-poll=-1"},
                                                     {"--granted-buffers"},  // without --persistent
                                                     {"--ring-order=5"},
                                                     {"--ring-order=big"},
                                                     {"--rounds=3"},  // without --vs-fio
                                                     {"--rounds=0", "--vs-fio"},
                                                     {"--rounds=101", "--vs-fio"}};
  for (const auto& args : bad) {
    auto options = ParseBenchOptions(args);
    EXPECT_FALSE(options.ok()) << args[0];
    if (!options.ok() && args[0].rfind("--", 0) == 0 && args[0] != "--sector-size=4096") {
      std::string name = args[0].substr(2, args[0].find('=') - 2);
      EXPECT_NE(options.status().ToString().find(name), std::string::npos) << options.status().ToString();
    }
  }
}

TEST(BenchOptionsTest, FormatIsRawOrVhdAndBlankOnlyForVhd) {
  auto defaults = ParseBenchOptions({});
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->format, "raw");
  EXPECT_FALSE(defaults->vhd_blank);
  auto vhd = ParseBenchOptions({"--format=vhd", "--vhd-blank"});
  ASSERT_TRUE(vhd.ok()) << vhd.status().ToString();
  EXPECT_EQ(vhd->format, "vhd");
  EXPECT_TRUE(vhd->vhd_blank);
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--format=qcow2"}, {"--vhd-blank"}, {"--format=vhd", "--vs-fio"}}) {
    auto bad = ParseBenchOptions(args);
    ASSERT_FALSE(bad.ok()) << args[0];
    std::string name = args.back().substr(2, args.back().find('=') - 2);
    EXPECT_NE(bad.status().ToString().find(name), std::string::npos) << bad.status().ToString();
  }
}

// blkbench on VHD: a fully allocated image is laid out for reads, and a blank one allocates as it is written.
TEST(BenchVhdTest, LaysOutAnAllocatedVhdAndMeasuresFirstWritesOnABlankOne) {
  std::string allocated = "/dev/shm/bench_vhd_test." + std::to_string(::getpid()) + ".vhd";
  BenchOptions options;
  options.format = "vhd";
  options.size = 8 << 20;
  options.rw = Pattern::kRandRead;
  options.runtime_s = 0.2;
  options.verify = false;
  auto reads = RunBench(options, allocated);
  ASSERT_TRUE(reads.ok()) << reads.status().ToString();
  EXPECT_GT(reads->read_ios, 100u);
  EXPECT_EQ(reads->io_errors, 0u);
  std::ifstream file(allocated, std::ios::binary | std::ios::ate);
  EXPECT_GT(static_cast<uint64_t>(file.tellg()), options.size) << "the VHD was not laid out";
  ::unlink(allocated.c_str());

  std::string blank = "/dev/shm/bench_vhd_blank_test." + std::to_string(::getpid()) + ".vhd";
  options.vhd_blank = true;
  options.rw = Pattern::kWrite;
  options.bs = 65536;
  options.size = 64 << 20;
  auto writes = RunBench(options, blank);
  ASSERT_TRUE(writes.ok()) << writes.status().ToString();
  EXPECT_GT(writes->write_ios, 10u);
  EXPECT_EQ(writes->io_errors, 0u);
  EXPECT_FALSE(RunBench(options, blank).ok()) << "--vhd-blank must not reuse an existing file";
  ::unlink(blank.c_str());
}

// The guest-side switches end to end: granted buffers (no copy in the guest) and both sides polling, every
// byte written and read back checked.
TEST(BenchRunTest, GrantedBuffersWithBothSidesPollingVerifyEveryByte) {
  auto options = ParseBenchOptions({"--size=8m", "--rw=randrw", "--bs=64k", "--iodepth=8", "--runtime=0.3",
                                    "--verify", "--persistent", "--indirect=32", "--granted-buffers",
                                    "--poll=100", "--frontend-poll=100"});
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  std::string path = "/dev/shm/bench_granted_test." + std::to_string(::getpid());
  auto result = RunBench(*options, path);
  ::unlink(path.c_str());
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_GT(result->read_ios, 10u);
  EXPECT_GT(result->write_ios, 10u);
  EXPECT_GT(result->verified_sectors, 0u);
  EXPECT_EQ(result->verify_errors, 0u) << result->first_problem;
  EXPECT_EQ(result->io_errors, 0u) << result->first_problem;
  // Persistent grants move the data in place: the only copies are of indirect pages, one per request.
  EXPECT_LE(result->ops.copy_segments, result->read_ios + result->write_ios);
}

TEST(BenchOptionsTest, FeatureSwitchesParseAndBadValuesAreRefused) {
  auto options = ParseBenchOptions({"--persistent", "--indirect=256", "--queues", "4", "--iodepth=128"});
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  EXPECT_TRUE(options->persistent);
  EXPECT_EQ(options->indirect, 256u);
  EXPECT_EQ(options->queues, 4u);
  EXPECT_EQ(BenchLanes(*options), 4u);
  EXPECT_EQ(BenchDepthPerLane(*options), 32u);
  auto defaults = ParseBenchOptions({});
  ASSERT_TRUE(defaults.ok());
  EXPECT_FALSE(defaults->persistent);
  EXPECT_EQ(defaults->indirect, 0u);
  EXPECT_EQ(BenchLanes(*defaults), 1u);
  EXPECT_EQ(BenchDepthPerLane(*defaults), 32u);
  auto jobs = ParseBenchOptions({"--numjobs=3", "--iodepth=8", "--persistent=0"});
  ASSERT_TRUE(jobs.ok()) << jobs.status().ToString();
  EXPECT_FALSE(jobs->persistent);
  EXPECT_EQ(BenchLanes(*jobs), 3u);
  EXPECT_EQ(BenchDepthPerLane(*jobs), 8u);
  auto command = FioCommand(*jobs, "/tmp/x");
  EXPECT_NE(std::find(command.begin(), command.end(), "--numjobs=3"), command.end());
  EXPECT_NE(std::find(command.begin(), command.end(), "--group_reporting"), command.end());
  EXPECT_TRUE(ParseBenchOptions({"--indirect=0"}).ok());
  const std::vector<std::vector<std::string>> bad = {{"--indirect=11"},
                                                     {"--indirect=4097"},
                                                     {"--indirect=x"},
                                                     {"--queues=0"},
                                                     {"--queues=17"},
                                                     {"--numjobs=0"},
                                                     {"--persistent=2"},
                                                     {"--queues=2", "--numjobs=2"},
                                                     {"--queues=8", "--iodepth=4"}};
  for (const auto& args : bad) {
    auto parsed = ParseBenchOptions(args);
    EXPECT_FALSE(parsed.ok()) << args[0];
    if (!parsed.ok()) {
      EXPECT_NE(parsed.status().message().find("--"), std::string::npos);
    }
  }
}

TEST(BenchRunTest, PersistentIndirectAndQueuesRunVerifiedWithFewHypercalls) {
  std::string path = "/dev/shm/bench_features_test." + std::to_string(::getpid());
  BenchOptions options;
  options.size = 8 << 20;
  options.rw = Pattern::kRandRw;
  options.bs = 128 << 10;  // 32 pages: indirect requests
  options.iodepth = 8;
  options.runtime_s = 0.3;
  options.verify = true;
  options.persistent = true;
  options.indirect = 64;
  options.queues = 2;
  auto run = RunBench(options, path);
  ::unlink(path.c_str());
  ASSERT_TRUE(run.ok()) << run.status().ToString();
  EXPECT_GT(run->ios(), 20u);
  EXPECT_EQ(run->io_errors, 0u) << run->first_problem;
  EXPECT_EQ(run->verify_errors, 0u) << run->first_problem;
  EXPECT_GT(run->verified_sectors, 0u);
  // Data goes through mapped pages: the only copies left are the indirect pages (one per request).
  EXPECT_LE(run->ops.copy_segments, run->ios() + 1);
  EXPECT_LE(run->ops.map_calls, 2u * 8u * 32u) << "grants were mapped again and again";
}

TEST(BenchOptionsTest, SizesUseBinaryUnits) {
  EXPECT_EQ(*ParseSize("4k"), 4096u);
  EXPECT_EQ(*ParseSize("4K"), 4096u);
  EXPECT_EQ(*ParseSize("1m"), 1u << 20);
  EXPECT_EQ(*ParseSize("2g"), 2ull << 30);
  EXPECT_EQ(*ParseSize("1t"), 1ull << 40);
  EXPECT_EQ(*ParseSize("512"), 512u);
  EXPECT_FALSE(ParseSize("").ok());
  EXPECT_FALSE(ParseSize("-4k").ok());
  EXPECT_FALSE(ParseSize("4kk").ok());
}

TEST(LatencyHistogramTest, PercentilesAreWithinThreePercent) {
  LatencyHistogram histogram;
  std::mt19937_64 random(7);
  std::vector<uint64_t> values;
  for (int i = 0; i < 100000; ++i) {
    uint64_t v = 1000 + random() % 1000000;
    values.push_back(v);
    histogram.Record(v);
  }
  std::sort(values.begin(), values.end());
  for (double p : {50.0, 99.0, 99.9}) {
    double exact = static_cast<double>(values[static_cast<size_t>(p / 100 * values.size()) - 1]);
    double got = static_cast<double>(histogram.PercentileNs(p));
    EXPECT_NEAR(got, exact, exact * 0.035) << p;
  }
  EXPECT_EQ(histogram.count(), 100000u);
  EXPECT_EQ(histogram.PercentileNs(100), histogram.max());
  LatencyHistogram small;
  small.Record(3);
  EXPECT_EQ(small.PercentileNs(50), 3u);
  EXPECT_EQ(LatencyHistogram().PercentileNs(50), 0u);
}

// Runs the real fio for a moment and reads its real JSON.
TEST(FioRunnerTest, RunsFioAndReadsItsResult) {
  std::string path = "/dev/shm/fio_runner_test." + std::to_string(::getpid());
  {
    std::ofstream file(path);
    file << std::string(1 << 20, 'x');
  }
  BenchOptions options;
  options.size = 1 << 20;
  options.rw = Pattern::kRandRead;
  options.iodepth = 4;
  options.runtime_s = 0.3;
  options.direct = false;
  auto result = RunFio(options, path);
  ::unlink(path.c_str());
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_GT(result->iops, 1000);
  EXPECT_GT(result->mib_per_s, 1);
  EXPECT_GT(result->lat_p99_us, 0);
  EXPECT_GE(result->lat_p99_us, result->lat_p50_us);
  EXPECT_NE(result->command.find("--iodepth=4"), std::string::npos);
}

TEST(FioRunnerTest, RuntimeGoesInMilliseconds) {
  auto options = ParseBenchOptions({"--runtime=2.5", "--vs-fio", "--rounds=5"});
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  EXPECT_EQ(options->rounds, 5u);
  auto command = FioCommand(*options, "/tmp/x");
  EXPECT_NE(std::find(command.begin(), command.end(), "--runtime=2500ms"), command.end());
}

TEST(FioRunnerTest, CombinesRunsAveragingRatesAndWeightingLatenciesByIops) {
  FioResult slow{.iops = 100,
                 .mib_per_s = 1,
                 .lat_p50_us = 10,
                 .lat_p99_us = 20,
                 .lat_p999_us = 40,
                 .cpu_us_per_io = 8,
                 .command = "fio x"};
  FioResult fast{.iops = 300,
                 .mib_per_s = 3,
                 .lat_p50_us = 30,
                 .lat_p99_us = 60,
                 .lat_p999_us = 80,
                 .cpu_us_per_io = 4,
                 .command = "fio x"};
  FioResult both = CombineFioRuns({slow, fast});
  EXPECT_DOUBLE_EQ(both.iops, 200);
  EXPECT_DOUBLE_EQ(both.mib_per_s, 2);
  EXPECT_DOUBLE_EQ(both.lat_p50_us, 25);
  EXPECT_DOUBLE_EQ(both.lat_p99_us, 50);
  EXPECT_DOUBLE_EQ(both.lat_p999_us, 70);
  EXPECT_DOUBLE_EQ(both.cpu_us_per_io, 5);
  EXPECT_NE(both.command.find("2 runs"), std::string::npos) << both.command;
  EXPECT_EQ(CombineFioRuns({slow}).command, "fio x");
}

// blkbench and fio take turns: blkbench's rounds add up to the whole runtime, fio ran once per round.
TEST(FioRunnerTest, TakingTurnsSumsBlkbenchsRoundsAndCombinesFiosRuns) {
  auto options = ParseBenchOptions(
      {"--size=8m", "--rw=randread", "--iodepth=8", "--runtime=0.9", "--direct=0", "--vs-fio", "--rounds=3"});
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  const std::string path = "/dev/shm/blkbench_turns_test." + std::to_string(::getpid());
  std::optional<FioResult> fio;
  Status fio_status;
  auto result = RunTakingTurns(*options, path, &fio, &fio_status);
  ::unlink(path.c_str());
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  ASSERT_TRUE(fio_status.ok()) << fio_status.ToString();
  EXPECT_NEAR(result->seconds, 0.9, 0.25) << "the rounds' seconds were not added up";
  EXPECT_GT(result->read_ios, 0u);
  EXPECT_EQ(result->latency.count(), result->ios()) << "a round's latencies were lost";
  ASSERT_TRUE(fio.has_value());
  EXPECT_GT(fio->iops, 0);
  EXPECT_NE(fio->command.find("--runtime=300ms"), std::string::npos) << fio->command;
  EXPECT_NE(fio->command.find("3 runs"), std::string::npos) << fio->command;
}

TEST(FioRunnerTest, RejectsOutputThatIsNotAJobResult) {
  EXPECT_FALSE(ParseFioJson("").ok());
  EXPECT_FALSE(ParseFioJson("{\"jobs\": []}").ok());
  EXPECT_FALSE(ParseFioJson("{\"jobs\": [").ok());
  auto empty_job = ParseFioJson("{\"jobs\": [{}]}");
  ASSERT_TRUE(empty_job.ok());
  EXPECT_EQ(empty_job->iops, 0);
}

}  // namespace
}  // namespace blk
