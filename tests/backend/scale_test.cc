// Many devices and many cycles: 50 devices in 10 domains coming and going, and 100 connect/disconnect/
// reconnect cycles of one device with no growth in file descriptors, mappings or memory.
#include <dirent.h>
#include <malloc.h>
#include <gtest/gtest.h>

#include <fstream>

#include "tests/backend/handshake_fixture.h"

#if defined(__SANITIZE_ADDRESS__)
// From ASan's allocator interface (<sanitizer/allocator_interface.h>, not shipped with every compiler).
extern "C" size_t __sanitizer_get_current_allocated_bytes();
#define BLK_UNDER_ASAN 1
#endif

namespace blk {
namespace {

size_t CountFds() {
  size_t count = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  while (::readdir(dir) != nullptr) ++count;
  ::closedir(dir);
  return count;
}

size_t CountMaps() {
  std::ifstream maps("/proc/self/maps");
  size_t lines = 0;
  for (std::string line; std::getline(maps, line);) ++lines;
  return lines;
}

size_t RssKib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with("VmRSS:")) return std::stoul(line.substr(6));
  }
  return 0;
}

// Bytes the program has allocated and not freed (ASan's allocator keeps freed memory in quarantine, so RSS
// says little there).
size_t HeapInUse() {
#ifdef BLK_UNDER_ASAN
  return __sanitizer_get_current_allocated_bytes();
#else
  return mallinfo2().uordblks;
#endif
}

class ScaleTest : public HandshakeFixture {};

TEST_F(ScaleTest, FiftyDevicesInTenDomainsComeAndGo) {
  StartDaemon();
  constexpr uint32_t kDomains = 10, kPerDomain = 5;
  auto devid = [](uint32_t k) { return 51712 + 16 * k; };
  for (uint32_t d = 0; d < kDomains; ++d) {
    CreateDomain(30 + d);
    for (uint32_t k = 0; k < kPerDomain; ++k) {
      std::string name = "disk";
      name.append(std::to_string(d)).append("_").append(std::to_string(k));
      AddDisk(30 + d, devid(k), MakeImage(name, 1 << 20));
    }
  }
  std::vector<std::unique_ptr<LibXenStoreClient>> guests;
  std::vector<std::unique_ptr<XenbusBlkfront>> fronts;
  for (uint32_t d = 0; d < kDomains; ++d) {
    guests.push_back(GuestClient(30 + d));
    for (uint32_t k = 0; k < kPerDomain; ++k) {
      XenbusBlkfrontConfig config;
      config.max_outstanding = 4;
      config.queues = k % 2 + 1;
      fronts.push_back(Frontend(*guests.back(), 30 + d, devid(k), config));
      Status connected = fronts.back()->Connect(kTimeout);
      ASSERT_TRUE(connected.ok()) << connected.ToString();
    }
  }
  EXPECT_EQ(daemon_->device_count(), kDomains * kPerDomain);
  for (size_t i = 0; i < fronts.size(); ++i) {
    CheckIo(fronts[i]->queue(fronts[i]->queue_count() - 1), 8, i + 1, 8192);
  }
  // Half of them close and the toolstack removes them; the others keep serving.
  for (size_t i = 0; i < fronts.size(); i += 2) {
    ASSERT_TRUE(fronts[i]->Close(kTimeout).ok());
    uint32_t d = static_cast<uint32_t>(i / kPerDomain), k = static_cast<uint32_t>(i % kPerDomain);
    ASSERT_TRUE(toolstack_->Remove(BackendPath(30 + d, devid(k))).ok());
    ASSERT_TRUE(toolstack_->Remove(FrontendPath(30 + d, devid(k))).ok());
  }
  EXPECT_TRUE(Eventually([&] { return daemon_->device_count() == kDomains * kPerDomain / 2; }));
  for (size_t i = 1; i < fronts.size(); i += 2) CheckIo(fronts[i]->queue(0), 64, i + 100, 8192);
  // Then whole domains go away with their devices still connected.
  for (uint32_t d = 0; d < kDomains; ++d) {
    ASSERT_TRUE(toolstack_->Remove("/local/domain/" + std::to_string(30 + d)).ok());
    ASSERT_TRUE(toolstack_->Remove("/local/domain/0/backend/vbd/" + std::to_string(30 + d)).ok());
  }
  EXPECT_TRUE(Eventually([&] { return daemon_->device_count() == 0; }));
  EXPECT_EQ(sim_->counters().map_calls.load(), sim_->counters().unmap_calls.load());
}

TEST_F(ScaleTest, HundredReconnectCyclesLeakNothing) {
  StartDaemon();
  CreateDomain(1);
  AddDisk(1, 51712, MakeImage("cycles"));
  std::unique_ptr<LibXenStoreClient> guest = GuestClient(1);
  XenbusBlkfrontConfig config;
  config.queues = 2;
  config.ring_pages = 2;
  std::unique_ptr<XenbusBlkfront> front = Frontend(*guest, 1, 51712, config);
  auto cycle = [&](uint64_t i) {
    Status connected = front->Connect(kTimeout);
    ASSERT_TRUE(connected.ok()) << connected.ToString();
    CheckIo(front->queue(i % 2), i * 8, i + 1, 4096);
    Status closed = front->Close(kTimeout);
    ASSERT_TRUE(closed.ok()) << closed.ToString();
  };
  for (uint64_t i = 0; i < 5; ++i) ASSERT_NO_FATAL_FAILURE(cycle(i));  // warm-up: pools and caches fill
  size_t fds = CountFds(), maps = CountMaps(), rss = RssKib(), heap = HeapInUse();
  for (uint64_t i = 5; i < 105; ++i) ASSERT_NO_FATAL_FAILURE(cycle(i));
  EXPECT_EQ(CountFds(), fds);
  EXPECT_LE(CountMaps(), maps + 4);  // allocator arenas may still settle; a per-cycle leak would be 100+
  EXPECT_LE(HeapInUse(), heap + 256 * 1024);  // a per-cycle leak of a ring's state would be megabytes
#ifndef BLK_UNDER_ASAN
  EXPECT_LE(RssKib(), rss + 8 * 1024);
#else
  (void)rss;
#endif
  EXPECT_EQ(sim_->counters().map_calls.load(), sim_->counters().unmap_calls.load());
  EXPECT_EQ(sim_->FindDomain(1)->grants_in_use(), 0u);
}

}  // namespace
}  // namespace blk
