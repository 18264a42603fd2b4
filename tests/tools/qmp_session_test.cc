// Tests of the qdisk shim's QMP session: what libxl 4.17 sends a PV guest's device model, and what a
// careless or hostile client might.
#include "tools/qdisk-shim/qmp_session.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace blk {
namespace {

// Splits a stream of replies into lines without their "\r\n".
std::vector<std::string> Lines(const std::string& out) {
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < out.size()) {
    size_t end = out.find("\r\n", pos);
    EXPECT_NE(end, std::string::npos) << "reply not terminated by CRLF: " << out.substr(pos);
    if (end == std::string::npos) break;
    lines.push_back(out.substr(pos, end - pos));
    pos = end + 2;
  }
  return lines;
}

class QmpSessionTest : public ::testing::Test {
 protected:
  std::vector<std::string> Send(const std::string& bytes, SessionVerdict expected = SessionVerdict::kContinue) {
    std::string out;
    EXPECT_EQ(session_.Feed(bytes, &out), expected) << bytes;
    return Lines(out);
  }
  void Negotiate() {
    ASSERT_EQ(Send("{\"execute\":\"qmp_capabilities\",\"id\":1}\r\n"),
              std::vector<std::string>{"{\"return\": {}, \"id\": 1}"});
  }

  VmState vm_;
  QmpSession session_{&vm_};
};

TEST_F(QmpSessionTest, GreetingNamesAQemuVersionAndNoCapabilities) {
  std::string greeting = QmpSession::Greeting();
  EXPECT_EQ(greeting,
            "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": "
            "\"blkbackd qdisk-shim\"}, \"capabilities\": []}}\r\n");
}

TEST_F(QmpSessionTest, AnswersLibxlsPostStartQueries) {
  Negotiate();
  // libxl's device_model_spawn_outcome: query-chardev (serial ptys), then query-vnc.
  EXPECT_EQ(Send("{\"execute\":\"query-chardev\",\"id\":2}\r\n"),
            std::vector<std::string>{"{\"return\": [], \"id\": 2}"});
  EXPECT_EQ(Send("{\"execute\":\"query-vnc\",\"id\":3}\r\n"),
            std::vector<std::string>{"{\"return\": {\"enabled\": false}, \"id\": 3}"});
  EXPECT_EQ(Send("{\"execute\":\"query-status\",\"id\":4}\r\n"),
            std::vector<std::string>{
                "{\"return\": {\"status\": \"running\", \"singlestep\": false, \"running\": true}, \"id\": 4}"});
  EXPECT_EQ(Send("{\"execute\":\"query-blockstats\",\"id\":5}\r\n"),
            std::vector<std::string>{"{\"return\": [], \"id\": 5}"});
  EXPECT_EQ(vm_.commands_answered, 5u);
}

TEST_F(QmpSessionTest, CommandsBeforeNegotiationAreRefused) {
  EXPECT_EQ(Send("{\"execute\":\"query-vnc\",\"id\":\"a\"}"),
            std::vector<std::string>{"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting "
                                     "capabilities negotiation with 'qmp_capabilities'\"}, \"id\": \"a\"}"});
  EXPECT_FALSE(session_.negotiated());
  Negotiate();
  EXPECT_TRUE(session_.negotiated());
  std::vector<std::string> again = Send("{\"execute\":\"qmp_capabilities\"}");
  ASSERT_EQ(again.size(), 1u);
  EXPECT_NE(again[0].find("already complete"), std::string::npos);
}

TEST_F(QmpSessionTest, EchoesAnyIdVerbatimAndAnswersWithoutOne) {
  Negotiate();
  EXPECT_EQ(Send("{\"id\": {\"x\": [1, \"y\"]}, \"execute\": \"query-chardev\"}"),
            std::vector<std::string>{"{\"return\": [], \"id\": {\"x\": [1, \"y\"]}}"});
  EXPECT_EQ(Send("{\"execute\": \"query-chardev\"}"), std::vector<std::string>{"{\"return\": []}"});
}

TEST_F(QmpSessionTest, UnknownCommandsAreCommandNotFound) {
  Negotiate();
  EXPECT_EQ(Send("{\"execute\":\"xen-save-devices-state\",\"id\":9,\"arguments\":{\"filename\":\"/x\"}}"),
            std::vector<std::string>{"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command "
                                     "xen-save-devices-state has not been found\"}, \"id\": 9}"});
  // A name with quotes and control bytes is escaped in the reply, not copied raw.
  std::vector<std::string> odd = Send("{\"execute\":\"a\\\"b\\u0001\"}");
  ASSERT_EQ(odd.size(), 1u);
  EXPECT_NE(odd[0].find("a\\\"b\\u0001"), std::string::npos) << odd[0];
}

TEST_F(QmpSessionTest, MalformedCommandsGetAnErrorAndTheSessionGoesOn) {
  Negotiate();
  const char* bad[] = {
      "{\"id\": 1}",                                              // no execute
      "{\"execute\": 5, \"id\": 1}",                              // execute not a string
      "{\"execute\": \"cont\", \"id\": 1, \"bogus\": 1}",         // unknown member
      "{\"execute\": \"cont\", \"execute\": \"stop\", \"id\": 1}",  // duplicate
      "{\"execute\": \"cont\", \"arguments\": [1], \"id\": 1}",   // arguments not an object
      "{\"execute\": \"query-vnc\", \"arguments\": {\"a\": 1}, \"id\": 1}",  // arguments to a command with none
  };
  for (const char* message : bad) {
    std::vector<std::string> lines = Send(message);
    ASSERT_EQ(lines.size(), 1u) << message;
    EXPECT_EQ(lines[0].rfind("{\"error\": {\"class\": \"GenericError\"", 0), 0u) << lines[0];
    EXPECT_NE(lines[0].find("\"id\": 1}"), std::string::npos) << lines[0];
  }
  EXPECT_TRUE(vm_.running);  // the rejected "cont"/"stop" did nothing
  EXPECT_EQ(Send("{\"execute\":\"query-chardev\",\"id\":2}"), std::vector<std::string>{"{\"return\": [], \"id\": 2}"});
}

TEST_F(QmpSessionTest, HandlesMessagesSplitAndBatchedAnyway) {
  std::string stream =
      "{\"execute\":\"qmp_capabilities\",\"id\":1}\r\n{\"execute\":\"query-chardev\",\"id\":2}"
      "{\"execute\":\"query-vnc\",\"id\":3}\n";
  std::string out;
  for (char c : stream) ASSERT_EQ(session_.Feed(std::string(1, c), &out), SessionVerdict::kContinue);
  EXPECT_EQ(Lines(out), (std::vector<std::string>{"{\"return\": {}, \"id\": 1}", "{\"return\": [], \"id\": 2}",
                                                  "{\"return\": {\"enabled\": false}, \"id\": 3}"}));
  EXPECT_EQ(session_.buffered_bytes(), 0u);
}

TEST_F(QmpSessionTest, GarbageEndsTheSessionWithOneError) {
  Negotiate();
  std::vector<std::string> lines = Send("hello\r\n{\"execute\":\"query-vnc\"}", SessionVerdict::kClose);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("GenericError"), std::string::npos);
  EXPECT_EQ(session_.buffered_bytes(), 0u);
  std::vector<std::string> broken = Send("{\"execute\": tru}", SessionVerdict::kClose);
  ASSERT_EQ(broken.size(), 1u);
  EXPECT_NE(broken[0].find("JSON parse error"), std::string::npos);
}

TEST_F(QmpSessionTest, AnEndlessMessageIsCutOffAtTheLimit) {
  Negotiate();
  std::string out;
  ASSERT_EQ(session_.Feed("{\"execute\": \"", &out), SessionVerdict::kContinue);
  SessionVerdict verdict = SessionVerdict::kContinue;
  std::string chunk(4096, 'a');
  size_t fed = 0;
  while (verdict == SessionVerdict::kContinue && fed < 4 * QmpSession::kMaxMessageBytes) {
    verdict = session_.Feed(chunk, &out);
    fed += chunk.size();
  }
  EXPECT_EQ(verdict, SessionVerdict::kClose);
  EXPECT_LE(fed, QmpSession::kMaxMessageBytes + chunk.size());
  EXPECT_EQ(session_.buffered_bytes(), 0u);
}

TEST_F(QmpSessionTest, StartedPausedIsPrelaunchUntilCont) {
  vm_.running = false;
  vm_.ever_ran = false;
  Negotiate();
  EXPECT_EQ(Send("{\"execute\":\"query-status\",\"id\":2}"),
            std::vector<std::string>{
                "{\"return\": {\"status\": \"prelaunch\", \"singlestep\": false, \"running\": false}, \"id\": 2}"});
  EXPECT_EQ(Send("{\"execute\":\"cont\",\"id\":3}"), std::vector<std::string>{"{\"return\": {}, \"id\": 3}"});
  EXPECT_TRUE(vm_.running);
  EXPECT_EQ(Send("{\"execute\":\"stop\",\"id\":4}"), std::vector<std::string>{"{\"return\": {}, \"id\": 4}"});
  std::vector<std::string> status = Send("{\"execute\":\"query-status\",\"id\":5}");
  ASSERT_EQ(status.size(), 1u);
  EXPECT_NE(status[0].find("\"status\": \"paused\""), std::string::npos) << status[0];
}

TEST_F(QmpSessionTest, QuitIsAnsweredAndNothingAfterIt) {
  Negotiate();
  std::vector<std::string> lines =
      Send("{\"execute\":\"quit\",\"id\":7}{\"execute\":\"query-vnc\",\"id\":8}", SessionVerdict::kClose);
  EXPECT_EQ(lines, std::vector<std::string>{"{\"return\": {}, \"id\": 7}"});
  EXPECT_TRUE(vm_.quit_requested);
}

TEST_F(QmpSessionTest, QueryCommandsListsWhatIsAnswered) {
  Negotiate();
  std::vector<std::string> lines = Send("{\"execute\":\"query-commands\",\"id\":2}");
  ASSERT_EQ(lines.size(), 1u);
  for (const char* name : {"query-status", "query-chardev", "query-vnc", "cont", "quit"}) {
    EXPECT_NE(lines[0].find(std::string("{\"name\": \"") + name + "\"}"), std::string::npos) << name;
  }
}

// Deterministic noise built from JSON fragments: whatever arrives, the session answers or closes, keeps its
// buffer bounded, and every reply it writes is a complete CRLF-terminated line.
TEST(QmpSessionNoiseTest, SurvivesRandomFragments) {
  const char* fragments[] = {"{",   "}",  "[",       "]",      ",",  ":",   "\"execute\"", "\"id\"", "\"quit\"",
                             "1",   "-",  "1e999",   "\"\\u", "d800", "\"",  "true",          "nul",      "\r\n",
                             " ",   "\x00", "\xff", "\"query-vnc\"", "\"qmp_capabilities\"", "{\"execute\":"};
  uint32_t seed = 12345;
  auto next = [&seed] {
    seed = seed * 1103515245u + 12345u;
    return (seed >> 16) & 0x7fff;
  };
  for (int round = 0; round < 300; ++round) {
    VmState vm;
    QmpSession session(&vm);
    std::string out;
    for (int i = 0; i < 200; ++i) {
      std::string chunk;
      for (int n = next() % 8; n >= 0; --n) chunk += fragments[next() % (sizeof fragments / sizeof *fragments)];
      if (session.Feed(chunk, &out) == SessionVerdict::kClose) break;
      ASSERT_LE(session.buffered_bytes(), QmpSession::kMaxMessageBytes + 64);
    }
    ASSERT_TRUE(out.empty() || out.substr(out.size() - 2) == "\r\n");
  }
}

}  // namespace
}  // namespace blk
