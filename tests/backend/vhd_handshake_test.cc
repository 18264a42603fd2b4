// The blkif handshake on VHD images: "vhd:" params and bare paths whose footer says VHD are served with the
// VHD's virtual size; a bare path to a differencing VHD is refused (its parent locators are not trusted).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "base/format.h"
#include "formats/vhd/chain.h"
#include "formats/vhd/create.h"
#include "tests/backend/handshake_fixture.h"

namespace blk {
namespace {

class VhdHandshakeTest : public HandshakeFixture {
 protected:
  std::string MakeVhd(const std::string& name, uint64_t bytes) {
    std::string path = image_dir_ + "/" + name;
    EXPECT_TRUE(vhd::CreateImage(path, vhd::CreateOptions::Dynamic(bytes)).ok());
    return path;
  }
  void Connect(uint32_t domid, uint32_t devid, uint32_t queues, uint64_t expected_sectors) {
    guest_ = GuestClient(domid);
    XenbusBlkfrontConfig config;
    config.queues = queues;
    front_ = Frontend(*guest_, domid, devid, config);
    Status connected = front_->Connect(kTimeout);
    ASSERT_TRUE(connected.ok()) << connected.ToString();
    EXPECT_EQ(front_->disk().sectors, expected_sectors);
  }
  std::unique_ptr<LibXenStoreClient> guest_;
  std::unique_ptr<XenbusBlkfront> front_;
};

TEST_F(VhdHandshakeTest, VhdPrefixIsServedWithTheVirtualSizeOnEveryQueue) {
  LogLines log;
  StartDaemon();
  CreateDomain(1);
  std::string path = MakeVhd("disk.vhd", 24u << 20);
  AddDisk(1, 51712, "vhd:" + path);
  ASSERT_NO_FATAL_FAILURE(Connect(1, 51712, 2, (24u << 20) / 512));
  ASSERT_EQ(front_->queue_count(), 2u);
  CheckIo(front_->queue(0), 100, 1);
  CheckIo(front_->queue(1), (5u << 20) / 512, 2);  // another block, allocated from the other queue
  EXPECT_TRUE(log.Contains("1/51712", "(vhd)"));
  front_.reset();
  StopDaemon();
  daemon_.reset();  // closes the image
  auto chain = vhd::VhdChain::Open(path, false);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_NE((*chain)->top().bat_entry(0), vhd::kBatUnused);
  EXPECT_NE((*chain)->top().bat_entry(2), vhd::kBatUnused);
  EXPECT_EQ((*chain)->top().bat_entry(1), vhd::kBatUnused);
}

TEST_F(VhdHandshakeTest, BarePathEndingInAVhdFooterIsAVhdAndRawPrefixIsNotProbed) {
  StartDaemon();
  CreateDomain(2);
  std::string path = MakeVhd("bare.vhd", 16u << 20);
  AddDisk(2, 51712, path, {{"mode", "r"}});
  ASSERT_NO_FATAL_FAILURE(Connect(2, 51712, 1, (16u << 20) / 512));
  EXPECT_EQ(front_->disk().info, static_cast<uint32_t>(VDISK_READONLY));
  AlignedBuffer in(4096);
  Result<int16_t> read = DoIo(front_->queue(0), IoOp::kRead, 0, in.data, in.size);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, BLKIF_RSP_OKAY);
  EXPECT_EQ(in.data[0], 0);  // an unallocated block, not the footer copy the raw file starts with
  front_.reset();
  // The same file named raw: is served as its bytes.
  CreateDomain(3);
  AddDisk(3, 51712, "raw:" + path, {{"mode", "r"}});
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  ASSERT_NO_FATAL_FAILURE(Connect(3, 51712, 1, static_cast<uint64_t>(st.st_size) / 512));
  read = DoIo(front_->queue(0), IoOp::kRead, 0, in.data, 512);  // the file is only a few sectors long
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, BLKIF_RSP_OKAY);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(in.data), 8), "conectix");
}

TEST_F(VhdHandshakeTest, BarePathToADifferencingVhdIsRefusedButVhdPrefixServesTheChain) {
  StartDaemon();
  std::string parent = MakeVhd("parent.vhd", 8u << 20);
  {
    auto opened = vhd::VhdChain::Open(parent, true);
    ASSERT_TRUE(opened.ok());
    AlignedBuffer data(16384);
    FillPattern(data.span(), 64, 9);
    ASSERT_TRUE((*opened)->top().Write(64 * 512, data.span()).ok());
  }
  std::string child = image_dir_ + "/child.vhd";
  ASSERT_TRUE(vhd::CreateImage(child, vhd::CreateOptions::Differencing(parent)).ok());
  CreateDomain(4);
  AddDisk(4, 51712, child);
  std::string backend = BackendPath(4, 51712);
  ASSERT_TRUE(WaitForValue(backend + "/state", "5"));
  std::optional<std::string> error = ReadKey(backend + "/hotplug-error");
  ASSERT_TRUE(error.has_value());
  EXPECT_NE(error->find("differencing"), std::string::npos) << *error;

  CreateDomain(5);
  AddDisk(5, 51712, "vhd:" + child);
  ASSERT_NO_FATAL_FAILURE(Connect(5, 51712, 1, (8u << 20) / 512));
  AlignedBuffer in(16384);
  Result<int16_t> read = DoIo(front_->queue(0), IoOp::kRead, 64, in.data, in.size);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, BLKIF_RSP_OKAY);
  EXPECT_FALSE(CheckPattern(in.span(), 64, 9).has_value()) << "the parent's data is not visible";
  CheckIo(front_->queue(0), 64, 10);
}

}  // namespace
}  // namespace blk

namespace blk {
namespace {

// Both queues allocate the same new blocks at once (as a guest with two vCPUs writing sequentially does):
// every write is answered, and each queue reads back what it wrote.
TEST_F(VhdHandshakeTest, TwoQueuesAllocatingTheSameBlocksAtOnceAreAllAnswered) {
  StartDaemon();
  CreateDomain(1);
  std::string path = MakeVhd("disk.vhd", 32u << 20);
  AddDisk(1, 51712, "vhd:" + path);
  ASSERT_NO_FATAL_FAILURE(Connect(1, 51712, 2, (32u << 20) / 512));
  constexpr size_t kIo = 256 << 10;  // each 2 MiB block: 4 writes from queue 0 and 4 from queue 1
  constexpr int kDepth = 8;
  auto writer = [&](unsigned q, Status* result) {
    Blkfront& front = front_->queue(q);
    std::vector<std::unique_ptr<AlignedBuffer>> buffers;
    int issued = 0, done = 0;
    const int total = (32 << 20) / static_cast<int>(kIo) / 2;
    while (done < total) {
      while (issued < total && issued - done < kDepth) {
        uint64_t block = static_cast<uint64_t>(issued / 4);
        uint64_t sector = (block * (2u << 20) + q * (1u << 20) + (issued % 4) * kIo) / 512;
        buffers.push_back(std::make_unique<AlignedBuffer>(kIo));
        FillPattern(buffers.back()->span(), sector, 40 + q);
        Io io{IoOp::kWrite, sector, kIo, buffers.back()->data, static_cast<uint64_t>(issued)};
        if (Status s = front.Submit(io); !s.ok()) return void(*result = s);
        ++issued;
      }
      IoCompletion completions[kDepth];
      Result<size_t> got = front.Wait(completions, std::chrono::seconds(10));
      if (!got.ok()) return void(*result = got.status());
      if (*got == 0)
        return void(*result = Status::Busy(StrFormat("queue %u: no answer after %d of %d", q, done, total)));
      for (size_t i = 0; i < *got; ++i) {
        if (completions[i].status != BLKIF_RSP_OKAY) return void(*result = Status::IoError("write failed"));
      }
      done += static_cast<int>(*got);
    }
  };
  Status first, second;
  std::thread other([&] { writer(1, &second); });
  writer(0, &first);
  other.join();
  ASSERT_TRUE(first.ok()) << first.ToString();
  ASSERT_TRUE(second.ok()) << second.ToString();
  for (unsigned q = 0; q < 2; ++q) {
    AlignedBuffer in(kIo);
    uint64_t sector = (5 * (2u << 20) + q * (1u << 20) + 3 * kIo) / 512;
    Result<int16_t> read = DoIo(front_->queue(q), IoOp::kRead, sector, in.data, kIo);
    ASSERT_TRUE(read.ok() && *read == BLKIF_RSP_OKAY);
    EXPECT_FALSE(CheckPattern(in.span(), sector, 40 + q).has_value()) << "queue " << q;
  }
}

}  // namespace
}  // namespace blk
