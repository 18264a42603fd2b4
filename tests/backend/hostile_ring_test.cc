// Hostile frontends against the datapath: a guest that rewrites ring slots while the backend reads them,
// revokes or write-protects grants mid-request, hands one grant to two requests, storms the event channel,
// never reads its responses, publishes a req_prod beyond the ring, or floods refused requests as fast as they
// are answered. Each case checks what the hostile device gets (errors, a broken ring, or plain service) and
// that a healthy guest served by the same worker meanwhile reads back exactly what it wrote.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/device.h"
#include "backend/worker.h"
#include "base/log.h"
#include "frontend/blkfront.h"
#include "ring/request.h"
#include "ring/sim/sim_hypervisor.h"
#include "tests/backend/connection_to.h"
#include "tests/page_aligned.h"

namespace blk {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kDiskBytes = 4ull << 20;
constexpr uint64_t kDiskSectors = kDiskBytes >> kSectorShift;
constexpr auto kDeadline = std::chrono::seconds(20);

// What the hostile disk holds at byte `offset` before anyone writes.
uint8_t Pattern(uint64_t offset) {
  return static_cast<uint8_t>((offset >> kSectorShift) * 131 + offset * 7 + 1);
}

std::string MakeDisk(const std::string& name) {
  std::string path = "/var/tmp/hostile_ring_" + name + "." + std::to_string(::getpid());
  int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
  EXPECT_GE(fd, 0);
  Bytes bytes(kDiskBytes);
  for (uint64_t i = 0; i < kDiskBytes; ++i) bytes[i] = Pattern(i);
  EXPECT_EQ(::pwrite(fd, bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
  return path;
}

Bytes ReadDisk(const std::string& path, uint64_t offset, size_t length) {
  Bytes bytes(length);
  int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_EQ(::pread(fd, bytes.data(), length, static_cast<off_t>(offset)), static_cast<ssize_t>(length));
  ::close(fd);
  return bytes;
}

Bytes PatternAt(uint64_t offset, size_t length) {
  Bytes bytes(length);
  for (size_t i = 0; i < length; ++i) bytes[i] = Pattern(offset + i);
  return bytes;
}

// One guest and its disk, served by `worker`.
struct Guest {
  Guest(SimHypervisor& sim, const std::string& name, DomId domid, Worker& worker,
        uint32_t max_outstanding = 16) {
    path = MakeDisk(name);
    DeviceConfig config;
    config.name = std::to_string(domid) + "/51712";
    config.path = path;
    auto opened = Device::Open(config);
    EXPECT_TRUE(opened.ok()) << opened.status().ToString();
    device = std::move(*opened);
    BlkfrontConfig front_config;
    front_config.domid = domid;
    front_config.max_outstanding = max_outstanding;
    auto created = Blkfront::Create(sim, front_config);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    front = std::move(*created);
    Hypervisor hypervisor = sim.hypervisor();
    Status connected = device->Connect(hypervisor, ConnectionTo(*front), worker);
    EXPECT_TRUE(connected.ok()) << connected.ToString();
  }
  ~Guest() {
    if (device) device->Disconnect();
    ::unlink(path.c_str());
  }
  SimDomain& domain() { return front->domain(); }

  std::string path;
  std::unique_ptr<Device> device;
  std::unique_ptr<Blkfront> front;
};

// A healthy guest on its own thread: writes random data at random places and reads it back, until stopped.
class HealthyLoad {
 public:
  explicit HealthyLoad(Blkfront& front) : front_(front) {}
  ~HealthyLoad() { Stop(); }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  // Returns once `count` I/O pairs were verified since Start, or the deadline passed.
  bool WaitFor(uint64_t count) {
    auto deadline = Clock::now() + kDeadline;
    while (verified_.load() < count && Clock::now() < deadline && failure_empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return verified_.load() >= count;
  }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  uint64_t verified() const { return verified_.load(); }
  std::string failure() {
    std::lock_guard lock(mutex_);
    return failure_;
  }

 private:
  bool failure_empty() {
    std::lock_guard lock(mutex_);
    return failure_.empty();
  }
  bool Fail(const std::string& why) {
    std::lock_guard lock(mutex_);
    if (failure_.empty()) failure_ = why;
    stop_.store(true);
    return false;
  }
  bool Do(const Io& io) {
    if (Status s = front_.Submit(io); !s.ok()) return Fail("submit: " + s.ToString());
    IoCompletion done[4];
    auto deadline = Clock::now() + kDeadline;
    for (;;) {
      auto got = front_.Wait(done, std::chrono::milliseconds(100));
      if (!got.ok()) return Fail("wait: " + got.status().ToString());
      if (*got > 0) break;
      if (Clock::now() > deadline) return Fail("the healthy device stopped answering");
    }
    if (done[0].status != BLKIF_RSP_OKAY) return Fail("status " + std::to_string(done[0].status));
    return true;
  }
  void Run() {
    std::mt19937_64 random(7);
    Bytes data(64 * 1024), back(64 * 1024);
    while (!stop_.load()) {
      size_t bytes = (1 + random() % 16) * 4096;
      uint64_t sector = (random() % ((kDiskBytes - bytes) / 4096)) * 8;
      for (size_t i = 0; i < bytes; ++i) data[i] = static_cast<uint8_t>(random());
      if (!Do({IoOp::kWrite, sector, bytes, data.data(), 1})) return;
      if (!Do({IoOp::kRead, sector, bytes, back.data(), 2})) return;
      if (std::memcmp(data.data(), back.data(), bytes) != 0) {
        Fail("read back differs from what was written");
        return;
      }
      verified_.fetch_add(1);
    }
  }

  Blkfront& front_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> verified_{0};
  std::mutex mutex_;
  std::string failure_;
};

// A data page of the hostile guest, granted to the backend.
struct GrantedPage {
  uint32_t frame;
  GrantRef ref;
};
GrantedPage GrantPage(SimDomain& domain, bool readonly) {
  auto frame = domain.AllocPage();
  EXPECT_TRUE(frame.ok());
  auto ref = domain.GrantAccess(0, *frame, readonly);
  EXPECT_TRUE(ref.ok());
  return {*frame, *ref};
}

Request OnePage(uint8_t operation, uint64_t id, uint64_t sector, GrantRef ref) {
  Request request;
  request.id = id;
  request.operation = operation;
  request.sector_number = sector;
  request.nr_segments = 1;
  request.segments[0] = {ref, 0, 7};
  return request;
}

Status Place(Blkfront& front, const Request& request) {
  uint8_t entry[sizeof(abi::x86_64::Request)];
  EncodeRequest(front.config().abi, request, entry);
  return front.PlaceRaw(std::span(entry, RequestSize(front.config().abi)));
}

// Reaps until every id in `ids` has its raw response.
std::vector<RawResponse> Collect(Blkfront& front, const std::vector<uint64_t>& ids) {
  std::vector<RawResponse> responses;
  auto deadline = Clock::now() + kDeadline;
  std::vector<bool> have(ids.size(), false);
  while (responses.size() < ids.size() && Clock::now() < deadline) {
    IoCompletion none[1];
    auto reaped = front.Wait(none, std::chrono::milliseconds(20));
    EXPECT_TRUE(reaped.ok()) << reaped.status().ToString();
    if (!reaped.ok()) break;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (have[i]) continue;
      if (auto response = front.TakeRawResponse(ids[i])) {
        responses.push_back(*response);
        have[i] = true;
      }
    }
  }
  EXPECT_EQ(responses.size(), ids.size()) << "raw requests never answered";
  return responses;
}

class HostileRingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto worker = Worker::Create("worker0", 256);
    ASSERT_TRUE(worker.ok());
    worker_ = std::move(*worker);
    worker_->Start();
    healthy_ = std::make_unique<Guest>(sim_, "healthy", 1, *worker_);
    load_ = std::make_unique<HealthyLoad>(*healthy_->front);
    load_->Start();
  }
  void TearDown() override {
    // The healthy guest was served throughout, every byte checked.
    EXPECT_TRUE(load_->WaitFor(load_->verified() + 20)) << "the healthy guest stopped being served";
    load_->Stop();
    EXPECT_EQ(load_->failure(), "");
    EXPECT_FALSE(healthy_->device->broken());
    load_.reset();
    healthy_.reset();
    hostile_.reset();
    worker_->Stop();
  }
  Guest& Hostile(uint32_t max_outstanding = 16) {
    hostile_ = std::make_unique<Guest>(sim_, "hostile", 2, *worker_, max_outstanding);
    return *hostile_;
  }

  SimHypervisor sim_;
  std::unique_ptr<Worker> worker_;
  std::unique_ptr<Guest> healthy_;
  std::unique_ptr<HealthyLoad> load_;
  std::unique_ptr<Guest> hostile_;
};

// The guest keeps rewriting the bytes of its slots past the response (sector_number and the first segment)
// between one valid request and three invalid ones that each differ from it in a single byte, so that a torn
// read is still one of them. A backend that validated one version and executed another would answer OKAY
// with the wrong data, or touch the disk or the page where it must not.
TEST_F(HostileRingTest, SlotsRewrittenWhileTheBackendReadsThemAreServedAsReadOnce) {
  Guest& guest = Hostile();
  Blkfront& front = *guest.front;
  ASSERT_EQ(front.config().abi, Abi::kX86_64);
  GrantedPage read_page = GrantPage(guest.domain(), false);
  GrantedPage write_page = GrantPage(guest.domain(), true);
  constexpr uint64_t kReadSector = 64, kWriteSector = 128;
  const Bytes written(kPageSize, 0xD7);
  std::memcpy(guest.domain().PageAddress(write_page.frame), written.data(), kPageSize);
  uint8_t* read_target = guest.domain().PageAddress(read_page.frame);

  // The bytes 16..31 of a slot: sector_number, then segment 0 (gref, first_sect, last_sect, pad).
  auto tail = [](uint64_t sector, GrantRef ref, uint8_t first, uint8_t last) {
    std::array<uint8_t, 16> bytes{};
    std::memcpy(bytes.data(), &sector, 8);
    std::memcpy(bytes.data() + 8, &ref, 4);
    bytes[12] = first;
    bytes[13] = last;
    return bytes;
  };
  auto variants = [&](uint64_t sector, GrantRef ref) {
    return std::array<std::array<uint8_t, 16>, 4>{
        tail(sector, ref, 0, 7),                 // valid
        tail(sector | (1ull << 56), ref, 0, 7),  // beyond the disk
        tail(sector, ref, 0, 8),                 // last_sect beyond the page
        tail(sector, ref | 0x01000000u, 0, 7),   // a grant the guest never made
    };
  };
  const auto read_variants = variants(kReadSector, read_page.ref);
  const auto write_variants = variants(kWriteSector, write_page.ref);
  const uint32_t slots = front.ring_slots();
  std::atomic<bool> stop{false};
  std::thread rewriter([&] {
    std::mt19937 random(11);
    while (!stop.load(std::memory_order_relaxed)) {
      for (uint32_t index = 0; index < slots; ++index) {
        const auto& choice = (index % 2 == 0 ? read_variants : write_variants)[random() % 4];
        std::memcpy(front.RingEntry(index) + ResponseSize(Abi::kX86_64), choice.data(), choice.size());
      }
    }
  });

  uint64_t reads_ok = 0, writes_ok = 0, errors = 0, next_id = 1000;
  for (int round = 0; round < 150; ++round) {
    std::memset(read_target, 0xEE, kPageSize);
    std::vector<uint64_t> ids;
    for (int i = 0; i < 16; ++i) {
      bool read = front.req_prod_pvt() % 2 == 0;  // the rewriter knows the operation by the slot
      Request request = read ? OnePage(BLKIF_OP_READ, next_id, kReadSector, read_page.ref)
                             : OnePage(BLKIF_OP_WRITE, next_id, kWriteSector, write_page.ref);
      ASSERT_TRUE(Place(front, request).ok());
      ids.push_back(next_id++);
    }
    ASSERT_TRUE(front.Push().ok());
    bool any_read_ok = false;
    for (const RawResponse& response : Collect(front, ids)) {
      bool read = (response.id - 1000) % 2 == 0;
      EXPECT_EQ(response.operation, read ? BLKIF_OP_READ : BLKIF_OP_WRITE) << "id " << response.id;
      EXPECT_TRUE(response.status == BLKIF_RSP_OKAY || response.status == BLKIF_RSP_ERROR) << response.status;
      if (response.status != BLKIF_RSP_OKAY) {
        ++errors;
      } else if (read) {
        ++reads_ok;
        any_read_ok = true;
      } else {
        ++writes_ok;
      }
    }
    // Only the valid read reaches the page, whole; every invalid version leaves it alone.
    Bytes page(read_target, read_target + kPageSize);
    if (any_read_ok) {
      EXPECT_EQ(page, PatternAt(kReadSector << kSectorShift, kPageSize)) << "round " << round;
    } else {
      EXPECT_EQ(page, Bytes(kPageSize, 0xEE)) << "round " << round;
    }
    if (HasFailure()) break;
  }
  stop.store(true);
  rewriter.join();
  EXPECT_GT(reads_ok + writes_ok, 0u);
  EXPECT_GT(errors, 0u);
  EXPECT_EQ(guest.device->stats().bad_req.load() + guest.device->stats().io_errors.load(), errors);
  // The disk changed only where the valid write goes, and only to what it carries.
  Bytes disk = ReadDisk(guest.path, 0, kDiskBytes);
  Bytes expected = PatternAt(0, kDiskBytes);
  if (writes_ok > 0) std::memcpy(expected.data() + (kWriteSector << kSectorShift), written.data(), kPageSize);
  EXPECT_TRUE(disk == expected) << "a rewritten request reached the disk";
  EXPECT_FALSE(guest.device->broken());
}

// A second guest thread takes write access away from a grant and gives it back, and revokes another grant
// and grants the page afresh, while requests using them are in flight.
TEST_F(HostileRingTest, GrantsRevokedOrWriteProtectedMidRequestFailOnlyTheirRequests) {
  Guest& guest = Hostile();
  Blkfront& front = *guest.front;
  SimDomain& domain = guest.domain();
  GrantedPage flipped = GrantPage(domain, false);
  GrantedPage revoked = GrantPage(domain, false);
  std::atomic<GrantRef> revoked_ref{revoked.ref};
  constexpr uint64_t kSector = 256;
  std::atomic<bool> stop{false};
  std::thread toggler([&] {
    while (!stop.load()) {
      EXPECT_TRUE(domain.SetReadOnly(flipped.ref, true).ok());
      EXPECT_TRUE(domain.SetReadOnly(flipped.ref, false).ok());
      GrantRef ref = revoked_ref.load();
      EXPECT_TRUE(domain.Revoke(ref).ok());
      std::this_thread::yield();
      // Copies pin nothing once they are done; EndAccess fails only while one runs, then try again.
      bool ended = false;
      for (int tries = 0; tries < 1000000 && !ended; ++tries) {
        ended = domain.EndAccess(ref).ok();
        if (!ended) std::this_thread::yield();
      }
      ASSERT_TRUE(ended) << "grant " << ref << " stayed busy";
      auto again = domain.GrantAccess(0, revoked.frame, false);
      ASSERT_TRUE(again.ok());
      revoked_ref.store(*again);
    }
  });
  const Bytes expected = PatternAt(kSector << kSectorShift, kPageSize);
  uint64_t ok = 0, failed = 0, next_id = 5000;
  for (int round = 0; round < 400; ++round) {
    bool use_flipped = round % 2 == 0;
    GrantedPage page = use_flipped ? flipped : revoked;
    GrantRef ref = use_flipped ? flipped.ref : revoked_ref.load();
    uint8_t* target = domain.PageAddress(page.frame);
    std::memset(target, 0xEE, kPageSize);
    ASSERT_TRUE(Place(front, OnePage(BLKIF_OP_READ, next_id, kSector, ref)).ok());
    ASSERT_TRUE(front.Push().ok());
    std::vector<RawResponse> responses = Collect(front, {next_id++});
    ASSERT_EQ(responses.size(), 1u);
    if (responses[0].status == BLKIF_RSP_OKAY) {
      ++ok;
      EXPECT_EQ(Bytes(target, target + kPageSize), expected) << "round " << round;
    } else {
      EXPECT_EQ(responses[0].status, BLKIF_RSP_ERROR);
      ++failed;
    }
  }
  stop.store(true);
  toggler.join();
  EXPECT_EQ(ok + failed, 400u);
  EXPECT_EQ(guest.device->stats().io_errors.load(), failed);
  EXPECT_FALSE(guest.device->broken());
  // With its grants left alone, the guest is served as before.
  Bytes back(kPageSize);
  ASSERT_TRUE(front.Submit({IoOp::kRead, kSector, kPageSize, back.data(), 1}).ok());
  IoCompletion done[1];
  ASSERT_EQ(front.Wait(done, std::chrono::seconds(10)).value(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  EXPECT_EQ(back, expected);
}

// One grant in two requests at once: two writes from one page, two reads into one page, and a read into the
// page a write of the same round copies from. The guest races itself; the backend serves every request.
TEST_F(HostileRingTest, OneGrantInTwoRequestsAtOnce) {
  Guest& guest = Hostile();
  Blkfront& front = *guest.front;
  SimDomain& domain = guest.domain();
  GrantedPage shared = GrantPage(domain, false);
  GrantedPage target = GrantPage(domain, false);
  const Bytes content(kPageSize, 0x3C);
  for (int round = 0; round < 50; ++round) {
    std::memcpy(domain.PageAddress(shared.frame), content.data(), kPageSize);
    uint64_t base = 10000 + round * 10;
    std::vector<Request> requests = {
        OnePage(BLKIF_OP_WRITE, base + 0, 8, shared.ref),  OnePage(BLKIF_OP_WRITE, base + 1, 16, shared.ref),
        OnePage(BLKIF_OP_READ, base + 2, 512, target.ref), OnePage(BLKIF_OP_READ, base + 3, 520, target.ref),
        OnePage(BLKIF_OP_READ, base + 4, 528, shared.ref), OnePage(BLKIF_OP_WRITE, base + 5, 24, shared.ref),
    };
    std::vector<uint64_t> ids;
    for (const Request& request : requests) {
      ASSERT_TRUE(Place(front, request).ok());
      ids.push_back(request.id);
    }
    ASSERT_TRUE(front.Push().ok());
    for (const RawResponse& response : Collect(front, ids)) {
      EXPECT_EQ(response.status, BLKIF_RSP_OKAY) << "id " << response.id;
    }
    EXPECT_EQ(ReadDisk(guest.path, 8 << kSectorShift, kPageSize), content);
    EXPECT_EQ(ReadDisk(guest.path, 16 << kSectorShift, kPageSize), content);
    Bytes page(domain.PageAddress(target.frame), domain.PageAddress(target.frame) + kPageSize);
    EXPECT_TRUE(page == PatternAt(512 << kSectorShift, kPageSize) ||
                page == PatternAt(520 << kSectorShift, kPageSize))
        << "two reads into one page left a mix";
    Bytes shared_page(domain.PageAddress(shared.frame), domain.PageAddress(shared.frame) + kPageSize);
    EXPECT_EQ(shared_page, PatternAt(528 << kSectorShift, kPageSize));
    Bytes third = ReadDisk(guest.path, 24 << kSectorShift, kPageSize);
    EXPECT_TRUE(third == content || third == PatternAt(528 << kSectorShift, kPageSize));
    if (HasFailure()) break;
  }
  EXPECT_EQ(guest.device->stats().io_errors.load(), 0u);
}

// A guest thread kicks its event channel as fast as it can. Kicks coalesce in the event channel: the worker
// wakes at most once per kick and does little each time, stops as soon as the storm does, and the healthy
// guest on the same worker keeps being served.
TEST_F(HostileRingTest, EventChannelStormCostsTheWorkerLittleAndOthersNothing) {
  Guest& guest = Hostile();
  uint64_t served_before = load_->verified();
  uint64_t cpu_before = worker_->CpuTimeNs();
  std::atomic<uint64_t> kicks{0};
  auto started = Clock::now();
  std::thread kicker([&] {
    while (kicks.load() < 3'000'000 && Clock::now() - started < std::chrono::seconds(2)) {
      ASSERT_TRUE(guest.front->NotifyBackend().ok());
      kicks.fetch_add(1, std::memory_order_relaxed);
    }
  });
  kicker.join();
  uint64_t cpu_storm = worker_->CpuTimeNs() - cpu_before;
  EXPECT_GT(kicks.load(), 10000u);
  EXPECT_LT(cpu_storm / kicks.load(), 20000u) << "the worker spent more than 20 us per kick";
  // Nothing queued behind the storm: the worker goes idle at once.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  load_->Stop();
  uint64_t cpu_after = worker_->CpuTimeNs();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_LT(worker_->CpuTimeNs() - cpu_after, 30'000'000u) << "the worker stayed busy after the storm";
  EXPECT_GT(load_->verified(), served_before) << "the healthy guest was not served during the storm";
  // The stormy guest itself is not punished for kicking: it is served, and nothing else happened.
  EXPECT_FALSE(guest.device->broken());
  Bytes back(kPageSize);
  ASSERT_TRUE(guest.front->Submit({IoOp::kRead, 8, kPageSize, back.data(), 1}).ok());
  IoCompletion done[1];
  ASSERT_EQ(guest.front->Wait(done, std::chrono::seconds(10)).value(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  EXPECT_EQ(back, PatternAt(8 << kSectorShift, kPageSize));
  EXPECT_EQ(guest.device->stats().rd_req.load(), 1u);
  EXPECT_EQ(load_->failure(), "");
  load_ = std::make_unique<HealthyLoad>(*healthy_->front);  // for TearDown's check
  load_->Start();
}

// A guest fills its ring and never reads a response: it is answered and then holds nothing of the backend's.
// One that goes on producing blindly over its unread responses gets its ring stopped, or served; never more.
TEST_F(HostileRingTest, FrontendThatNeverReadsResponsesHoldsNothing) {
  Guest& guest = Hostile();
  Blkfront& front = *guest.front;
  GrantedPage page = GrantPage(guest.domain(), false);
  const uint32_t slots = front.ring_slots();
  for (uint32_t i = 0; i < slots; ++i)
    ASSERT_TRUE(Place(front, OnePage(BLKIF_OP_READ, 100 + i, 0, page.ref)).ok());
  EXPECT_FALSE(Place(front, OnePage(BLKIF_OP_READ, 99, 0, page.ref)).ok()) << "the ring should be full";
  ASSERT_TRUE(front.Push().ok());
  auto deadline = Clock::now() + kDeadline;
  while (front.shared_ring().rsp_prod != front.req_prod_pvt() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(front.shared_ring().rsp_prod, front.req_prod_pvt()) << "the full ring was not answered";
  EXPECT_EQ(guest.device->stats().rd_req.load(), slots);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  uint64_t served = load_->verified();
  EXPECT_TRUE(load_->WaitFor(served + 20));

  // Blind production: req_prod keeps moving over slots whose responses were never read.
  abi::SharedRingHeader& ring = front.shared_ring();
  uint32_t prod = ring.req_prod;
  for (int i = 0; i < 20000 && !guest.device->broken(); ++i) {
    Request request = OnePage(BLKIF_OP_READ, 1'000'000 + i, 0, page.ref);
    EncodeRequest(Abi::kX86_64, request, front.RingEntry(prod));
    std::atomic_thread_fence(std::memory_order_release);
    std::atomic_ref<uint32_t>(ring.req_prod).store(++prod);
    ASSERT_TRUE(front.NotifyBackend().ok());
  }
  deadline = Clock::now() + kDeadline;
  while (!guest.device->broken() && std::atomic_ref<uint32_t>(ring.rsp_prod).load() != prod &&
         Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  uint64_t taken = guest.device->stats().rd_req.load();
  EXPECT_TRUE(guest.device->broken() || ring.rsp_prod == prod) << "neither stopped nor served";
  EXPECT_LE(taken, slots + 20000u);
}

// req_prod exactly a ring ahead of the responses is a full ring and is served; one more, or a req_prod moved
// back behind what the backend took, stops that ring and nothing else.
TEST_F(HostileRingTest, ReqProdAheadByARingIsServedByMoreOrBackwardsStopsTheRing) {
  Guest& guest = Hostile();
  Blkfront& front = *guest.front;
  GrantedPage page = GrantPage(guest.domain(), false);
  const uint32_t slots = front.ring_slots();
  std::vector<uint64_t> ids;
  for (uint32_t i = 0; i < slots; ++i) {
    ASSERT_TRUE(Place(front, OnePage(BLKIF_OP_READ, 200 + i, 8 * i, page.ref)).ok());
    ids.push_back(200 + i);
  }
  ASSERT_TRUE(front.Push().ok());
  for (const RawResponse& response : Collect(front, ids)) EXPECT_EQ(response.status, BLKIF_RSP_OKAY);
  EXPECT_FALSE(guest.device->broken());

  abi::SharedRingHeader& ring = front.shared_ring();
  std::atomic_ref<uint32_t>(ring.req_prod).store(std::atomic_ref<uint32_t>(ring.rsp_prod).load() + slots + 1);
  ASSERT_TRUE(front.NotifyBackend().ok());
  auto deadline = Clock::now() + kDeadline;
  while (!guest.device->broken() && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(guest.device->broken());
  EXPECT_EQ(guest.device->stats().rd_req.load(), slots) << "a request of the broken ring was taken";

  // A second hostile ring: the backend took two requests; req_prod then goes back by one.
  Guest backwards(sim_, "backwards", 3, *worker_);
  Blkfront& back_front = *backwards.front;
  GrantedPage back_page = GrantPage(back_front.domain(), false);
  ASSERT_TRUE(Place(back_front, OnePage(BLKIF_OP_READ, 1, 0, back_page.ref)).ok());
  ASSERT_TRUE(Place(back_front, OnePage(BLKIF_OP_READ, 2, 8, back_page.ref)).ok());
  ASSERT_TRUE(back_front.Push().ok());
  ASSERT_EQ(Collect(back_front, {1, 2}).size(), 2u);
  abi::SharedRingHeader& back_ring = back_front.shared_ring();
  std::atomic_ref<uint32_t>(back_ring.req_prod).store(back_front.req_prod_pvt() - 1);
  ASSERT_TRUE(back_front.NotifyBackend().ok());
  deadline = Clock::now() + kDeadline;
  while (!backwards.device->broken() && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(backwards.device->broken());
}

// A guest thread watches its ring and publishes a refused request (an unknown operation) for every response
// the backend writes, so that refused requests, which take no slot, are always waiting. One round takes a
// ring's worth; the rest waits for the worker's next iteration, after the other rings: the healthy guest on
// the same worker keeps its pace.
TEST_F(HostileRingTest, FloodOfRefusedRequestsCannotStarveARingOnTheSameWorker) {
  Guest& guest = Hostile();
  Blkfront& front = *guest.front;
  const uint32_t slots = front.ring_slots();
  abi::SharedRingHeader& ring = front.shared_ring();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> published{0};
  std::thread flooder([&] {
    uint32_t start = ring.req_prod;
    uint32_t prod = start;
    uint32_t answered = start;  // responses seen in the slots (never through rsp_prod: it may lag)
    auto request_id = [](uint32_t index) { return (uint64_t{1} << 40) | index; };
    while (!stop.load(std::memory_order_relaxed)) {
      // A slot holding a response carries its request's id in its first 8 bytes.
      while (answered != prod) {
        uint64_t id;
        std::memcpy(&id, front.RingEntry(answered), sizeof(id));
        if (id != request_id(answered)) break;
        ++answered;
      }
      bool added = false;
      while (prod - answered < slots) {
        Request request;
        request.operation = 99;
        request.id = request_id(prod);
        EncodeRequest(Abi::kX86_64, request, front.RingEntry(prod));
        ++prod;
        added = true;
      }
      if (added) {
        std::atomic_thread_fence(std::memory_order_release);
        std::atomic_ref<uint32_t>(ring.req_prod).store(prod);
        (void)front.NotifyBackend();
        published.store(prod - start, std::memory_order_relaxed);
      }
    }
  });
  // Let the flood get going, then measure the healthy guest's pace through it.
  auto deadline = Clock::now() + kDeadline;
  while (published.load() < 50u * slots && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  uint64_t served = load_->verified();
  bool kept_pace = load_->WaitFor(served + 100);
  uint64_t flood = published.load();
  stop.store(true);
  flooder.join();
  EXPECT_TRUE(kept_pace) << "the healthy guest starved: " << load_->verified() - served << " I/Os in "
                         << kDeadline.count() << " s";
  EXPECT_GT(flood, 50u * slots) << "the flood never got going";
  EXPECT_GT(guest.device->stats().bad_req.load(), 50u * slots);
  EXPECT_FALSE(guest.device->broken()) << "a flood inside the ring's bounds is not a protocol error";
}

}  // namespace
}  // namespace blk

namespace blk {
namespace {

// The same flood, deterministic: the worker is stepped by hand, and the hostile frontend publishes a ring's
// worth of refused requests more each time the backend logs one of them (the first 20 are logged in full),
// that is, from inside the backend's round, as a frontend on a faster CPU would. A round still takes one
// ring's worth (without the budget, this one took 51); the healthy ring kicked at the same time is served in
// the same iteration.
TEST(HostileRingSteppedTest, ARoundTakesARingsWorthHoweverFastTheFrontendPublishes) {
  SimHypervisor sim;
  auto worker = Worker::Create("worker0", 256);
  ASSERT_TRUE(worker.ok());
  Guest hostile(sim, "stepped_hostile", 2, **worker);
  Guest healthy(sim, "stepped_healthy", 1, **worker);
  Blkfront& front = *hostile.front;
  const uint32_t slots = front.ring_slots();
  abi::SharedRingHeader& ring = front.shared_ring();
  uint32_t prod = ring.req_prod;
  uint32_t answered = prod;
  auto request_id = [](uint32_t index) { return (uint64_t{1} << 40) | index; };
  auto publish = [&] {
    for (uint64_t id; answered != prod; ++answered) {
      std::memcpy(&id, front.RingEntry(answered), sizeof(id));
      if (id != request_id(answered)) break;
    }
    for (; prod - answered < slots; ++prod) {
      Request request;
      request.operation = 99;
      request.id = request_id(prod);
      EncodeRequest(Abi::kX86_64, request, front.RingEntry(prod));
    }
    std::atomic_ref<uint32_t>(ring.req_prod).store(prod);
  };
  struct Hook {
    std::function<void()> publish;
    uint64_t calls = 0;
  } hook{publish};
  SetLogSink(
      [](LogLevel, const char* line, void* context) {
        auto* hook = static_cast<Hook*>(context);
        if (std::strstr(line, "2/51712: bad request") != nullptr) {
          ++hook->calls;
          hook->publish();
        }
      },
      &hook);
  publish();
  ASSERT_TRUE(front.NotifyBackend().ok());
  Bytes data(kPageSize, 0x6B), back(kPageSize);
  ASSERT_TRUE(healthy.front->Submit({IoOp::kWrite, 40, kPageSize, data.data(), 1}).ok());

  (*worker)->RunOnce(1000);
  uint64_t first_round = hostile.device->stats().bad_req.load();
  // The round ends after a ring's worth; the worker comes back for the rest on its next iteration.
  EXPECT_EQ(first_round, slots) << "one round took " << first_round << " requests of one ring";
  EXPECT_EQ(healthy.device->stats().wr_req.load(), 1u) << "the healthy ring waited behind the flood";
  // The rest of the flood is served on the next iterations, without another kick.
  uint64_t logged = hook.calls;
  auto deadline = Clock::now() + kDeadline;
  while (std::atomic_ref<uint32_t>(ring.rsp_prod).load() != prod && Clock::now() < deadline)
    (*worker)->RunOnce(0);
  SetLogSink(nullptr, nullptr);
  EXPECT_EQ(std::atomic_ref<uint32_t>(ring.rsp_prod).load(), prod) << "the flood's tail was never served";
  EXPECT_GT(logged, 1u);
  EXPECT_FALSE(hostile.device->broken());
  IoCompletion done[1];
  for (int i = 0; i < 100; ++i) {
    (*worker)->RunOnce(10);
    auto got = healthy.front->Reap(done);
    ASSERT_TRUE(got.ok());
    if (*got == 1) break;
  }
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  ASSERT_TRUE(healthy.front->Submit({IoOp::kRead, 40, kPageSize, back.data(), 2}).ok());
  for (int i = 0; i < 100; ++i) {
    (*worker)->RunOnce(10);
    auto got = healthy.front->Reap(done);
    ASSERT_TRUE(got.ok());
    if (*got == 1) break;
  }
  EXPECT_EQ(back, data);
}

}  // namespace
}  // namespace blk
