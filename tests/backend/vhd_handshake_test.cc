// The blkif handshake on VHD images: "vhd:" params and bare paths whose footer says VHD are served with the
// VHD's virtual size; a bare path to a differencing VHD is refused (its parent locators are not trusted).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <random>
#include <thread>

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

// As Linux's blkfront in the lab's two-vCPU guest drives a blank VHD: both queues at once, persistent grants,
// 32-segment indirect requests, random reads (of holes and of data), writes of 4 KiB to 1 MiB that allocate
// blocks the other queue is allocating too, and flushes. Every I/O is answered and every read returns what
// its queue last wrote there (or zeros).
TEST_F(VhdHandshakeTest, TwoQueuesOfRandomReadsWritesAndFlushesOnABlankVhdAreAllAnsweredAndRight) {
  BlkbackDaemonOptions options;
  options.workers = 2;
  StartDaemon(options);
  CreateDomain(1);
  constexpr uint64_t kDisk = 64u << 20;
  std::string path = MakeVhd("disk.vhd", kDisk);
  AddDisk(1, 51712, "vhd:" + path);
  guest_ = GuestClient(1);
  XenbusBlkfrontConfig config;
  config.queues = 2;
  config.persistent = true;
  config.indirect_segments = 32;
  front_ = Frontend(*guest_, 1, 51712, config);
  ASSERT_TRUE(front_->Connect(kTimeout).ok());
  ASSERT_EQ(front_->queue_count(), 2u);

  // Pages of 4 KiB; queue q owns the q-th MiB of every 2 MiB block, so both allocate the same blocks.
  constexpr size_t kPage = 4096, kPages = kDisk / kPage, kRunPages = (1u << 20) / kPage;
  constexpr int kDepth = 16, kIos = 1500;
  auto run = [&](unsigned q, std::string* failure) {
    Blkfront& front = front_->queue(q);
    std::mt19937 random(1234 + q);
    std::vector<uint32_t> written(kPages, 0);  // generation last written to each page; 0: never
    std::vector<bool> busy(kPages, false);
    struct InFlight {
      IoOp op;
      size_t first, pages;
      uint32_t generation;
      std::unique_ptr<AlignedBuffer> buffer;
    };
    std::vector<InFlight> slots(kDepth);
    std::vector<int> free_slots;
    for (int i = 0; i < kDepth; ++i) free_slots.push_back(i);
    uint32_t generation = 1;
    int issued = 0, answered = 0;
    while (answered < kIos) {
      while (issued < kIos && !free_slots.empty()) {
        InFlight& io = slots[free_slots.back()];
        unsigned dice = random() % 100;
        io.op = dice < 5 ? IoOp::kFlushDiskCache : dice < 50 ? IoOp::kRead : IoOp::kWrite;
        io.pages = 0;
        if (io.op != IoOp::kFlushDiskCache) {
          size_t run_index = (random() % (kPages / kRunPages / 2)) * 2 + q;
          size_t pages = random() % 4 == 0 ? 1 + random() % kRunPages : 1 + random() % 8;
          size_t first = run_index * kRunPages + random() % (kRunPages - pages + 1);
          bool clash = false;
          for (size_t p = first; p < first + pages; ++p) clash = clash || busy[p];
          if (clash) continue;
          io.first = first;
          io.pages = pages;
          for (size_t p = first; p < first + pages; ++p) busy[p] = true;
          if (!io.buffer) io.buffer = std::make_unique<AlignedBuffer>(1u << 20);
          if (io.op == IoOp::kWrite) {
            io.generation = generation++;
            FillPattern(std::span(io.buffer->data, pages * kPage), first * kPage / 512, io.generation);
          }
        }
        Io request{io.op, io.pages == 0 ? 0 : io.first * kPage / 512, io.pages * kPage,
                   io.pages == 0 ? nullptr : io.buffer->data, static_cast<uint64_t>(free_slots.back())};
        if (Status submitted = front.Submit(request); !submitted.ok()) {
          *failure = "queue " + std::to_string(q) + ": " + submitted.ToString();
          return;
        }
        free_slots.pop_back();
        ++issued;
      }
      IoCompletion completions[kDepth];
      Result<size_t> got = front.Wait(completions, std::chrono::seconds(10));
      if (!got.ok() || *got == 0) {
        *failure = StrFormat("queue %u: no answer within 10 s after %d of %d I/Os (%d in flight)", q,
                             answered, kIos, issued - answered);
        return;
      }
      for (size_t i = 0; i < *got; ++i) {
        InFlight& io = slots[completions[i].tag];
        if (completions[i].status != BLKIF_RSP_OKAY) {
          *failure = StrFormat("queue %u: I/O %d (op %d) failed", q, answered, static_cast<int>(io.op));
          return;
        }
        for (size_t p = io.first; p < io.first + io.pages; ++p) {
          busy[p] = false;
          const std::span<const uint8_t> page(io.buffer->data + (p - io.first) * kPage, kPage);
          if (io.op == IoOp::kWrite) {
            written[p] = io.generation;
          } else if (written[p] == 0 ? std::any_of(page.begin(), page.end(), [](uint8_t b) { return b != 0; })
                                     : CheckPattern(page, p * kPage / 512, written[p]).has_value()) {
            *failure = StrFormat("queue %u: page %zu reads wrong (generation %u expected)", q, p, written[p]);
            return;
          }
        }
        free_slots.push_back(static_cast<int>(completions[i].tag));
        ++answered;
      }
    }
  };
  std::string first, second;
  std::thread other([&] { run(1, &second); });
  run(0, &first);
  other.join();
  EXPECT_EQ(first, "");
  EXPECT_EQ(second, "");
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
