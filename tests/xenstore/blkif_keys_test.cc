// Tests of xenstore/blkif_keys.cc: every malformed toolstack or frontend value fails with the key's path.
#include "xenstore/blkif_keys.h"

#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tests/xenstore/xs_test_util.h"

namespace blk {
namespace {

using Keys = std::map<std::string, std::string>;

const std::string kFrontend = "/local/domain/5/device/vbd/768";
const std::string kBackend = "/local/domain/0/backend/vbd/5/768";

// A KeyReader over `keys`, which are relative to `base`.
KeyReader MapReader(const Keys& keys, const std::string& base) {
  return KeyReader(base, [&keys, base](const std::string& path) -> Result<std::string> {
    if (!path.starts_with(base + "/")) return Status::InvalidArgument("read outside " + base + ": " + path);
    auto it = keys.find(path.substr(base.size() + 1));
    if (it == keys.end()) return Status::NotFound(path);
    return it->second;
  });
}

// A change to a valid key set: a value to set, or nullopt to delete the key.
using Edits = std::vector<std::pair<std::string, std::optional<std::string>>>;

Keys Apply(Keys keys, const Edits& edits) {
  for (const auto& [key, value] : edits) {
    if (value) {
      keys[key] = *value;
    } else {
      keys.erase(key);
    }
  }
  return keys;
}

TEST(ParseXsDecimalTest, AcceptsWhatBlkfrontWritesOnly) {
  EXPECT_EQ(ParseXsDecimal("0", 10, "/k").value(), 0u);
  EXPECT_EQ(ParseXsDecimal("4294967295", UINT32_MAX, "/k").value(), UINT32_MAX);
  EXPECT_EQ(ParseXsDecimal("18446744073709551615", UINT64_MAX, "/k").value(), UINT64_MAX);
  for (const char* bad : {"", "-1", "+1", " 1", "1 ", "1\n", "0x10", "010", "1e3", "1.0", "4294967296",
                          "18446744073709551616", "99999999999999999999999999"}) {
    Result<uint64_t> parsed = ParseXsDecimal(bad, UINT32_MAX, "/the/key");
    ASSERT_FALSE(parsed.ok()) << '"' << bad << '"';
    EXPECT_EQ(parsed.status().code(), Status::Code::kInvalidArgument);
    EXPECT_EQ(parsed.status().message().rfind("/the/key: ", 0), 0u) << parsed.status().ToString();
  }
  EXPECT_FALSE(ParseXsDecimal(std::string("1\0", 2), 10, "/k").ok());
  // Bounds below ten: a single digit can already exceed them.
  EXPECT_EQ(ParseXsDecimal("8", 8, "/k").value(), 8u);
  EXPECT_FALSE(ParseXsDecimal("9", 8, "/k").ok());
  EXPECT_FALSE(ParseXsDecimal("1", 0, "/k").ok());
  EXPECT_EQ(ParseXsDecimal("10", 10, "/k").value(), 10u);
  EXPECT_FALSE(ParseXsDecimal("11", 10, "/k").ok());
}

TEST(ParseXsDecimalTest, ErrorQuotesHostileValuesShortAndPrintable) {
  std::string hostile = "\x1b[31m" + std::string(5000, 'A');
  Result<uint64_t> parsed = ParseXsDecimal(hostile, 10, "/k");
  ASSERT_FALSE(parsed.ok());
  EXPECT_LT(parsed.status().message().size(), 120u);
  EXPECT_EQ(parsed.status().message().find('\x1b'), std::string::npos);
  EXPECT_NE(parsed.status().message().find("\\x1b"), std::string::npos);
}

TEST(ParseXenbusStateTest, AllStatesAndNothingElse) {
  EXPECT_EQ(ParseXenbusState("0", "/s").value(), XenbusStateUnknown);
  EXPECT_EQ(ParseXenbusState("3", "/s").value(), XenbusStateInitialised);
  EXPECT_EQ(ParseXenbusState("8", "/s").value(), XenbusStateReconfigured);
  for (const char* bad : {"9", "-1", "", "4 ", "04", "Connected", "4294967300"}) {
    Result<XenbusState> state = ParseXenbusState(bad, "/fe/state");
    ASSERT_FALSE(state.ok()) << bad;
    EXPECT_EQ(state.status().message().rfind("/fe/state: ", 0), 0u);
  }
}

TEST(ParseDiskParamsTest, KnownFormatsAndBarePaths) {
  struct Case {
    const char* params;
    DiskFormat format;
    const char* path;
    bool probe;  // a bare path: the backend looks at the file to know its format
  };
  for (const Case& c : {Case{"/dev/vg/guest", DiskFormat::kRaw, "/dev/vg/guest", true},
                        Case{"aio:/images/a.img", DiskFormat::kRaw, "/images/a.img", false},
                        Case{"raw:/images/a.img", DiskFormat::kRaw, "/images/a.img", false},
                        Case{"vhd:/images/a.vhd", DiskFormat::kVhd, "/images/a.vhd", false},
                        Case{"/images/with:colon.img", DiskFormat::kRaw, "/images/with:colon.img", true}}) {
    Result<DiskParams> disk = ParseDiskParams(c.params);
    ASSERT_TRUE(disk.ok()) << c.params << ": " << disk.status().ToString();
    EXPECT_EQ(*disk, (DiskParams{c.format, c.path, c.probe})) << c.params;
  }
}

TEST(ParseDiskParamsTest, UnknownPrefixesAndNonAbsolutePathsFail) {
  struct Case {
    const char* params;
    Status::Code code;
  };
  for (const Case& c :
       {Case{"qcow2:/images/a.qcow2", Status::Code::kNotSupported},
        Case{"tapdisk:aio:/images/a.img", Status::Code::kNotSupported},
        Case{"file:/images/a.img", Status::Code::kNotSupported},
        Case{"aio:images/a.img", Status::Code::kInvalidArgument},
        Case{"aio:", Status::Code::kInvalidArgument}, Case{"images/a.img", Status::Code::kInvalidArgument},
        Case{"", Status::Code::kInvalidArgument}}) {
    Result<DiskParams> disk = ParseDiskParams(c.params);
    ASSERT_FALSE(disk.ok()) << c.params;
    EXPECT_EQ(disk.status().code(), c.code) << c.params << ": " << disk.status().ToString();
  }
  EXPECT_FALSE(ParseDiskParams(std::string("aio:/a\0b", 8)).ok());
}

const Keys kValidBackend = {{"params", "aio:/images/guest.img"},
                            {"mode", "w"},
                            {"device-type", "disk"},
                            {"frontend", kFrontend},
                            {"frontend-id", "5"},
                            {"online", "1"}};

TEST(ReadBackendConfigTest, ReadsWhatLibxlWrites) {
  Result<BackendConfig> config = ReadBackendConfig(MapReader(kValidBackend, kBackend));
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->disk, (DiskParams{DiskFormat::kRaw, "/images/guest.img"}));
  EXPECT_TRUE(config->writable);
  EXPECT_FALSE(config->shared_writable);
  EXPECT_EQ(config->device_type, DeviceType::kDisk);
  EXPECT_EQ(config->frontend_path, kFrontend);
  EXPECT_EQ(config->frontend_id, 5u);
  EXPECT_TRUE(config->online);
}

TEST(ReadBackendConfigTest, OptionalKeysAndVariants) {
  Keys keys = Apply(kValidBackend, {{"device-type", std::nullopt}, {"online", std::nullopt}, {"mode", "r"}});
  Result<BackendConfig> config = ReadBackendConfig(MapReader(keys, kBackend));
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->device_type, DeviceType::kDisk);
  EXPECT_TRUE(config->online);
  EXPECT_FALSE(config->writable);

  keys = Apply(kValidBackend,
               {{"device-type", "cdrom"}, {"online", "0"}, {"mode", "w!"}, {"params", "vhd:/a.vhd"}});
  config = ReadBackendConfig(MapReader(keys, kBackend));
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->device_type, DeviceType::kCdrom);
  EXPECT_FALSE(config->online);
  EXPECT_TRUE(config->writable && config->shared_writable);
  EXPECT_EQ(config->disk.format, DiskFormat::kVhd);
}

struct BadKeyCase {
  const char* name;
  Edits edits;
  Status::Code code;
  const char* key;  // the error must name this key's full path
};

TEST(ReadBackendConfigTest, EveryBadValueFailsNamingTheKey) {
  const std::vector<BadKeyCase> cases = {
      {"missing params", {{"params", std::nullopt}}, Status::Code::kNotFound, "params"},
      {"unknown format", {{"params", "qcow2:/a"}}, Status::Code::kNotSupported, "params"},
      {"relative image", {{"params", "aio:a.img"}}, Status::Code::kInvalidArgument, "params"},
      {"missing mode", {{"mode", std::nullopt}}, Status::Code::kNotFound, "mode"},
      {"mode rw", {{"mode", "rw"}}, Status::Code::kInvalidArgument, "mode"},
      {"mode empty", {{"mode", ""}}, Status::Code::kInvalidArgument, "mode"},
      {"floppy", {{"device-type", "floppy"}}, Status::Code::kInvalidArgument, "device-type"},
      {"missing frontend-id", {{"frontend-id", std::nullopt}}, Status::Code::kNotFound, "frontend-id"},
      {"negative frontend-id", {{"frontend-id", "-5"}}, Status::Code::kInvalidArgument, "frontend-id"},
      {"reserved domid", {{"frontend-id", "32752"}}, Status::Code::kInvalidArgument, "frontend-id"},
      {"missing frontend", {{"frontend", std::nullopt}}, Status::Code::kNotFound, "frontend"},
      {"other domain's frontend",
       {{"frontend", "/local/domain/6/device/vbd/768"}},
       Status::Code::kInvalidArgument,
       "frontend"},
      {"frontend is the domain",
       {{"frontend", "/local/domain/5"}},
       Status::Code::kInvalidArgument,
       "frontend"},
      {"dotted frontend",
       {{"frontend", "/local/domain/5/../0/x"}},
       Status::Code::kInvalidArgument,
       "frontend"},
      {"online 2", {{"online", "2"}}, Status::Code::kInvalidArgument, "online"},
  };
  for (const BadKeyCase& c : cases) {
    Keys keys = Apply(kValidBackend, c.edits);
    Result<BackendConfig> config = ReadBackendConfig(MapReader(keys, kBackend));
    ASSERT_FALSE(config.ok()) << c.name;
    EXPECT_EQ(config.status().code(), c.code) << c.name << ": " << config.status().ToString();
    EXPECT_NE(config.status().message().find(kBackend + "/" + c.key), std::string::npos)
        << c.name << ": " << config.status().ToString();
  }
}

const TransportLimits kLimits{/*max_ring_page_order=*/4, /*max_queues=*/4};
const Keys kSinglePage = {{"ring-ref", "8"}, {"event-channel", "17"}, {"protocol", "x86_64-abi"}};
const Keys kMultiPage = {{"ring-page-order", "2"},   {"ring-ref0", "8"},         {"ring-ref1", "9"},
                         {"ring-ref2", "10"},        {"ring-ref3", "11"},        {"event-channel", "17"},
                         {"protocol", "x86_32-abi"}, {"feature-persistent", "1"}};
const Keys kMultiQueue = {{"multi-queue-num-queues", "2"}, {"ring-page-order", "1"},
                          {"queue-0/ring-ref0", "8"},      {"queue-0/ring-ref1", "9"},
                          {"queue-0/event-channel", "17"}, {"queue-1/ring-ref0", "10"},
                          {"queue-1/ring-ref1", "11"},     {"queue-1/event-channel", "18"},
                          {"protocol", "x86_64-abi"},      {"feature-large-sector-size", "1"}};

TEST(ReadFrontendTransportTest, SinglePageWithDefaults) {
  Keys keys = Apply(kSinglePage, {{"protocol", std::nullopt}});
  Result<FrontendTransport> transport = ReadFrontendTransport(MapReader(keys, kFrontend), kLimits);
  ASSERT_TRUE(transport.ok()) << transport.status().ToString();
  EXPECT_EQ(transport->ring_page_order, 0u);
  ASSERT_EQ(transport->queues.size(), 1u);
  EXPECT_EQ(transport->queues[0], (QueueTransport{{8}, 17}));
  EXPECT_EQ(transport->protocol, "x86_64-abi");  // native on this 64-bit build
  EXPECT_FALSE(transport->persistent);
  EXPECT_FALSE(transport->large_sector_size);
}

TEST(ReadFrontendTransportTest, MultiPageRing) {
  Result<FrontendTransport> transport = ReadFrontendTransport(MapReader(kMultiPage, kFrontend), kLimits);
  ASSERT_TRUE(transport.ok()) << transport.status().ToString();
  EXPECT_EQ(transport->ring_page_order, 2u);
  ASSERT_EQ(transport->queues.size(), 1u);
  EXPECT_EQ(transport->queues[0], (QueueTransport{{8, 9, 10, 11}, 17}));
  EXPECT_EQ(transport->protocol, "x86_32-abi");
  EXPECT_TRUE(transport->persistent);
}

TEST(ReadFrontendTransportTest, MultiQueue) {
  Result<FrontendTransport> transport = ReadFrontendTransport(MapReader(kMultiQueue, kFrontend), kLimits);
  ASSERT_TRUE(transport.ok()) << transport.status().ToString();
  ASSERT_EQ(transport->queues.size(), 2u);
  EXPECT_EQ(transport->queues[0], (QueueTransport{{8, 9}, 17}));
  EXPECT_EQ(transport->queues[1], (QueueTransport{{10, 11}, 18}));
  EXPECT_TRUE(transport->large_sector_size);
}

TEST(ReadFrontendTransportTest, OneQueueMeansTopLevelKeysAsInBlkback) {
  Keys keys = Apply(kSinglePage, {{"multi-queue-num-queues", "1"}});
  Result<FrontendTransport> transport = ReadFrontendTransport(MapReader(keys, kFrontend), kLimits);
  ASSERT_TRUE(transport.ok()) << transport.status().ToString();
  EXPECT_EQ(transport->queues.size(), 1u);
}

TEST(ReadFrontendTransportTest, EveryMalformedValueFailsNamingTheKey) {
  using C = Status::Code;
  const std::vector<std::pair<const Keys*, BadKeyCase>> cases = {
      {&kSinglePage, {"negative ref", {{"ring-ref", "-1"}}, C::kInvalidArgument, "ring-ref"}},
      {&kSinglePage, {"plus ref", {{"ring-ref", "+8"}}, C::kInvalidArgument, "ring-ref"}},
      {&kSinglePage, {"hex ref", {{"ring-ref", "0x8"}}, C::kInvalidArgument, "ring-ref"}},
      {&kSinglePage, {"junk after ref", {{"ring-ref", "8junk"}}, C::kInvalidArgument, "ring-ref"}},
      {&kSinglePage, {"newline ref", {{"ring-ref", "8\n"}}, C::kInvalidArgument, "ring-ref"}},
      {&kSinglePage, {"empty ref", {{"ring-ref", ""}}, C::kInvalidArgument, "ring-ref"}},
      {&kSinglePage, {"ref over 32 bits", {{"ring-ref", "4294967296"}}, C::kInvalidArgument, "ring-ref"}},
      {&kSinglePage,
       {"huge ref", {{"ring-ref", "999999999999999999999999"}}, C::kInvalidArgument, "ring-ref"}},
      {&kSinglePage, {"missing ref", {{"ring-ref", std::nullopt}}, C::kNotFound, "ring-ref"}},
      {&kSinglePage, {"port 0", {{"event-channel", "0"}}, C::kInvalidArgument, "event-channel"}},
      {&kSinglePage, {"port too big", {{"event-channel", "131072"}}, C::kInvalidArgument, "event-channel"}},
      {&kSinglePage, {"negative port", {{"event-channel", "-17"}}, C::kInvalidArgument, "event-channel"}},
      {&kSinglePage, {"missing port", {{"event-channel", std::nullopt}}, C::kNotFound, "event-channel"}},
      {&kSinglePage, {"arm protocol", {{"protocol", "arm-abi"}}, C::kNotSupported, "protocol"}},
      {&kSinglePage, {"empty protocol", {{"protocol", ""}}, C::kNotSupported, "protocol"}},
      {&kSinglePage, {"junk protocol", {{"protocol", "x86_64-abi "}}, C::kNotSupported, "protocol"}},
      {&kSinglePage,
       {"persistent 2", {{"feature-persistent", "2"}}, C::kInvalidArgument, "feature-persistent"}},
      {&kSinglePage,
       {"persistent yes", {{"feature-persistent", "yes"}}, C::kInvalidArgument, "feature-persistent"}},
      {&kSinglePage,
       {"large sector 01",
        {{"feature-large-sector-size", "01"}},
        C::kInvalidArgument,
        "feature-large-sector-size"}},
      {&kSinglePage, {"order without refN", {{"ring-page-order", "0"}}, C::kNotFound, "ring-ref0"}},
      {&kMultiPage,
       {"order above advertised", {{"ring-page-order", "5"}}, C::kInvalidArgument, "ring-page-order"}},
      {&kMultiPage, {"negative order", {{"ring-page-order", "-1"}}, C::kInvalidArgument, "ring-page-order"}},
      {&kMultiPage,
       {"huge order", {{"ring-page-order", "4294967296"}}, C::kInvalidArgument, "ring-page-order"}},
      {&kMultiPage, {"a ref short", {{"ring-ref3", std::nullopt}}, C::kNotFound, "ring-ref3"}},
      {&kMultiPage, {"a ref too many", {{"ring-ref4", "12"}}, C::kInvalidArgument, "ring-ref4"}},
      {&kMultiPage, {"repeated ref", {{"ring-ref2", "8"}}, C::kInvalidArgument, "ring-ref2"}},
      {&kMultiPage, {"bad middle ref", {{"ring-ref1", "9 "}}, C::kInvalidArgument, "ring-ref1"}},
      {&kMultiQueue,
       {"zero queues", {{"multi-queue-num-queues", "0"}}, C::kInvalidArgument, "multi-queue-num-queues"}},
      {&kMultiQueue,
       {"queues above advertised",
        {{"multi-queue-num-queues", "5"}},
        C::kInvalidArgument,
        "multi-queue-num-queues"}},
      {&kMultiQueue,
       {"junk queues", {{"multi-queue-num-queues", "2x"}}, C::kInvalidArgument, "multi-queue-num-queues"}},
      {&kMultiQueue,
       {"queue port missing",
        {{"queue-1/event-channel", std::nullopt}},
        C::kNotFound,
        "queue-1/event-channel"}},
      {&kMultiQueue,
       {"queue ref missing", {{"queue-1/ring-ref1", std::nullopt}}, C::kNotFound, "queue-1/ring-ref1"}},
      {&kMultiQueue, {"extra queue", {{"queue-2", ""}}, C::kInvalidArgument, "queue-2"}},
      {&kMultiQueue,
       {"ring shared by queues", {{"queue-1/ring-ref0", "9"}}, C::kInvalidArgument, "queue-1/ring-ref0"}},
      {&kMultiQueue,
       {"port shared by queues",
        {{"queue-1/event-channel", "17"}},
        C::kInvalidArgument,
        "queue-1/event-channel"}},
  };
  for (const auto& [base, c] : cases) {
    Keys keys = Apply(*base, c.edits);
    Result<FrontendTransport> transport = ReadFrontendTransport(MapReader(keys, kFrontend), kLimits);
    ASSERT_FALSE(transport.ok()) << c.name;
    EXPECT_EQ(transport.status().code(), c.code) << c.name << ": " << transport.status().ToString();
    EXPECT_NE(transport.status().message().find(kFrontend + "/" + c.key), std::string::npos)
        << c.name << ": " << transport.status().ToString();
  }
}

TEST(ReadFrontendTransportTest, NothingAdvertisedMeansSinglePageSingleQueue) {
  TransportLimits none{0, 1};
  EXPECT_TRUE(ReadFrontendTransport(MapReader(kSinglePage, kFrontend), none).ok());
  EXPECT_FALSE(ReadFrontendTransport(MapReader(kMultiPage, kFrontend), none).ok());
  EXPECT_FALSE(ReadFrontendTransport(MapReader(kMultiQueue, kFrontend), none).ok());
}

// Through the real client: a missing key stays NotFound, a forbidden one is an error, not "absent".
TEST(KeyReaderTest, OverTheRealClientAndInATransaction) {
  Result<std::unique_ptr<XsTestServer>> server = XsTestServer::StartOnTempSocket();
  ASSERT_TRUE(server.ok());
  std::unique_ptr<LibXenStoreClient> dom0 = OpenClient(**server);
  for (const auto& [key, value] : kMultiQueue) ASSERT_TRUE(dom0->Write(kFrontend + "/" + key, value).ok());
  ASSERT_TRUE(dom0->SetPermissions(kFrontend + "/protocol", std::vector<XsPermission>{{0, kXsNone}}).ok());

  Result<FrontendTransport> transport = ReadFrontendTransport(KeyReader::ForStore(*dom0, kFrontend), kLimits);
  ASSERT_TRUE(transport.ok()) << transport.status().ToString();
  EXPECT_EQ(transport->queues.size(), 2u);

  std::unique_ptr<LibXenStoreClient> guest = OpenClient(**server);
  BecomeDomain(*guest, 5);
  Result<FrontendTransport> denied = ReadFrontendTransport(KeyReader::ForStore(*guest, kFrontend), kLimits);
  ASSERT_FALSE(denied.ok());
  EXPECT_EQ(denied.status().code(), Status::Code::kPermissionDenied) << denied.status().ToString();

  Status status = RunTransaction(*dom0, [&](Transaction& transaction) -> Status {
    Result<FrontendTransport> read =
        ReadFrontendTransport(KeyReader::ForTransaction(transaction, kFrontend), kLimits);
    if (!read.ok()) return read.status();
    return read->queues[1].event_channel == 18 ? Status::Ok() : Status::Corruption("wrong port");
  });
  EXPECT_TRUE(status.ok()) << status.ToString();
  KeyReader reader = KeyReader::ForStore(*dom0, kFrontend);
  Result<std::string> missing = reader.ReadRequired("nonexistent");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(), "missing key " + kFrontend + "/nonexistent");
}

}  // namespace
}  // namespace blk
