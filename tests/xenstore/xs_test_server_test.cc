// Tests of tests/xenstore/xs_test_server.cc at the wire level: framing, malformed clients, error replies.
#include "tests/xenstore/xs_test_server.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <xen/io/xs_wire.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "base/unique_fd.h"
#include "tests/xenstore/xs_test_util.h"

namespace blk {
namespace {

struct Reply {
  xsd_sockmsg header{};
  std::string payload;
};

class RawClient {
 public:
  explicit RawClient(const std::string& socket_path) {
    fd_.Reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, socket_path.c_str(), sizeof(address.sun_path) - 1);
    connected_ = connect(fd_.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  bool connected() const { return connected_; }

  bool SendRaw(const std::string& bytes) {
    return send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  bool Send(uint32_t type, const std::string& payload, uint32_t tx = 0,
            uint32_t declared_length = UINT32_MAX) {
    xsd_sockmsg header{
        type, ++req_id_, tx,
        declared_length == UINT32_MAX ? static_cast<uint32_t>(payload.size()) : declared_length};
    return SendRaw(std::string(reinterpret_cast<const char*>(&header), sizeof(header)) + payload);
  }
  // Reads `count` bytes; false on EOF or timeout.
  bool ReadExactly(size_t count, std::string* out) {
    out->clear();
    while (out->size() < count) {
      pollfd fd{fd_.get(), POLLIN, 0};
      if (poll(&fd, 1, 10000) != 1) return false;
      char buffer[4096];
      ssize_t got = read(fd_.get(), buffer, std::min(sizeof(buffer), count - out->size()));
      if (got <= 0) return false;
      out->append(buffer, static_cast<size_t>(got));
    }
    return true;
  }
  bool Receive(Reply* reply) {
    std::string bytes;
    if (!ReadExactly(sizeof(xsd_sockmsg), &bytes)) return false;
    std::memcpy(&reply->header, bytes.data(), sizeof(xsd_sockmsg));
    return ReadExactly(reply->header.len, &reply->payload);
  }
  // Reads and discards until the server closes the connection; false on timeout.
  bool DrainUntilClosed() {
    for (;;) {
      pollfd fd{fd_.get(), POLLIN, 0};
      if (poll(&fd, 1, 10000) != 1) return false;
      char buffer[65536];
      ssize_t got = read(fd_.get(), buffer, sizeof(buffer));
      if (got == 0) return true;
      if (got < 0 && errno != EINTR) return errno == ECONNRESET;
    }
  }
  // True once the server has closed the connection.
  bool ClosedByServer() {
    pollfd fd{fd_.get(), POLLIN, 0};
    if (poll(&fd, 1, 10000) != 1) return false;
    char byte;
    return read(fd_.get(), &byte, 1) == 0;
  }

 private:
  UniqueFd fd_;
  bool connected_ = false;
  uint32_t req_id_ = 0;
};

std::string Nul(const std::string& text) { return text + '\0'; }

class XsTestServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<std::unique_ptr<XsTestServer>> server = XsTestServer::StartOnTempSocket();
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
  }
  // A real client still gets served: the server survived whatever came before.
  void ExpectServerStillServes() {
    std::unique_ptr<LibXenStoreClient> client = OpenClient(*server_);
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->Write("/alive", "yes").ok());
    EXPECT_EQ(client->Read("/alive").value(), "yes");
  }
  std::unique_ptr<XsTestServer> server_;
};

TEST_F(XsTestServerTest, AnswersWithTheRequestIdsAndXsErrorNames) {
  RawClient client(server_->socket_path());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.Send(XS_WRITE, Nul("/x") + "value"));
  Reply reply;
  ASSERT_TRUE(client.Receive(&reply));
  EXPECT_EQ(reply.header.type, static_cast<uint32_t>(XS_WRITE));
  EXPECT_EQ(reply.header.req_id, 1u);
  EXPECT_EQ(reply.payload, Nul("OK"));
  ASSERT_TRUE(client.Send(XS_READ, Nul("/x")));
  ASSERT_TRUE(client.Receive(&reply));
  EXPECT_EQ(reply.header.req_id, 2u);
  EXPECT_EQ(reply.payload, "value");
  ASSERT_TRUE(client.Send(XS_READ, Nul("/nope")));
  ASSERT_TRUE(client.Receive(&reply));
  EXPECT_EQ(reply.header.type, static_cast<uint32_t>(XS_ERROR));
  EXPECT_EQ(reply.payload, Nul("ENOENT"));
}

TEST_F(XsTestServerTest, WellFramedButWrongRequestsGetErrorsAndKeepTheConnection) {
  RawClient client(server_->socket_path());
  Reply reply;
  struct Case {
    uint32_t type;
    std::string payload;
    uint32_t tx;
    const char* error;
  };
  const Case cases[] = {
      {12345, Nul("/x"), 0, "EINVAL"},                     // unknown type
      {XS_READ, Nul("/x") + Nul("/y"), 0, "EINVAL"},       // too many arguments
      {XS_READ, Nul("relative//bad"), 0, "EINVAL"},        // invalid path
      {XS_READ, Nul("/x"), 77, "ENOENT"},                  // unknown transaction
      {XS_SET_PERMS, Nul("/") + Nul("q0"), 0, "EINVAL"},   // bad permission letter
      {XS_SET_PERMS, Nul("/") + Nul("r-1"), 0, "EINVAL"},  // bad domid
      {XS_SET_PERMS, Nul("/"), 0, "EINVAL"},               // no owner entry
      {XS_WATCH, Nul("/x"), 0, "EINVAL"},                  // no token
      {XS_WATCH, Nul("@bogus") + Nul("t"), 0, "EINVAL"},   // unknown special path
      {XS_TRANSACTION_END, Nul("X"), 0, "EINVAL"},
      {XS_CONTROL, Nul("set-domid") + Nul("+5"), 0, "EINVAL"},
      {XS_RM, Nul("/"), 0, "EINVAL"},
  };
  for (const Case& c : cases) {
    ASSERT_TRUE(client.Send(c.type, c.payload, c.tx));
    ASSERT_TRUE(client.Receive(&reply)) << "type " << c.type;
    EXPECT_EQ(reply.header.type, static_cast<uint32_t>(XS_ERROR)) << "type " << c.type;
    EXPECT_EQ(reply.payload, Nul(c.error)) << "type " << c.type;
  }
  EXPECT_EQ(server_->connections_closed_for_protocol_errors(), 0u);
}

TEST_F(XsTestServerTest, OversizedLengthClosesOnlyThatConnection) {
  RawClient good(server_->socket_path());
  RawClient bad(server_->socket_path());
  ASSERT_TRUE(bad.Send(XS_READ, "", 0, XENSTORE_PAYLOAD_MAX + 1));
  EXPECT_TRUE(bad.ClosedByServer());
  EXPECT_EQ(server_->connections_closed_for_protocol_errors(), 1u);
  ASSERT_TRUE(good.Send(XS_WRITE, Nul("/still") + "here"));
  Reply reply;
  ASSERT_TRUE(good.Receive(&reply));
  EXPECT_EQ(reply.payload, Nul("OK"));
}

TEST_F(XsTestServerTest, MissingNulTerminatorClosesTheConnection) {
  for (uint32_t type : {XS_READ, XS_WRITE, XS_WATCH, XS_DIRECTORY, XS_SET_PERMS}) {
    RawClient bad(server_->socket_path());
    ASSERT_TRUE(bad.Send(type, "/no-terminator"));
    EXPECT_TRUE(bad.ClosedByServer()) << "type " << type;
  }
  EXPECT_EQ(server_->connections_closed_for_protocol_errors(), 5u);
  ExpectServerStillServes();
}

TEST_F(XsTestServerTest, TruncatedMessagesAndAbruptDisconnectsAreHarmless) {
  {
    RawClient partial_header(server_->socket_path());
    ASSERT_TRUE(partial_header.SendRaw(std::string(7, '\x01')));
  }
  {
    RawClient partial_payload(server_->socket_path());
    ASSERT_TRUE(partial_payload.Send(XS_WRITE, "/a", 0, 100));
  }
  {
    RawClient with_state(server_->socket_path());
    ASSERT_TRUE(with_state.Send(XS_WATCH, Nul("/") + Nul("t")));
    ASSERT_TRUE(with_state.Send(XS_TRANSACTION_START, Nul("")));
    Reply reply;
    ASSERT_TRUE(with_state.Receive(&reply));
  }
  ExpectServerStillServes();
  EXPECT_EQ(server_->connections_closed_for_protocol_errors(), 0u);
}

TEST_F(XsTestServerTest, GarbageStreamNeverCrashesTheServer) {
  uint64_t state = 0x9e3779b97f4a7c15ULL;
  for (int round = 0; round < 50; ++round) {
    RawClient fuzz(server_->socket_path());
    std::string bytes;
    for (int i = 0; i < 256; ++i) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      bytes.push_back(static_cast<char>(state));
    }
    // Headers with small lengths and valid types, so that the payload decoder sees the garbage too.
    xsd_sockmsg header{static_cast<uint32_t>(state % XS_TYPE_COUNT), 1, 0, static_cast<uint32_t>(state % 64)};
    std::string message(reinterpret_cast<const char*>(&header), sizeof(header));
    ASSERT_TRUE(fuzz.SendRaw(message + bytes));
  }
  ExpectServerStillServes();
}

TEST_F(XsTestServerTest, WatchEventFollowsTheReplyOnRegistration) {
  RawClient client(server_->socket_path());
  ASSERT_TRUE(client.Send(XS_WATCH, Nul("/w") + Nul("tok")));
  Reply reply;
  ASSERT_TRUE(client.Receive(&reply));
  EXPECT_EQ(reply.header.type, static_cast<uint32_t>(XS_WATCH));
  ASSERT_TRUE(client.Receive(&reply));
  EXPECT_EQ(reply.header.type, static_cast<uint32_t>(XS_WATCH_EVENT));
  EXPECT_EQ(reply.payload, Nul("/w") + Nul("tok"));
}

TEST_F(XsTestServerTest, ClientThatNeverReadsIsCutOffNotBuffered) {
  RawClient sleeper(server_->socket_path());
  ASSERT_TRUE(sleeper.Send(XS_WATCH, Nul("/flood") + Nul(std::string(3000, 't'))));
  std::unique_ptr<LibXenStoreClient> writer = OpenClient(*server_);
  ASSERT_TRUE(writer->Write("/flood/first", "x").ok());  // a round trip: both connections are accepted now
  ASSERT_EQ(server_->open_connections(), 2u);
  // Each event carries the 3000-byte token; enough of them pass the server's per-connection output cap.
  int writes = 0;
  while (writes < 20000 && server_->open_connections() == 2) {
    ASSERT_TRUE(writer->Write("/flood/n" + std::to_string(writes % 100), "x").ok());
    ++writes;
  }
  EXPECT_EQ(server_->open_connections(), 1u) << "after " << writes << " writes";
  EXPECT_TRUE(sleeper.DrainUntilClosed());
}

}  // namespace
}  // namespace blk
