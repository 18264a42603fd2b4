// Tests of the control protocol's pure functions: every request form, every malformed line, replies, and the
// latency histogram the statistics report.
#include "backend/control_protocol.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "backend/device_stats.h"

namespace blk {
namespace {

ControlRequest Parsed(const std::string& line) {
  Result<ControlRequest> request = ParseControlRequest(line);
  EXPECT_TRUE(request.ok()) << line << ": " << request.status().ToString();
  return request.ok() ? *request : ControlRequest{};
}

std::string Refusal(const std::string& line) {
  Result<ControlRequest> request = ParseControlRequest(line);
  EXPECT_FALSE(request.ok()) << line;
  if (request.ok()) return "";
  EXPECT_EQ(request.status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(request.status().message().find('\n'), std::string::npos);
  return request.status().message();
}

TEST(ControlProtocolTest, ParsesEveryCommand) {
  EXPECT_EQ(Parsed("list").command, ControlCommand::kList);
  ControlRequest stats = Parsed("stats");
  EXPECT_EQ(stats.command, ControlCommand::kStats);
  EXPECT_TRUE(stats.device.empty());
  EXPECT_FALSE(stats.json);
  stats = Parsed("stats --json 1/51712");
  EXPECT_EQ(stats.device, "1/51712");
  EXPECT_TRUE(stats.json);
  ControlRequest pause = Parsed("pause 0/768");
  EXPECT_EQ(pause.command, ControlCommand::kPause);
  EXPECT_EQ(pause.device, "0/768");
  EXPECT_EQ(pause.timeout_ms, kDefaultPauseTimeoutMs);
  EXPECT_EQ(Parsed("pause 1/51712 --timeout 250").timeout_ms, 250u);
  EXPECT_EQ(Parsed("pause 1/51712 --timeout=3600000").timeout_ms, 3600000u);
  EXPECT_EQ(Parsed("resume 32751/2147483647").device, "32751/2147483647");
  ControlRequest resize = Parsed("resize 1/51712 2G");
  EXPECT_EQ(resize.command, ControlCommand::kResize);
  EXPECT_EQ(resize.size_bytes, 2ull << 30);
  EXPECT_EQ(Parsed("resize 1/51712 1048576").size_bytes, 1048576u);
  ControlRequest swap = Parsed("resume 1/51712 --image vhd:/images/new.vhd");
  EXPECT_EQ(swap.command, ControlCommand::kResume);
  EXPECT_EQ(swap.image, "vhd:/images/new.vhd");
  EXPECT_EQ(Parsed("resume 1/51712 --image=raw:/d.img").image, "raw:/d.img");
  EXPECT_TRUE(Parsed("resume 1/51712").image.empty());
  ControlRequest snapshot = Parsed("snapshot 1/51712 /images/child.vhd");
  EXPECT_EQ(snapshot.command, ControlCommand::kSnapshot);
  EXPECT_EQ(snapshot.device, "1/51712");
  EXPECT_EQ(snapshot.image, "/images/child.vhd");
  EXPECT_EQ(snapshot.timeout_ms, kDefaultPauseTimeoutMs);
  EXPECT_EQ(Parsed("snapshot 1/51712 /c.vhd --timeout 40").timeout_ms, 40u);
  // Extra spaces and a CRLF line ending (nc, socat) are tolerated.
  EXPECT_EQ(Parsed("  stats   1/51712  \r").device, "1/51712");
}

TEST(ControlProtocolTest, FormattedRequestsParseBack) {
  for (std::string line :
       {"list", "stats", "stats 3/5 --json", "pause 1/51712 --timeout 7", "resume 1/2", "resize 4/5 4096",
        "resume 1/2 --image vhd:/x.vhd", "snapshot 1/2 /c.vhd --timeout 9"}) {
    ControlRequest request = Parsed(line);
    ControlRequest again = Parsed(FormatControlRequest(request));
    EXPECT_EQ(again.command, request.command) << line;
    EXPECT_EQ(again.device, request.device) << line;
    EXPECT_EQ(again.json, request.json) << line;
    EXPECT_EQ(again.timeout_ms, request.timeout_ms) << line;
    EXPECT_EQ(again.size_bytes, request.size_bytes) << line;
    EXPECT_EQ(again.image, request.image) << line;
  }
}

TEST(ControlProtocolTest, RefusesMalformedLinesWithOneClearLine) {
  EXPECT_EQ(Refusal(""), "empty request (list, stats, pause, resume, resize, snapshot)");
  EXPECT_EQ(Refusal("   "), "empty request (list, stats, pause, resume, resize, snapshot)");
  EXPECT_EQ(Refusal("LIST"), "unknown command 'LIST' (list, stats, pause, resume, resize, snapshot)");
  EXPECT_EQ(Refusal("snapshot 1/51712"), "snapshot needs a child path (CHILD.vhd)");
  EXPECT_EQ(Refusal("snapshot 1/51712 --timeout 5"), "snapshot needs a child path (CHILD.vhd)");
  EXPECT_EQ(Refusal("snapshot 1/51712 /c.vhd d.vhd"), "unexpected 'd.vhd' after snapshot (--timeout MS)");
  // The daemon's working directory is not the operator's: relative paths are refused.
  EXPECT_EQ(Refusal("snapshot 1/51712 c.vhd"),
            "snapshot: 'c.vhd' is relative; the daemon needs an absolute path");
  EXPECT_EQ(Refusal("resume 1/51712 --image vhd:images/n.vhd"),
            "--image 'vhd:images/n.vhd' is relative; the daemon needs an absolute path");
  EXPECT_EQ(Refusal("resume 1/51712 --image=n.img"),
            "--image 'n.img' is relative; the daemon needs an absolute path");
  EXPECT_EQ(Refusal("resume 1/51712 --image"), "--image needs an image (vhd:PATH, raw:PATH or PATH)");
  EXPECT_EQ(Refusal("resume 1/51712 --image="), "--image needs an image (vhd:PATH, raw:PATH or PATH)");
  EXPECT_EQ(Refusal("resume 1/51712 now"), "unexpected 'now' after resume DEVICE (--image IMAGE)");
  EXPECT_EQ(Refusal("list 1/51712"), "unexpected '1/51712' after list");
  EXPECT_EQ(Refusal("pause"), "pause needs a device (DOMID/DEVID)");
  EXPECT_EQ(Refusal("resume"), "resume needs a device (DOMID/DEVID)");
  EXPECT_EQ(Refusal("resize 1/51712"), "resize needs a size (bytes, or with K, M, G, T)");
  EXPECT_EQ(Refusal("resize 1/51712 1M now"), "unexpected 'now' after resize");
  EXPECT_EQ(Refusal("pause 1/51712 --timeout"), "--timeout needs a number of milliseconds");
  EXPECT_EQ(Refusal("pause 1/51712 --timeout 0"), "bad --timeout '0': milliseconds from 1 to 3600000");
  EXPECT_EQ(Refusal("pause 1/51712 --timeout 3600001"),
            "bad --timeout '3600001': milliseconds from 1 to 3600000");
  EXPECT_EQ(Refusal("pause 1/51712 --timeout -5"), "bad --timeout '-5': milliseconds from 1 to 3600000");
  EXPECT_EQ(Refusal("pause 1/51712 --force"), "unexpected '--force' after pause (--timeout MS)");
  EXPECT_EQ(Refusal("stats --json --json"), "--json given twice");
  EXPECT_EQ(Refusal("stats --xml"), "unknown option '--xml' of stats (--json)");
  EXPECT_EQ(Refusal("stats 1/2 3/4"), "stats takes at most one device");
  EXPECT_EQ(Refusal("list\tnow"), "request holds a byte 0x09 that is not printable ASCII");
  EXPECT_EQ(Refusal(std::string("list\0", 5)), "request holds a byte 0x00 that is not printable ASCII");
  EXPECT_EQ(Refusal("stats \xff"), "request holds a byte 0xff that is not printable ASCII");
  EXPECT_EQ(Refusal(std::string(kMaxControlLine + 1, 'a')), "request longer than 1024 bytes");
  EXPECT_EQ(Refusal("a b c d e f g h i"), "too many words in the request");
  // A long bad word is quoted back only in part.
  std::string long_word(200, 'z');
  EXPECT_EQ(Refusal(long_word), "unknown command '" + std::string(48, 'z') +
                                    "...' (list, stats, pause, resume, resize, snapshot)");
}

TEST(ControlProtocolTest, DeviceNamesAreStrict) {
  for (const char* bad : {"1", "1/", "/5", "a/5", "1/b", "01/5", "1/05", "-1/5", "1/5/6", "32752/1",
                          "1/2147483648", "99999999999999999999/1", "1 /5"}) {
    EXPECT_FALSE(ParseDeviceName(bad).ok()) << bad;
  }
  Result<DeviceName> name = ParseDeviceName("32751/0");
  ASSERT_TRUE(name.ok());
  EXPECT_EQ(name->domid, 32751u);
  EXPECT_EQ(name->devid, 0u);
  EXPECT_EQ(Refusal("pause 1/051712"),
            "bad device '1/051712': expected DOMID/DEVID as list prints it, e.g. 1/51712");
}

TEST(ControlProtocolTest, SizesAreBoundedAndSuffixed) {
  EXPECT_EQ(*ParseControlSize("0"), 0u);
  EXPECT_EQ(*ParseControlSize("512"), 512u);
  EXPECT_EQ(*ParseControlSize("4k"), 4096u);
  EXPECT_EQ(*ParseControlSize("3M"), 3u << 20);
  EXPECT_EQ(*ParseControlSize("1T"), 1ull << 40);
  EXPECT_EQ(*ParseControlSize("4194304T"), 1ull << 62);
  for (const char* bad : {"", "k", "1.5G", "1KB", "-1", "+1", "4194305T", "4611686018427387905", "1e9",
                          "18446744073709551616", "0x10"}) {
    EXPECT_FALSE(ParseControlSize(bad).ok()) << bad;
  }
}

TEST(ControlProtocolTest, RepliesEndWhereTheySay) {
  EXPECT_EQ(FormatOkReply({}), "ok 0\n");
  EXPECT_EQ(FormatOkReply({"a", "b\nc"}), "ok 2\na\nb?c\n");
  EXPECT_EQ(FormatErrorReply("no\ndevice"), "error no?device\n");
  EXPECT_EQ(FormatErrorReply(""), "error unknown failure\n");
  Result<ControlReplyHead> ok = ParseControlReplyHead("ok 3");
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(ok->ok);
  EXPECT_EQ(ok->lines, 3u);
  Result<ControlReplyHead> error = ParseControlReplyHead("error 1/51712 is not paused");
  ASSERT_TRUE(error.ok());
  EXPECT_FALSE(error->ok);
  EXPECT_EQ(error->message, "1/51712 is not paused");
  for (const char* bad :
       {"", "ok", "ok ", "ok -1", "ok 65537", "ok 1 2", "error", "error ", "OK 1", "fine"}) {
    EXPECT_FALSE(ParseControlReplyHead(bad).ok()) << bad;
  }
}

TEST(ControlProtocolTest, GreetingIsVersioned) {
  std::string greeting = ControlGreeting();
  EXPECT_EQ(greeting, "blkbackd-control 1\n");
  EXPECT_TRUE(CheckControlGreeting(greeting.substr(0, greeting.size() - 1)).ok());
  Status newer = CheckControlGreeting("blkbackd-control 2");
  EXPECT_EQ(newer.code(), Status::Code::kNotSupported);
  EXPECT_EQ(newer.message(), "the daemon speaks control protocol 2, this client 1");
  EXPECT_EQ(CheckControlGreeting("SSH-2.0-OpenSSH").code(), Status::Code::kProtocolError);
  EXPECT_EQ(CheckControlGreeting("blkbackd-control x").code(), Status::Code::kProtocolError);
  Status refused = CheckControlGreeting("error permission denied: uid 5");
  EXPECT_EQ(refused.code(), Status::Code::kPermissionDenied);
  EXPECT_EQ(refused.message(), "permission denied: uid 5");
}

TEST(ControlProtocolTest, ListAndStatsFormatsSplitBackIntoFields) {
  ControlDeviceInfo info;
  info.name = "1/51712";
  info.state = "connected";
  info.io = "paused";
  info.images = {"/var/lib/a disk,1.img", "/b.img"};
  info.features = {"flush-cache", "ring-pages=4"};
  info.queues = 2;
  info.size_bytes = 4096;
  std::vector<std::string> lines = FormatDeviceList({info});
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0],
            "1/51712 state=connected io=paused size=4096 queues=2 features=flush-cache,ring-pages=4 "
            "images=/var/lib/a\\x20disk\\x2c1.img,/b.img");
  ControlDeviceStats stats;
  stats.name = "1/51712";
  stats.io = "running";
  stats.rd_req = 5;
  stats.latency_p50_ns = 1500;
  stats.latency_count = 5;
  lines = FormatDeviceStats({stats, stats}, /*json=*/true);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(
      lines[0].find("{\"version\":1,\"devices\":[{\"device\":\"1/51712\",\"io\":\"running\",\"oo_req\":0,"
                    "\"rd_req\":5,"),
      0u);
  EXPECT_NE(lines[0].find("\"latency_us\":{\"count\":5,\"p50\":2,"), std::string::npos);
  EXPECT_NE(lines[0].find("}},{\"device\""), std::string::npos);
  lines = FormatDeviceStats({stats}, /*json=*/false);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].find("1/51712 io=running in_flight=0 oo_req=0 rd_req=5 "), 0u);
  EXPECT_NE(FormatStatsFile(stats).find("rd_req 5\n"), std::string::npos);
}

// Every line a peer might send is either parsed or refused: never a crash, always one line back.
TEST(ControlProtocolTest, RandomLinesNeverCrash) {
  std::mt19937_64 random(42);
  const std::string alphabet = "lisrtpaumezj0123456789/- -\t\r\n\x01\xff";
  const char* words[] = {"list",    "stats",  "pause",     "resume", "resize",
                         "1/51712", "--json", "--timeout", "5",      "4K"};
  for (int i = 0; i < 20000; ++i) {
    std::string line;
    size_t length = random() % 64;
    while (line.size() < length) {
      if (random() % 3 == 0) {
        line += words[random() % std::size(words)];
        line += ' ';
      } else {
        line += alphabet[random() % alphabet.size()];
      }
    }
    Result<ControlRequest> request = ParseControlRequest(line);
    if (request.ok()) {
      EXPECT_TRUE(ParseControlRequest(FormatControlRequest(*request)).ok()) << line;
    } else {
      EXPECT_EQ(request.status().message().find('\n'), std::string::npos) << line;
    }
  }
}

TEST(LatencyBucketsTest, PercentilesAreUpperBoundsWithinAQuarter) {
  LatencyBuckets buckets;
  for (uint64_t ns = 1; ns <= 1000; ++ns) buckets.Record(ns * 1000);  // 1 us .. 1 ms, uniform
  std::array<uint64_t, LatencyBuckets::kBuckets> totals{};
  uint64_t max_ns = 0;
  buckets.AddTo(totals, max_ns);
  LatencySummary summary = LatencyBuckets::Summarize(totals, max_ns);
  EXPECT_EQ(summary.count, 1000u);
  EXPECT_EQ(summary.max_ns, 1000000u);
  EXPECT_GE(summary.p50_ns, 500000u);
  EXPECT_LE(summary.p50_ns, 625000u);
  EXPECT_GE(summary.p99_ns, 990000u);
  EXPECT_LE(summary.p99_ns, 1000000u);  // capped at the maximum seen
  for (uint64_t value : {0ull, 1ull, 3ull, 4ull, 5ull, 1000ull, 123456789ull, ~0ull}) {
    unsigned bucket = LatencyBuckets::BucketOf(value);
    ASSERT_LT(bucket, LatencyBuckets::kBuckets) << value;
    EXPECT_GE(LatencyBuckets::UpperBoundOf(bucket), value);
    if (bucket > 0) {
      EXPECT_LT(LatencyBuckets::UpperBoundOf(bucket - 1), value);
    }
  }
  EXPECT_EQ(LatencyBuckets::Summarize({}, 0).count, 0u);
}

}  // namespace
}  // namespace blk
