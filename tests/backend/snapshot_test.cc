// Snapshots and image swaps through the control socket, under load: a frontend keeps 32 verified writes in
// flight while `snapshot` runs in a loop; every layer of the resulting chain is then read back with
// formats/vhd and held against what the frontend knew when each write was sent and acknowledged. Then every
// refusal of `snapshot` and `resume --image`, each leaving the device serving (or paused) on its old image.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/control_client.h"
#include "backend/control_device.h"
#include "backend/control_server.h"
#include "backend/device.h"
#include "backend/worker.h"
#include "formats/vhd/chain.h"
#include "formats/vhd/check.h"
#include "formats/vhd/create.h"
#include "frontend/blkfront.h"
#include "ring/sim/sim_hypervisor.h"
#include "tests/backend/one_ring_guest.h"

namespace blk {
namespace {

constexpr uint64_t kDiskBytes = 4ull << 20;
constexpr uint32_t kBlock = 4096;
constexpr uint64_t kBlocks = kDiskBytes / kBlock;
constexpr unsigned kDepth = 32;
constexpr unsigned kSnapshots = 50;
constexpr int kReplyMs = 10000;
const char kDevice[] = "1/51712";

// A write's 4 KiB: its sequence number (never 0) and block in the first 16 bytes, then bytes derived from
// both, so that any block read back names the write it came from, and a torn one is caught.
void FillBlock(uint8_t* out, uint64_t seq, uint64_t block) {
  std::memcpy(out, &seq, 8);
  std::memcpy(out + 8, &block, 8);
  uint64_t x = seq * 0x9e3779b97f4a7c15ull ^ block;
  for (uint32_t i = 16; i < kBlock; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    out[i] = static_cast<uint8_t>(x >> 56);
  }
}

// The write a block read back holds (0: never written, all zeros); -1 when it is no write's.
int64_t IdentifyBlock(const uint8_t* in, uint64_t block) {
  if (std::all_of(in, in + kBlock, [](uint8_t b) { return b == 0; })) return 0;
  uint64_t seq;
  std::memcpy(&seq, in, 8);
  std::vector<uint8_t> expected(kBlock);
  FillBlock(expected.data(), seq, block);
  return std::memcmp(expected.data(), in, kBlock) == 0 ? static_cast<int64_t>(seq) : -1;
}

struct WriteRecord {
  uint64_t block;
  uint32_t done_at_send;    // snapshots answered when it was sent: it lands in that layer or a later one
  uint32_t started_at_ack;  // snapshots asked for when its answer came: it is in that layer or an earlier one
};

class SnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/dev/shm/blk-snapshot-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
  }

  // A device named kDevice on `spec` (a VHD by default), a threaded worker, a frontend and a control server.
  // `threaded`: the worker runs on its own thread; otherwise the test steps it with RunOnce.
  void Start(const std::string& path, ImageFormatHint format, bool threaded = true) {
    DeviceConfig config;
    config.name = kDevice;
    config.path = path;
    config.format = format;
    config.direct = false;
    OneRingGuest guest;
    ConnectOneRingGuest(sim_, config, 4 * kDepth, threaded, &guest);
    device_ = std::move(guest.device);
    front_ = std::move(guest.front);
    worker_ = std::move(guest.worker);
    ASSERT_FALSE(HasFatalFailure());
    target_.Add(kDevice, *device_);
    ControlServerOptions options;
    options.socket_path = dir_ + "/control";
    auto server = ControlServerThread::Start(options, target_);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
  }

  std::string MakeVhd(const std::string& name, uint64_t bytes = kDiskBytes) {
    std::string path = dir_ + "/" + name;
    Status made = vhd::CreateImage(path, vhd::CreateOptions::Dynamic(bytes, 64u << 10));
    EXPECT_TRUE(made.ok()) << made.ToString();
    return path;
  }

  void TearDown() override {
    server_.reset();
    if (device_) device_->Disconnect();
    if (worker_) worker_->Stop();
    device_.reset();
    front_.reset();
    worker_.reset();
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }

  // "ok: <first body line>" or "error: <message>".
  std::string Ask(const std::string& line) {
    auto client = ControlClient::Connect(dir_ + "/control");
    if (!client.ok()) return "no connection: " + client.status().ToString();
    Result<ControlReply> reply = (*client)->CallLine(line, kReplyMs);
    if (!reply.ok()) return "broken: " + reply.status().ToString();
    if (!reply->ok) return "error: " + reply->error;
    return "ok: " + (reply->lines.empty() ? std::string() : reply->lines.front());
  }

  // Writes and reads one block through the frontend and checks it comes back: the device serves.
  void ExpectServes(uint64_t block, uint64_t seq) {
    auto* out = static_cast<uint8_t*>(std::aligned_alloc(kPageSize, 2 * kBlock));
    FillBlock(out, seq, block);
    Io write;
    write.op = IoOp::kWrite;
    write.sector = block * (kBlock >> kSectorShift);
    write.length = kBlock;
    write.buffer = out;
    ASSERT_TRUE(front_->Queue(write).ok());
    ASSERT_TRUE(front_->Push().ok());
    ExpectCompletions(1);
    Io read = write;
    read.op = IoOp::kRead;
    read.buffer = out + kBlock;
    ASSERT_TRUE(front_->Queue(read).ok());
    ASSERT_TRUE(front_->Push().ok());
    ExpectCompletions(1);
    EXPECT_EQ(IdentifyBlock(out + kBlock, block), static_cast<int64_t>(seq));
    std::free(out);
  }

  void ExpectCompletions(size_t count) {
    size_t got_total = 0;
    for (int round = 0; round < 100 && got_total < count; ++round) {
      IoCompletion done[8];
      auto got = front_->Wait(done, std::chrono::milliseconds(100));
      ASSERT_TRUE(got.ok());
      for (size_t i = 0; i < *got; ++i) EXPECT_EQ(done[i].status, BLKIF_RSP_OKAY);
      got_total += *got;
    }
    ASSERT_EQ(got_total, count);
  }

  std::string dir_;
  SimHypervisor sim_;
  std::unique_ptr<Device> device_;
  std::unique_ptr<Blkfront> front_;
  std::unique_ptr<Worker> worker_;
  DeviceControlTarget target_;
  std::unique_ptr<ControlServerThread> server_;
};

// The whole disk through formats/vhd's synchronous reader, one write sequence number per block.
std::vector<int64_t> ReadLayer(const std::string& path) {
  std::vector<int64_t> seqs(kBlocks, -2);
  auto chain = vhd::VhdChain::Open(path, false);
  EXPECT_TRUE(chain.ok()) << path << ": " << chain.status().ToString();
  if (!chain.ok()) return seqs;
  std::vector<uint8_t> bytes(kDiskBytes);
  Status read = (*chain)->top().Read(0, bytes);
  EXPECT_TRUE(read.ok()) << read.ToString();
  for (uint64_t b = 0; b < kBlocks; ++b) seqs[b] = IdentifyBlock(bytes.data() + b * kBlock, b);
  return seqs;
}

TEST_F(SnapshotTest, FiftySnapshotsUnderIodepth32KeepEveryWriteInItsLayer) {
  std::vector<std::string> layers = {MakeVhd("layer0.vhd")};
  Start(layers[0], ImageFormatHint::kVhd);

  std::atomic<uint32_t> started{0}, done{0};
  std::atomic<bool> stop{false};
  std::vector<WriteRecord> writes(1);  // seq 0 is "never written"
  std::atomic<uint64_t> failures{0};
  uint64_t max_latency_ns = 0;
  std::thread guest([&] {
    std::mt19937_64 random(42);
    struct Slot {
      uint8_t* buffer;
      uint64_t seq;
      std::chrono::steady_clock::time_point sent;
    };
    std::vector<Slot> slots(kDepth);
    std::vector<unsigned> free_slots;
    std::vector<bool> busy(kBlocks, false);  // one write per block at a time: a block's writes are ordered
    for (unsigned i = 0; i < kDepth; ++i) {
      slots[i].buffer = static_cast<uint8_t*>(std::aligned_alloc(kPageSize, kBlock));
      free_slots.push_back(i);
    }
    while (!stop.load() || free_slots.size() < kDepth) {
      while (!stop.load() && !free_slots.empty()) {
        uint64_t block = random() % kBlocks;
        if (busy[block]) continue;
        unsigned index = free_slots.back();
        free_slots.pop_back();
        Slot& slot = slots[index];
        slot.seq = writes.size();
        writes.push_back({block, done.load(), 0});
        busy[block] = true;
        FillBlock(slot.buffer, slot.seq, block);
        Io io;
        io.op = IoOp::kWrite;
        io.sector = block * (kBlock >> kSectorShift);
        io.length = kBlock;
        io.buffer = slot.buffer;
        io.tag = index;
        slot.sent = std::chrono::steady_clock::now();
        if (!front_->Queue(io).ok()) failures++;
      }
      if (!front_->Push().ok()) failures++;
      IoCompletion completed[64];
      auto got = front_->Wait(completed, std::chrono::milliseconds(200));
      if (!got.ok()) {
        failures++;
        break;
      }
      for (size_t i = 0; i < *got; ++i) {
        Slot& slot = slots[completed[i].tag];
        if (completed[i].status != BLKIF_RSP_OKAY) failures++;
        writes[slot.seq].started_at_ack = started.load();
        busy[writes[slot.seq].block] = false;
        uint64_t ns =
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - slot.sent)
                .count();
        max_latency_ns = std::max(max_latency_ns, ns);
        free_slots.push_back(static_cast<unsigned>(completed[i].tag));
      }
    }
    for (Slot& slot : slots) std::free(slot.buffer);
  });

  double max_snapshot_ms = 0;
  for (unsigned k = 1; k <= kSnapshots; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // let writes land in every layer
    std::string child = dir_ + "/layer" + std::to_string(k) + ".vhd";
    started.store(k);
    auto begin = std::chrono::steady_clock::now();
    std::string reply = Ask(std::string("snapshot ") + kDevice + " " + child + " --timeout 2000");
    max_snapshot_ms =
        std::max(max_snapshot_ms,
                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begin).count());
    ASSERT_TRUE(reply.starts_with("ok: ")) << reply;
    EXPECT_NE(reply.find("is the new leaf"), std::string::npos) << reply;
    done.store(k);
    layers.push_back(child);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  stop.store(true);
  guest.join();
  EXPECT_EQ(failures.load(), 0u);
  EXPECT_EQ(device_->image().path(), layers.back());
  EXPECT_EQ(device_->pause_state(), PauseState::kRunning);
  std::printf("[ snapshot ] %u snapshots, %zu writes; slowest snapshot %.1f ms, slowest write %.1f ms\n",
              kSnapshots, writes.size() - 1, max_snapshot_ms, max_latency_ns / 1e6);
  // The guest saw no error and no stall longer than a pause's worth.
  EXPECT_LT(max_latency_ns, 2'000'000'000ull);

  // The device still owns the leaf; every earlier layer is closed (read-only parents in the chain).
  device_->Disconnect();
  worker_->Stop();
  device_.reset();

  // Layer k is the disk as the snapshot k+1 froze it: for every block, a write sent no later than layer k
  // allows (done_at_send <= k), and no older than the last write acknowledged before snapshot k+1 was asked.
  std::vector<int64_t> last_acked(kBlocks, 0);
  std::vector<std::vector<uint64_t>> by_block(kBlocks);
  for (uint64_t seq = 1; seq < writes.size(); ++seq) by_block[writes[seq].block].push_back(seq);
  for (size_t k = 0; k < layers.size(); ++k) {
    std::vector<int64_t> layer = ReadLayer(layers[k]);
    for (uint64_t b = 0; b < kBlocks; ++b) {
      int64_t newest_required = 0;
      for (uint64_t seq : by_block[b]) {
        if (writes[seq].started_at_ack <= k) newest_required = static_cast<int64_t>(seq);
      }
      int64_t found = layer[b];
      ASSERT_GE(found, 0) << "layer " << k << " block " << b << " holds no write's data";
      ASSERT_GE(found, newest_required)
          << "layer " << k << " block " << b << " lost write " << newest_required;
      if (found > 0) {
        ASSERT_LE(writes[found].done_at_send, k) << "layer " << k << " block " << b << " holds write "
                                                 << found << ", sent after snapshot " << k + 1;
      }
    }
    vhd::CheckReport report = vhd::CheckImage(layers[k]);
    std::string problems;
    for (const std::string& problem : report.problems) problems += problem + "\n";
    EXPECT_TRUE(report.ok()) << layers[k] << ": " << problems;
  }
  // The final chain is exactly the model: every block holds its last write.
  std::vector<int64_t> final_layer = ReadLayer(layers.back());
  for (uint64_t b = 0; b < kBlocks; ++b) {
    int64_t last = by_block[b].empty() ? 0 : static_cast<int64_t>(by_block[b].back());
    EXPECT_EQ(final_layer[b], last) << "block " << b;
  }
}

TEST_F(SnapshotTest, RefusalsLeaveTheDeviceOnItsImage) {
  std::string base = MakeVhd("base.vhd");
  Start(base, ImageFormatHint::kVhd);
  ExpectServes(3, 1);

  EXPECT_EQ(Ask("snapshot 9/51712 " + dir_ + "/x.vhd"), "error: no device 9/51712 (see list)");
  std::string existing = MakeVhd("existing.vhd");
  std::string reply = Ask(std::string("snapshot ") + kDevice + " " + existing);
  EXPECT_NE(reply.find("exists; refusing to replace it"), std::string::npos) << reply;
  // A directory that does not exist: the pause happens, the child cannot be made, the device resumes.
  reply = Ask(std::string("snapshot ") + kDevice + " " + dir_ + "/no/such/dir/c.vhd");
  EXPECT_EQ(reply,
            "error: 1/51712: creating " + dir_ +
                "/no/such/dir/c.vhd: No such file or directory (no snapshot; resumed on the old image)");
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/no"));
  EXPECT_EQ(device_->image().path(), base);
  EXPECT_EQ(device_->pause_state(), PauseState::kRunning);
  ExpectServes(4, 2);

  // resume --image: only while paused; refused images keep it paused on the old one.
  std::string other_size = MakeVhd("small.vhd", kDiskBytes / 2);
  reply = Ask(std::string("resume ") + kDevice + " --image vhd:" + other_size);
  EXPECT_EQ(reply, "error: 1/51712 is running: the image changes only while paused");
  EXPECT_EQ(device_->pause_state(), PauseState::kRunning);
  ASSERT_TRUE(Ask(std::string("pause ") + kDevice).starts_with("ok: "));
  // Already paused: a snapshot would resume what the operator paused; refused, and it stays paused.
  EXPECT_EQ(
      Ask(std::string("snapshot ") + kDevice + " " + dir_ + "/p.vhd"),
      "error: 1/51712 is paused: a snapshot pauses and resumes by itself (resume first, or resume --image)");
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/p.vhd"));
  EXPECT_EQ(device_->pause_state(), PauseState::kPaused);
  reply = Ask(std::string("resume ") + kDevice + " --image vhd:" + other_size);
  EXPECT_NE(reply.find("holds 2097152 bytes, the disk 4194304"), std::string::npos) << reply;
  EXPECT_NE(reply.find("(still paused on the old image)"), std::string::npos) << reply;
  EXPECT_EQ(device_->pause_state(), PauseState::kPaused);
  reply = Ask(std::string("resume ") + kDevice + " --image vhd:" + dir_ + "/missing.vhd");
  EXPECT_NE(reply.find("cannot open the new image"), std::string::npos) << reply;
  std::string junk = dir_ + "/junk.vhd";
  { std::ofstream(junk) << "not a vhd"; }
  reply = Ask(std::string("resume ") + kDevice + " --image vhd:" + junk);
  EXPECT_NE(reply.find("cannot open the new image"), std::string::npos) << reply;
  // A differencing child whose parent is gone is not a disk.
  std::string lost_parent = MakeVhd("lost-parent.vhd");
  std::string orphan = dir_ + "/orphan.vhd";
  ASSERT_TRUE(vhd::CreateImage(orphan, vhd::CreateOptions::Differencing(lost_parent)).ok());
  ASSERT_EQ(::unlink(lost_parent.c_str()), 0);
  reply = Ask(std::string("resume ") + kDevice + " --image vhd:" + orphan);
  EXPECT_TRUE(reply.starts_with("error: 1/51712: cannot open the new image: ")) << reply;
  EXPECT_NE(reply.find("(still paused on the old image)"), std::string::npos) << reply;
  EXPECT_EQ(reply.find('\n'), std::string::npos) << reply;
  EXPECT_EQ(device_->pause_state(), PauseState::kPaused);
  EXPECT_EQ(device_->image().path(), base);

  // A good image: same size; the guest's next write lands there.
  std::string next = MakeVhd("next.vhd");
  reply = Ask(std::string("resume ") + kDevice + " --image vhd:" + next);
  EXPECT_EQ(reply, "ok: 1/51712 resumed") << reply;
  EXPECT_EQ(device_->image().path(), next);
  ExpectServes(5, 3);
  EXPECT_EQ(ReadLayer(next)[5], 3);
  EXPECT_EQ(ReadLayer(next)[3], 0);  // the old image's data stayed there
  EXPECT_EQ(ReadLayer(base)[3], 1);
}

TEST_F(SnapshotTest, RawDevicesRefuseSnapshotsAndTakeRawSwaps) {
  std::string raw = dir_ + "/disk.img";
  { std::ofstream(raw).close(); }
  ASSERT_EQ(::truncate(raw.c_str(), kDiskBytes), 0);
  Start(raw, ImageFormatHint::kRaw);
  std::string reply = Ask(std::string("snapshot ") + kDevice + " " + dir_ + "/c.vhd");
  EXPECT_NE(reply.find("is a raw image: a snapshot needs a VHD leaf"), std::string::npos) << reply;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/c.vhd"));
  EXPECT_EQ(device_->pause_state(), PauseState::kRunning);
  ExpectServes(1, 1);
  ASSERT_TRUE(Ask(std::string("pause ") + kDevice).starts_with("ok: "));
  std::string copy = dir_ + "/copy.img";
  std::filesystem::copy_file(raw, copy);
  EXPECT_EQ(Ask(std::string("resume ") + kDevice + " --image raw:" + copy), "ok: 1/51712 resumed");
  EXPECT_EQ(device_->image().path(), copy);
  ExpectServes(2, 2);
}

// A test-only image with a chosen geometry, to see CheckImageSwap refuse what real files rarely offer.
class GeometryImage final : public DiskImage {
 public:
  GeometryImage(uint64_t bytes, uint32_t sector, bool read_only) : DiskImage(ImageFormat::kRaw) {
    path_ = "test.img";
    size_bytes_ = bytes;
    logical_block_size_ = sector;
    read_only_ = read_only;
  }
  Result<size_t> Map(uint64_t, uint64_t, std::span<ImageExtent>) override { return size_t{0}; }
};

TEST(ImageSwapCheckTest, RefusesAnotherSectorSizeOrReadOnlyState) {
  DiskLimits limits;
  limits.sectors = kDiskBytes >> kSectorShift;
  limits.logical_block_size = 512;
  limits.read_only = false;
  EXPECT_TRUE(CheckImageSwap("1/2", limits, 1, GeometryImage(kDiskBytes, 512, false)).ok());
  EXPECT_EQ(CheckImageSwap("1/2", limits, 1, GeometryImage(kDiskBytes, 4096, false)).message(),
            "1/2: test.img has 4096-byte sectors, the disk 512-byte ones");
  EXPECT_EQ(CheckImageSwap("1/2", limits, 1, GeometryImage(kDiskBytes, 512, true)).message(),
            "1/2: test.img is read-only, the disk read-write");
  EXPECT_NE(CheckImageSwap("1/2", limits, 1, GeometryImage(kDiskBytes + 512, 512, false))
                .message()
                .find("cannot change size"),
            std::string::npos);
  // A guest offered discard keeps it: an image that cannot take it (neither a raw file nor a VHD) is refused.
  limits.discard = true;
  EXPECT_EQ(CheckImageSwap("1/2", limits, 1, GeometryImage(kDiskBytes, 512, false)).message(),
            "1/2: the guest was offered discard, which test.img (raw) cannot take");
}

// The snapshot's pause is held up by writes in flight (the worker is stepped by hand) while its client
// leaves: the snapshot still completes once the pause does, and the device runs again on the child.
TEST_F(SnapshotTest, AClientLeavingMidSnapshotStillGetsItDoneAndResumed) {
  std::string base = MakeVhd("base.vhd");
  Start(base, ImageFormatHint::kVhd, /*threaded=*/false);
  auto* out = static_cast<uint8_t*>(std::aligned_alloc(kPageSize, 4 * kBlock));
  for (uint64_t i = 0; i < 4; ++i) {
    FillBlock(out + i * kBlock, 1 + i, i);
    Io io;
    io.op = IoOp::kWrite;
    io.sector = i * (kBlock >> kSectorShift);
    io.length = kBlock;
    io.buffer = out + i * kBlock;
    io.tag = i;
    ASSERT_TRUE(front_->Queue(io).ok());
  }
  ASSERT_TRUE(front_->Push().ok());
  worker_->RunOnce(0);  // taken: the pause has to wait for them
  std::string child = dir_ + "/child.vhd";
  {
    auto client = ControlClient::Connect(dir_ + "/control");
    ASSERT_TRUE(client.ok());
    std::string line = std::string("snapshot ") + kDevice + " " + child + "\n";
    ASSERT_EQ(::send((*client)->fd(), line.data(), line.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(line.size()));
    for (int i = 0; i < 500 && device_->pause_state() != PauseState::kPausing; ++i) ::usleep(1000);
    ASSERT_EQ(device_->pause_state(), PauseState::kPausing);
  }  // gone before the answer
  EXPECT_NE(Ask("list").find("io=pausing"), std::string::npos);
  for (int i = 0; i < 100 && device_->pause_state() == PauseState::kPausing; ++i) worker_->RunOnce(10);
  // From here the control thread takes the snapshot (the stepped worker runs its tasks on the caller).
  std::string list;
  for (int i = 0; i < 300; ++i) {
    list = Ask("list");
    if (list.find("io=running") != std::string::npos && list.find("images=" + child) != std::string::npos)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_NE(list.find("images=" + child), std::string::npos) << list;
  EXPECT_NE(list.find("io=running"), std::string::npos) << list;
  worker_->Start();
  ExpectCompletions(4);
  std::free(out);
  ExpectServes(8, 9);
  std::vector<int64_t> parent = ReadLayer(base);
  EXPECT_EQ(parent[0], 1);
  EXPECT_EQ(parent[3], 4);
  EXPECT_EQ(parent[8], 0);
  EXPECT_EQ(ReadLayer(child)[8], 9);
  EXPECT_EQ(ReadLayer(child)[3], 4);
}

// A snapshot whose pause does not drain in time is abandoned: the device resumes on its old leaf, no child
// is made, and the writes that held the pause up complete there.
TEST_F(SnapshotTest, ASnapshotThatCannotDrainInTimeResumesWithoutAChild) {
  std::string base = MakeVhd("base.vhd");
  Start(base, ImageFormatHint::kVhd, /*threaded=*/false);
  auto* out = static_cast<uint8_t*>(std::aligned_alloc(kPageSize, 2 * kBlock));
  for (uint64_t i = 0; i < 2; ++i) {
    FillBlock(out + i * kBlock, 1 + i, i);
    Io io;
    io.op = IoOp::kWrite;
    io.sector = i * (kBlock >> kSectorShift);
    io.length = kBlock;
    io.buffer = out + i * kBlock;
    io.tag = i;
    ASSERT_TRUE(front_->Queue(io).ok());
  }
  ASSERT_TRUE(front_->Push().ok());
  worker_->RunOnce(0);  // taken and submitted; nobody reaps their completions until the worker runs
  std::string child = dir_ + "/child.vhd";
  std::string reply = Ask(std::string("snapshot ") + kDevice + " " + child + " --timeout 30");
  EXPECT_TRUE(reply.starts_with("error: 1/51712: not drained after 30 ms, still outstanding: q0: write id "))
      << reply;
  EXPECT_TRUE(reply.ends_with(" (no snapshot; resumed on the old image)")) << reply;
  EXPECT_EQ(reply.find('\n'), std::string::npos) << reply;
  EXPECT_FALSE(std::filesystem::exists(child));
  EXPECT_EQ(device_->pause_state(), PauseState::kRunning);
  EXPECT_EQ(device_->image().path(), base);
  worker_->Start();
  ExpectCompletions(2);
  std::free(out);
  ExpectServes(5, 7);
  std::vector<int64_t> layer = ReadLayer(base);
  EXPECT_EQ(layer[0], 1);
  EXPECT_EQ(layer[1], 2);
  EXPECT_EQ(layer[5], 7);
}

}  // namespace
}  // namespace blk
