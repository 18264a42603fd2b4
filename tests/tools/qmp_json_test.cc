// Tests of the qdisk shim's bounded JSON reader: complete, split and malformed objects, and the limits.
#include "tools/qdisk-shim/qmp_json.h"

#include <gtest/gtest.h>

#include <string>

namespace blk {
namespace {

TEST(QmpJsonTest, ListsTopLevelMembersWithRawValues) {
  std::string text = R"({"execute": "query-vnc", "id": {"n": [1, 2.5e3, -0]}, "ok": true, "z": null})";
  JsonObjectScan scan = ScanJsonObject(text, 0);
  ASSERT_EQ(scan.outcome, JsonScanOutcome::kComplete) << scan.error;
  EXPECT_EQ(scan.end, text.size());
  ASSERT_EQ(scan.members.size(), 4u);
  EXPECT_EQ(scan.members[0].key, "execute");
  EXPECT_EQ(scan.members[0].type, JsonType::kString);
  EXPECT_EQ(*scan.members[0].string_value, "query-vnc");
  EXPECT_EQ(scan.members[1].type, JsonType::kObject);
  EXPECT_EQ(scan.members[1].raw, R"({"n": [1, 2.5e3, -0]})");
  EXPECT_EQ(scan.members[2].type, JsonType::kBool);
  EXPECT_EQ(scan.members[3].type, JsonType::kNull);
  EXPECT_FALSE(scan.members[1].string_value.has_value());
}

TEST(QmpJsonTest, StopsAtTheEndOfTheFirstObject) {
  std::string text = "  {\"a\": 1}\r\n{\"b\": 2}";
  JsonObjectScan scan = ScanJsonObject(text, 2);
  ASSERT_EQ(scan.outcome, JsonScanOutcome::kComplete);
  EXPECT_EQ(text.substr(scan.end), "\r\n{\"b\": 2}");
}

TEST(QmpJsonTest, DecodesEscapesIncludingSurrogatePairs) {
  JsonObjectScan scan = ScanJsonObject(R"({"k\"ey": "a\\b\/c\n\u00e9\ud83d\ude00"})", 0);
  ASSERT_EQ(scan.outcome, JsonScanOutcome::kComplete) << scan.error;
  EXPECT_EQ(scan.members[0].key, "k\"ey");
  EXPECT_EQ(*scan.members[0].string_value, "a\\b/c\n\xc3\xa9\xf0\x9f\x98\x80");
}

TEST(QmpJsonTest, EveryPrefixOfAValidObjectIsIncomplete) {
  std::string text = R"({"execute":"x","id":[{"a":-12.5E+3},"s\u0041",true,false,null]})";
  for (size_t n = 0; n < text.size(); ++n) {
    JsonObjectScan scan = ScanJsonObject(text.substr(0, n), 0);
    EXPECT_EQ(scan.outcome, JsonScanOutcome::kIncomplete) << "prefix of " << n << " bytes: " << scan.error;
  }
  EXPECT_EQ(ScanJsonObject(text, 0).outcome, JsonScanOutcome::kComplete);
}

TEST(QmpJsonTest, RejectsMalformedInput) {
  const char* bad[] = {
      "[1]",                      // not an object
      "{\"a\" 1}",                // missing colon
      "{\"a\": 1,}",              // trailing comma
      "{a: 1}",                   // bare key
      "{\"a\": 01}",              // leading zero
      "{\"a\": 1.}",              // no fraction digits
      "{\"a\": -}",               // sign alone
      "{\"a\": tru}",             // broken literal
      "{\"a\": \"\\x\"}",         // bad escape
      "{\"a\": \"\\u12G4\"}",     // bad hex
      "{\"a\": \"\\udc00\"}",     // lone low surrogate
      "{\"a\": \"\\ud800x\"}",    // lone high surrogate
      "{\"a\": \"\\u0000\"}",     // NUL
      "{\"a\": \"tab\there\"}",   // raw control character
      "{\"a\": [1 2]}",           // missing comma in an array
      "{\"a\": 1 \"b\": 2}",      // missing comma in an object
  };
  for (const char* text : bad) {
    JsonObjectScan scan = ScanJsonObject(text, 0);
    EXPECT_EQ(scan.outcome, JsonScanOutcome::kInvalid) << text;
    EXPECT_FALSE(scan.error.empty()) << text;
    EXPECT_TRUE(scan.members.empty()) << text;
  }
}

TEST(QmpJsonTest, EnforcesTheLimits) {
  JsonLimits limits;
  limits.max_depth = 4;
  limits.max_members = 2;
  limits.max_string_bytes = 8;
  limits.max_number_chars = 5;
  EXPECT_EQ(ScanJsonObject(R"({"a": [[1]]})", 0, limits).outcome, JsonScanOutcome::kComplete);
  EXPECT_EQ(ScanJsonObject(R"({"a": [[[[1]]]]})", 0, limits).outcome, JsonScanOutcome::kInvalid);
  EXPECT_EQ(ScanJsonObject(R"({"a": 1, "b": 2, "c": 3})", 0, limits).outcome, JsonScanOutcome::kInvalid);
  EXPECT_EQ(ScanJsonObject(R"({"a": "0123456789abc"})", 0, limits).outcome, JsonScanOutcome::kInvalid);
  EXPECT_EQ(ScanJsonObject(R"({"a": 1234567})", 0, limits).outcome, JsonScanOutcome::kInvalid);
  // A deep document is refused at the limit, without recursing further: 100000 brackets, default limits.
  std::string deep = "{\"a\": " + std::string(100000, '[');
  EXPECT_EQ(ScanJsonObject(deep, 0).outcome, JsonScanOutcome::kInvalid);
}

TEST(QmpJsonTest, AnOffsetPastTheEndIsIncomplete) {
  EXPECT_EQ(ScanJsonObject("{}", 5).outcome, JsonScanOutcome::kIncomplete);
}

TEST(QmpJsonTest, QuoteEscapesEverythingButPrintableAscii) {
  EXPECT_EQ(JsonQuote("plain"), "\"plain\"");
  EXPECT_EQ(JsonQuote("a\"b\\c\n\x01\xff"), "\"a\\\"b\\\\c\\u000a\\u0001\\u00ff\"");
}

}  // namespace
}  // namespace blk
