// The datapath on VHD images: the real backend (Device, RequestPipeline, VhdIo, Worker, AioEngine) serving a
// dynamic VHD and a differencing chain to the userspace blkfront, every byte checked against a model of the
// disk, and the files checked afterwards by formats/vhd's checker and by qemu-img.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "formats/vhd/chain.h"
#include "formats/vhd/check.h"
#include "formats/vhd/create.h"
#include "formats/vhd_disk_image.h"
#include "tests/backend/datapath_fixture.h"

namespace blk {
namespace {

int RunCommand(const std::string& command, std::string* output) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t got;
  output->clear();
  while ((got = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output->append(buffer, got);
  int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool HaveQemuImg() {
  std::string ignored;
  return RunCommand("qemu-img --version", &ignored) == 0;
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<uint64_t>(st.st_size);
}

Bytes Pattern(size_t length, uint32_t seed) {
  Bytes bytes(length);
  uint32_t state = seed * 2654435761u + 1;
  for (size_t i = 0; i < length; ++i) {
    state = state * 1103515245u + 12345u;
    bytes[i] = static_cast<uint8_t>(state >> 16);
  }
  return bytes;
}

std::string TestPath(const std::string& dir, const std::string& name) {
  return dir + "/" + name + "." + std::to_string(::getpid()) + ".vhd";
}

// What a chain reads through formats/vhd's own synchronous reader.
Bytes ReadChain(const std::string& path) {
  Bytes bytes(kDiskBytes);
  auto chain = vhd::VhdChain::Open(path, false);
  EXPECT_TRUE(chain.ok()) << chain.status().ToString();
  if (chain.ok()) {
    Status read = (*chain)->top().Read(0, bytes);
    EXPECT_TRUE(read.ok()) << read.ToString();
  }
  return bytes;
}

void ExpectChecks(const std::string& path) {
  vhd::CheckReport report = vhd::CheckImage(path);
  std::string problems;
  for (const std::string& problem : report.problems) problems += problem + "\n";
  EXPECT_TRUE(report.ok()) << problems;
}

// qemu's view of a dynamic VHD (qemu does not follow differencing chains): it opens, and reads as `model`.
void ExpectQemuReads(const std::string& path, const Bytes& model) {
  std::string output;
  int check = RunCommand("qemu-img check -f vpc " + path, &output);
  // qemu's vpc driver has no checker (exit 63, "does not support checks"); anything else must be clean.
  if (check != 63) {
    EXPECT_EQ(check, 0) << output;
  }
  std::string raw = path + ".raw";
  ASSERT_EQ(RunCommand("qemu-img convert -f vpc -O raw " + path + " " + raw, &output), 0) << output;
  Bytes back(kDiskBytes);
  int fd = ::open(raw.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(::pread(fd, back.data(), back.size(), 0), static_cast<ssize_t>(back.size()));
  ::close(fd);
  ::unlink(raw.c_str());
  EXPECT_TRUE(back == model) << "qemu-img reads something else than the guest wrote";
}

enum class Chain { kFixed, kDynamic, kDifferencing };

struct VhdCase {
  Chain chain;
  unsigned depth;
  const char* dir;
  uint32_t block_size;
  bool speed_features = false;  // persistent grants and 64-segment indirect requests negotiated
};

class VhdRandomWorkloadTest : public ::testing::TestWithParam<VhdCase> {};

// A parent with data in some places and holes in others: bytes [0, 3 MiB) and [5 MiB, 6 MiB).
Bytes MakeParent(const std::string& path) {
  EXPECT_TRUE(vhd::CreateImage(path, vhd::CreateOptions::Dynamic(kDiskBytes)).ok());
  Bytes model(kDiskBytes, 0);
  auto parent = vhd::VhdChain::Open(path, true);
  EXPECT_TRUE(parent.ok()) << parent.status().ToString();
  Bytes data = Pattern(3u << 20, 7);
  EXPECT_TRUE((*parent)->top().Write(0, data).ok());
  std::copy(data.begin(), data.end(), model.begin());
  Bytes more = Pattern(1u << 20, 8);
  EXPECT_TRUE((*parent)->top().Write(5u << 20, more).ok());
  std::copy(more.begin(), more.end(), model.begin() + (5 << 20));
  EXPECT_TRUE((*parent)->top().Close().ok());
  return model;
}

TEST_P(VhdRandomWorkloadTest, ThousandsOfMixedIosVerifiedByteForByteAndTheFileChecksOut) {
  const VhdCase& c = GetParam();
  std::string path = TestPath(c.dir, "vhd_workload");
  std::string parent_path = TestPath(c.dir, "vhd_workload_parent");
  Bytes model(kDiskBytes, 0);
  Bytes parent_before;
  if (c.chain == Chain::kDifferencing) {
    model = MakeParent(parent_path);
    int fd = ::open(parent_path.c_str(), O_RDONLY);
    parent_before.resize(FileSize(parent_path));
    ASSERT_EQ(::pread(fd, parent_before.data(), parent_before.size(), 0),
              static_cast<ssize_t>(parent_before.size()));
    ::close(fd);
    vhd::CreateOptions options = vhd::CreateOptions::Differencing(parent_path);
    options.block_size = c.block_size;
    ASSERT_TRUE(vhd::CreateImage(path, options).ok());
  } else if (c.chain == Chain::kFixed) {
    ASSERT_TRUE(vhd::CreateImage(path, vhd::CreateOptions::Fixed(kDiskBytes)).ok());
  } else {
    ASSERT_TRUE(vhd::CreateImage(path, vhd::CreateOptions::Dynamic(kDiskBytes, c.block_size)).ok());
  }
  SimHypervisor sim;
  auto worker = Worker::Create("worker0", 1024);
  ASSERT_TRUE(worker.ok());
  (*worker)->Start();
  BlkfrontConfig config;
  config.max_outstanding = c.depth;
  // VHD keeps the copy path under persistent grants (VhdIo works on one buffer): the data must still be
  // right.
  const uint32_t indirect = c.speed_features ? 64 : 0;
  config.persistent = c.speed_features;
  config.indirect_segments = indirect;
  {
    Guest guest(sim, path, 1, config, false, **worker, true, 0, ImageFormatHint::kVhd, true, indirect);
    ASSERT_TRUE(guest.device && guest.front);
    EXPECT_EQ(guest.device->limits().sectors, kDiskSectors);
    Workload workload(*guest.front, model, c.depth, c.depth * 1000 + c.block_size);
    workload.Run(c.dir == std::string("/dev/shm") ? 6000 : 3000);
    EXPECT_GT(workload.writes, 1000u);
    EXPECT_EQ(guest.device->stats().io_errors.load(), 0u);
    EXPECT_FALSE(guest.device->broken());
    guest.device->Disconnect();
  }
  (*worker)->Stop();
  EXPECT_TRUE(ReadChain(path) == model) << "the image reads other than what the guest wrote";
  ExpectChecks(path);
  if (c.chain != Chain::kDifferencing) {
    if (HaveQemuImg()) ExpectQemuReads(path, model);
  } else {
    int fd = ::open(parent_path.c_str(), O_RDONLY);
    Bytes parent_after(FileSize(parent_path));
    ASSERT_EQ(::pread(fd, parent_after.data(), parent_after.size(), 0),
              static_cast<ssize_t>(parent_after.size()));
    ::close(fd);
    EXPECT_TRUE(parent_after == parent_before) << "a write reached the parent";
    ::unlink(parent_path.c_str());
  }
  ::unlink(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Images, VhdRandomWorkloadTest,
                         ::testing::Values(VhdCase{Chain::kFixed, 32, "/dev/shm", 0},
                                           VhdCase{Chain::kDynamic, 64, "/dev/shm", 64u << 10},
                                           VhdCase{Chain::kDynamic, 16, "/var/tmp", 2u << 20},
                                           VhdCase{Chain::kDifferencing, 64, "/dev/shm", 64u << 10},
                                           VhdCase{Chain::kDifferencing, 8, "/var/tmp", 2u << 20},
                                           VhdCase{Chain::kDynamic, 32, "/dev/shm", 64u << 10, true},
                                           VhdCase{Chain::kDifferencing, 16, "/dev/shm", 64u << 10, true}),
                         [](const auto& info) {
                           const char* kind = info.param.chain == Chain::kFixed     ? "Fixed"
                                              : info.param.chain == Chain::kDynamic ? "Dynamic"
                                                                                    : "Differencing";
                           return std::string(kind) + "Depth" + std::to_string(info.param.depth) + "Block" +
                                  std::to_string(info.param.block_size >> 10) + "K" +
                                  (std::string(info.param.dir) == "/dev/shm" ? "Shm" : "Disk") +
                                  (info.param.speed_features ? "PersistentIndirect" : "");
                         });

// A worker stepped by hand, so the test decides what the backend sees at once.
class SteppedVhdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto worker = Worker::Create("worker0", 256);
    ASSERT_TRUE(worker.ok());
    worker_ = std::move(*worker);
    path_ = TestPath("/var/tmp", "vhd_stepped");
    parent_path_ = TestPath("/var/tmp", "vhd_stepped_parent");
  }
  void TearDown() override {
    guest_.reset();
    ::unlink(path_.c_str());
    ::unlink(parent_path_.c_str());
  }
  void Connect(unsigned depth = 32, uint32_t indirect_segments = 0) {
    BlkfrontConfig config;
    config.max_outstanding = depth;
    config.indirect_segments = indirect_segments;
    guest_ = std::make_unique<Guest>(sim_, path_, 1, config, false, *worker_, true, 0, ImageFormatHint::kVhd,
                                     true, indirect_segments);
  }
  Blkfront& front() { return *guest_->front; }
  VhdDiskImage& image() {
    // The test's seam into the device's image (a Device only hands out a const view).
    return static_cast<VhdDiskImage&>(const_cast<DiskImage&>(guest_->device->image()));
  }
  std::vector<IoCompletion> Step(size_t count) { return StepUntil(*worker_, front(), count); }
  int16_t Do(IoOp op, uint64_t sector, Bytes& buffer, uint64_t tag = 1000) {
    return StepOne(*worker_, front(), op, sector, buffer, tag);
  }

  std::string path_;
  std::string parent_path_;
  SimHypervisor sim_;
  std::unique_ptr<Worker> worker_;
  std::unique_ptr<Guest> guest_;
};

// Reads of holes are answered without any I/O, inside the round that took them. With the ring's worth of them
// in flight, nothing else would come back to take the next ones (no completion, and no kick: the frontend
// publishes behind a req_event nobody re-armed): the pipeline must take them itself. Found in the Xen lab,
// where fio's random reads on a fresh VHD stopped the guest.
TEST_F(SteppedVhdTest, AFullRingOfHoleReadsIsFollowedByTheNextRequestsWithoutAKick) {
  ASSERT_TRUE(vhd::CreateImage(path_, vhd::CreateOptions::Dynamic(kDiskBytes)).ok());
  Connect(/*depth=*/96);
  std::vector<Bytes> buffers(96, Bytes(4096, 0xAB));
  for (unsigned i = 0; i < 96; ++i) {
    uint64_t sector = (i * 37u % (kDiskBytes / 4096)) * 8;
    ASSERT_TRUE(front().Queue({IoOp::kRead, sector, 4096, buffers[i].data(), i}).ok());
  }
  ASSERT_TRUE(front().Push().ok());  // a ring's worth goes out; the rest waits in the frontend
  std::vector<IoCompletion> all;
  for (int spin = 0; spin < 200 && all.size() < 96; ++spin) {
    worker_->RunOnce(5);
    IoCompletion done[96];
    auto got = front().Reap(done);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    all.insert(all.end(), done, done + *got);
    ASSERT_TRUE(front().Push().ok());
  }
  ASSERT_EQ(all.size(), 96u) << "the backend stopped taking requests";
  for (const IoCompletion& completion : all) {
    EXPECT_EQ(completion.status, BLKIF_RSP_OKAY);
    EXPECT_EQ(buffers[completion.tag], Bytes(4096, 0)) << completion.tag;
  }
}

// The same within one round: an indirect request waits for one of the ring's few large buffers, and the hole
// reads holding them are answered inside the round that started them. The buffers they give back must start
// the requests waiting for them, with no completion or kick to come. Found in the Xen lab: fio's 1 MiB
// sequential reads (32-segment indirect requests from Linux's blkfront) on a fresh VHD stopped the guest with
// requests left queued on one ring.
TEST_F(SteppedVhdTest, IndirectHoleReadsWaitingForALargeBufferStartWhenTheHoleReadsBeforeThemAreAnswered) {
  ASSERT_TRUE(vhd::CreateImage(path_, vhd::CreateOptions::Dynamic(kDiskBytes)).ok());
  Connect(/*depth=*/32, /*indirect_segments=*/32);
  constexpr unsigned kReads = 24;  // more than the ring's large buffers, fewer than its slots
  constexpr size_t kBytes = 32 * 4096;
  std::vector<Bytes> buffers(kReads, Bytes(kBytes, 0xAB));
  for (unsigned i = 0; i < kReads; ++i) {
    ASSERT_TRUE(front().Queue({IoOp::kRead, i * kBytes / 512, kBytes, buffers[i].data(), i}).ok());
  }
  ASSERT_TRUE(front().Push().ok());  // one kick, and nothing more to publish
  std::vector<IoCompletion> all = StepUntil(*worker_, front(), kReads, {}, std::chrono::milliseconds(250));
  ASSERT_EQ(all.size(), kReads) << "requests left waiting for a large buffer that was free";
  for (const IoCompletion& completion : all) {
    EXPECT_EQ(completion.status, BLKIF_RSP_OKAY);
    EXPECT_EQ(buffers[completion.tag], Bytes(kBytes, 0)) << completion.tag;
  }
}

TEST_F(SteppedVhdTest, ConcurrentWritesToOneNewBlockAllocateItOnce) {
  ASSERT_TRUE(vhd::CreateImage(path_, vhd::CreateOptions::Dynamic(kDiskBytes)).ok());
  uint64_t size_before = FileSize(path_);
  Connect();
  // Sixteen 4 KiB writes into block 1 (2 MiB blocks), all taken in one round.
  std::vector<Bytes> data;
  for (unsigned i = 0; i < 16; ++i) data.push_back(Pattern(4096, 100 + i));
  for (unsigned i = 0; i < 16; ++i) {
    uint64_t sector = ((2u << 20) + i * 65536ull) >> kSectorShift;
    ASSERT_TRUE(front().Queue({IoOp::kWrite, sector, 4096, data[i].data(), i}).ok());
  }
  ASSERT_TRUE(front().Push().ok());
  auto done = Step(16);
  ASSERT_EQ(done.size(), 16u);
  for (const auto& completion : done) EXPECT_EQ(completion.status, BLKIF_RSP_OKAY) << completion.tag;
  // One block (its 512-byte bitmap + 2 MiB, placed so that its data starts on 4 KiB) and nothing more.
  uint64_t grown = FileSize(path_) - size_before;
  EXPECT_GE(grown, (2u << 20) + 512u);
  EXPECT_LT(grown, (2u << 20) + 512u + 4096u);
  EXPECT_NE(image().leaf().bat_entry(1), vhd::kBatUnused);
  EXPECT_EQ(image().leaf().bat_entry(0), vhd::kBatUnused);
  for (unsigned i = 0; i < 16; ++i) {
    Bytes back(4096);
    EXPECT_EQ(Do(IoOp::kRead, ((2u << 20) + i * 65536ull) >> kSectorShift, back), BLKIF_RSP_OKAY);
    EXPECT_EQ(back, data[i]) << i;
  }
  Bytes hole(65536, 0xFF);
  EXPECT_EQ(Do(IoOp::kRead, 0, hole), BLKIF_RSP_OKAY);  // block 0: never written, zeros
  EXPECT_EQ(hole, Bytes(65536, 0));
  guest_.reset();
  ExpectChecks(path_);
}

TEST_F(SteppedVhdTest, PartialWriteIntoANewDifferencingBlockKeepsTheParentsDataAround) {
  Bytes model = MakeParent(parent_path_);
  ASSERT_TRUE(vhd::CreateImage(path_, vhd::CreateOptions::Differencing(parent_path_)).ok());
  Connect();
  Bytes data = Pattern(8192, 55);
  uint64_t at = (1u << 20) + 12288;  // inside block 0, which the parent holds
  ASSERT_EQ(Do(IoOp::kWrite, at >> kSectorShift, data), BLKIF_RSP_OKAY);
  std::copy(data.begin(), data.end(), model.begin() + static_cast<long>(at));
  EXPECT_NE(image().leaf().bat_entry(0), vhd::kBatUnused);
  Bytes back(45056);
  for (uint64_t offset = 0; offset < (2u << 20); offset += back.size()) {
    uint64_t length = std::min<uint64_t>(back.size(), (2u << 20) - offset) & ~uint64_t{511};
    Bytes part(length);
    ASSERT_EQ(Do(IoOp::kRead, offset >> kSectorShift, part), BLKIF_RSP_OKAY);
    ASSERT_TRUE(std::equal(part.begin(), part.end(), model.begin() + static_cast<long>(offset)))
        << "block 0 differs at byte " << offset;
  }
  guest_.reset();
  ExpectChecks(path_);
  // The child alone (no parent) holds the whole block: the parent's bytes were copied into it.
  auto child = vhd::VhdChain::Open(path_, false);
  ASSERT_TRUE(child.ok());
  Bytes block(2u << 20);
  (*child)->top().set_parent(nullptr);
  ASSERT_TRUE((*child)->top().Read(0, block).ok());
  EXPECT_TRUE(std::equal(block.begin(), block.end(), model.begin()));
}

TEST_F(SteppedVhdTest, FailedBatWriteFailsOnlyThatWriteAndLeavesTheImageConsistent) {
  ASSERT_TRUE(vhd::CreateImage(path_, vhd::CreateOptions::Dynamic(kDiskBytes)).ok());
  Connect();
  Bytes first = Pattern(4096, 1);
  ASSERT_EQ(Do(IoOp::kWrite, 0, first), BLKIF_RSP_OKAY);  // block 0 allocated normally
  // BAT and bitmap sectors now go to a read-only descriptor: the kernel refuses those writes.
  int read_only = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(read_only, 0);
  image().OverrideMetadataFdForTesting(read_only);
  Bytes second = Pattern(4096, 2), in_place = Pattern(4096, 3);
  ASSERT_TRUE(front().Queue({IoOp::kWrite, (2u << 20) >> kSectorShift, 4096, second.data(), 1}).ok());
  ASSERT_TRUE(front().Queue({IoOp::kWrite, 8, 4096, in_place.data(), 2}).ok());  // block 0: in place
  ASSERT_TRUE(front().Push().ok());
  auto done = Step(2);
  ASSERT_EQ(done.size(), 2u);
  for (const auto& completion : done) {
    EXPECT_EQ(completion.status, completion.tag == 1 ? BLKIF_RSP_ERROR : BLKIF_RSP_OKAY) << completion.tag;
  }
  EXPECT_EQ(guest_->device->stats().io_errors.load(), 1u);
  EXPECT_EQ(image().leaf().bat_entry(1), vhd::kBatUnused);
  image().OverrideMetadataFdForTesting(-1);
  ::close(read_only);
  // The block can still be allocated, and nothing written before is lost.
  ASSERT_EQ(Do(IoOp::kWrite, (2u << 20) >> kSectorShift, second), BLKIF_RSP_OKAY);
  Bytes back(4096);
  ASSERT_EQ(Do(IoOp::kRead, (2u << 20) >> kSectorShift, back), BLKIF_RSP_OKAY);
  EXPECT_EQ(back, second);
  ASSERT_EQ(Do(IoOp::kRead, 8, back), BLKIF_RSP_OKAY);
  EXPECT_EQ(back, in_place);
  ASSERT_EQ(Do(IoOp::kRead, 0, back), BLKIF_RSP_OKAY);
  EXPECT_EQ(back, first);
  guest_.reset();
  ExpectChecks(path_);
}

// A block whose bitmap has only some bits set (as tapdisk leaves them): a write elsewhere in that block is a
// kWriteThenBitmap (the data durably, then the bitmap sector).
TEST_F(SteppedVhdTest, WriteIntoAPartlyFilledBlockSetsItsBitmapBits) {
  vhd::CreateOptions options = vhd::CreateOptions::Dynamic(kDiskBytes);
  options.batmap = false;
  ASSERT_TRUE(vhd::CreateImage(path_, options).ok());
  Bytes model(kDiskBytes, 0);
  std::fill_n(model.begin() + 4096, 4096, 0x11);
  uint64_t bitmap_offset = 0;
  {
    auto chain = vhd::VhdChain::Open(path_, true);
    ASSERT_TRUE(chain.ok());
    ASSERT_TRUE((*chain)->top().Write(4096, std::span<const uint8_t>(model).subspan(4096, 4096)).ok());
    bitmap_offset = uint64_t{(*chain)->top().bat_entry(0)} * 512;
  }
  Bytes bitmap(512, 0);
  bitmap[1] = 0xFF;  // sectors 8..15: bytes 4096..8191, the only ones written
  int fd = ::open(path_.c_str(), O_WRONLY);
  ASSERT_EQ(::pwrite(fd, bitmap.data(), bitmap.size(), static_cast<off_t>(bitmap_offset)), 512);
  ::close(fd);
  Connect();
  Bytes data = Pattern(8192, 77);
  ASSERT_EQ(Do(IoOp::kWrite, 16, data), BLKIF_RSP_OKAY);  // bytes 8192..16383: clear bits
  std::copy(data.begin(), data.end(), model.begin() + 8192);
  Bytes back(20480);
  ASSERT_EQ(Do(IoOp::kRead, 0, back), BLKIF_RSP_OKAY);
  EXPECT_TRUE(std::equal(back.begin(), back.end(), model.begin()));
  auto bits = image().leaf().Bitmap(0);
  ASSERT_TRUE(bits.ok());
  EXPECT_EQ((*bits)[1], 0xFF);
  EXPECT_EQ((*bits)[2], 0xFF);
  EXPECT_EQ((*bits)[3], 0xFF);
  EXPECT_EQ((*bits)[4], 0);
  guest_.reset();
  fd = ::open(path_.c_str(), O_RDONLY);
  ASSERT_EQ(::pread(fd, bitmap.data(), bitmap.size(), static_cast<off_t>(bitmap_offset)), 512);
  ::close(fd);
  EXPECT_EQ(bitmap[2], 0xFF) << "the bitmap on disk does not claim the new data";
  EXPECT_EQ(bitmap[4], 0);
  ExpectChecks(path_);
  EXPECT_TRUE(ReadChain(path_) == model);
  if (HaveQemuImg()) ExpectQemuReads(path_, model);
}

TEST_F(SteppedVhdTest, FlushOfAnImageOpenedFromItsFooterCopyRewritesTheFooter) {
  ASSERT_TRUE(vhd::CreateImage(path_, vhd::CreateOptions::Dynamic(kDiskBytes)).ok());
  // Damage the trailing footer: the image opens from the copy at offset 0.
  uint64_t size = FileSize(path_);
  int fd = ::open(path_.c_str(), O_WRONLY);
  Bytes junk(512, 0x33);
  ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), static_cast<off_t>(size - 512)), 512);
  ::close(fd);
  Connect();
  ASSERT_TRUE(image().leaf().footer_dirty());
  Bytes none;
  ASSERT_TRUE(front().Submit({IoOp::kFlushDiskCache, 0, 0, nullptr, 1}).ok());
  auto done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  EXPECT_FALSE(image().leaf().footer_dirty());
  // The file's end is a valid footer again, without the device being closed.
  auto reopened = vhd::VhdChain::Open(path_, false);
  ASSERT_TRUE(reopened.ok());
  EXPECT_TRUE((*reopened)->top().notes().empty());
}

// What the file's batmap says of `blocks`, read by a separate opening of the image (as XenServer's tools
// would read it), and whether that opening found the batmap's checksum good.
std::vector<bool> BatmapOnDisk(const std::string& path, std::initializer_list<uint32_t> blocks) {
  std::vector<bool> bits;
  auto chain = vhd::VhdChain::Open(path, false);
  EXPECT_TRUE(chain.ok()) << chain.status().ToString();
  if (!chain.ok()) return bits;
  EXPECT_TRUE((*chain)->top().has_batmap());
  for (const std::string& note : (*chain)->top().notes()) ADD_FAILURE() << "opening noted: " << note;
  for (uint32_t block : blocks) bits.push_back((*chain)->top().BatmapBit(block));
  return bits;
}

// tapdisk's batmap: a block the backend allocated is marked full in the file by the next flush (not before:
// the batmap is written with the flush's sync), and the bits of other blocks stay clear.
TEST_F(SteppedVhdTest, BlocksAllocatedThroughTheBackendAreMarkedInTheBatmapByTheNextFlush) {
  vhd::CreateOptions options = vhd::CreateOptions::Dynamic(kDiskBytes);
  options.block_size = 1u << 20;
  ASSERT_TRUE(vhd::CreateImage(path_, options).ok());
  Connect();
  ASSERT_TRUE(image().leaf().has_batmap());
  Bytes first = Pattern(4096, 1), fourth = Pattern(8192, 4);
  ASSERT_EQ(Do(IoOp::kWrite, 8, first), BLKIF_RSP_OKAY);
  ASSERT_EQ(Do(IoOp::kWrite, (3u << 20) >> 9, fourth), BLKIF_RSP_OKAY);
  EXPECT_EQ(BatmapOnDisk(path_, {0, 1, 3}), (std::vector<bool>{false, false, false}));
  Bytes none;
  ASSERT_EQ(Do(IoOp::kFlushDiskCache, 0, none), BLKIF_RSP_OKAY);
  EXPECT_EQ(BatmapOnDisk(path_, {0, 1, 2, 3}), (std::vector<bool>{true, false, false, true}));
  ExpectChecks(path_);
  // Allocated and never flushed: closing the device writes the batmap.
  Bytes sixth = Pattern(4096, 6);
  ASSERT_EQ(Do(IoOp::kWrite, (5u << 20) >> 9, sixth), BLKIF_RSP_OKAY);
  guest_.reset();
  EXPECT_EQ(BatmapOnDisk(path_, {0, 3, 4, 5}), (std::vector<bool>{true, true, false, true}));
  ExpectChecks(path_);
}

// A partly filled block (as tapdisk leaves them) that the guest fills: its bitmap write is not durable until
// a sync covers it, so the batmap bit may follow only after such a sync - never ahead of the bitmap.
TEST_F(SteppedVhdTest, APartlyFilledBlockThatBecomesFullIsMarkedInTheBatmapOnlyAfterASyncCoveredItsBitmap) {
  vhd::CreateOptions options = vhd::CreateOptions::Dynamic(kDiskBytes);
  options.block_size = 64u << 10;
  ASSERT_TRUE(vhd::CreateImage(path_, options).ok());
  uint64_t bitmap_offset = 0;
  {
    auto chain = vhd::VhdChain::Open(path_, true);
    ASSERT_TRUE(chain.ok());
    ASSERT_TRUE((*chain)->top().Write(0, Pattern(64u << 10, 2)).ok());
    bitmap_offset = uint64_t{(*chain)->top().bat_entry(0)} * 512;
  }
  // Only the first half of block 0 is present now, and its batmap bit is cleared to match (sector 0 of the
  // batmap: the batmap header's checksum must be made to agree).
  Bytes bitmap(512, 0);
  std::fill_n(bitmap.begin(), 8, 0xFF);  // sectors 0..63
  int fd = ::open(path_.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, bitmap.data(), bitmap.size(), static_cast<off_t>(bitmap_offset)), 512);
  ::close(fd);
  {
    auto chain = vhd::VhdChain::Open(path_, true);
    ASSERT_TRUE(chain.ok());
    ASSERT_TRUE((*chain)->top().ClearBatmapBitForTesting(0).ok());
  }
  ASSERT_EQ(BatmapOnDisk(path_, {0}), (std::vector<bool>{false}));
  Connect();
  Bytes second_half = Pattern(32u << 10, 3);
  ASSERT_EQ(Do(IoOp::kWrite, 64, second_half), BLKIF_RSP_OKAY);
  EXPECT_TRUE(image().leaf().BlockFull(0));
  Bytes none;
  ASSERT_EQ(Do(IoOp::kFlushDiskCache, 0, none), BLKIF_RSP_OKAY);
  EXPECT_EQ(BatmapOnDisk(path_, {0}), (std::vector<bool>{false}))
      << "the batmap ran ahead of the bitmap's sync";
  EXPECT_TRUE(image().leaf().BatmapBit(0)) << "the sync covered the bitmap: the bit is due";
  ASSERT_EQ(Do(IoOp::kFlushDiskCache, 0, none), BLKIF_RSP_OKAY);
  EXPECT_EQ(BatmapOnDisk(path_, {0}), (std::vector<bool>{true}));
  guest_.reset();
  ExpectChecks(path_);
}

uint64_t AllocatedBytes(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

// Discard on a VHD punches holes in the blocks the leaf holds (they read as zeros after, and their space goes
// back to the file system); a range the leaf does not hold (here the parent's block 1) is left alone, and the
// parent's file is never touched.
TEST_F(SteppedVhdTest, DiscardPunchesTheLeafsOwnBlocksAndNeverTouchesTheParent) {
  Bytes model = MakeParent(parent_path_);
  ASSERT_TRUE(vhd::CreateImage(path_, vhd::CreateOptions::Differencing(parent_path_)).ok());
  Connect();
  ASSERT_TRUE(guest_->device->limits().discard) << "a VHD on a file system that punches holes offers discard";
  Bytes data = Pattern(1u << 20, 5);
  ASSERT_EQ(Do(IoOp::kWrite, 0, data), BLKIF_RSP_OKAY);  // block 0 into the child, filled from the parent
  std::copy(data.begin(), data.end(), model.begin());
  Bytes none;
  ASSERT_EQ(Do(IoOp::kFlushDiskCache, 0, none), BLKIF_RSP_OKAY);
  Bytes parent_before = ReadChain(parent_path_);
  uint64_t parent_size = FileSize(parent_path_);
  uint64_t allocated_before = AllocatedBytes(path_);
  // From 512 KiB to 3 MiB: 1.5 MiB of the child's block 0, then 1 MiB of block 1, which only the parent has.
  uint64_t from = 512u << 10, to = 3u << 20;
  ASSERT_TRUE(front().Submit({IoOp::kDiscard, from >> kSectorShift, to - from, nullptr, 7}).ok());
  auto done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  std::fill(model.begin() + static_cast<long>(from), model.begin() + (2 << 20), 0);
  for (uint64_t offset = 0; offset < (4u << 20); offset += 45056) {
    uint64_t length = std::min<uint64_t>(45056, (4u << 20) - offset);
    Bytes part(length);
    ASSERT_EQ(Do(IoOp::kRead, offset >> kSectorShift, part), BLKIF_RSP_OKAY);
    ASSERT_TRUE(std::equal(part.begin(), part.end(), model.begin() + static_cast<long>(offset)))
        << "the disk differs from the model at byte " << offset;
  }
  EXPECT_LE(AllocatedBytes(path_) + (1u << 20), allocated_before) << "the discarded range still takes space";
  EXPECT_TRUE(ReadChain(parent_path_) == parent_before) << "the parent changed";
  EXPECT_EQ(FileSize(parent_path_), parent_size);
  guest_.reset();
  ExpectChecks(path_);
  EXPECT_TRUE(ReadChain(path_) == model);
}

TEST_F(SteppedVhdTest, ReadOnlyVhdServesReadsAndRefusesWrites) {
  Bytes model = MakeParent(path_);
  BlkfrontConfig config;
  guest_ = std::make_unique<Guest>(sim_, path_, 1, config, /*read_only=*/true, *worker_, true, 0,
                                   ImageFormatHint::kProbe);
  EXPECT_EQ(guest_->device->image().format(), ImageFormat::kVhd);
  EXPECT_TRUE(guest_->device->limits().read_only);
  Bytes back(45056);
  ASSERT_EQ(Do(IoOp::kRead, ((3u << 20) - 4096) >> kSectorShift, back), BLKIF_RSP_OKAY);  // data, then a hole
  EXPECT_TRUE(std::equal(back.begin(), back.end(), model.begin() + (3 << 20) - 4096));
  EXPECT_EQ(Do(IoOp::kWrite, 0, back), BLKIF_RSP_ERROR);
}

}  // namespace
}  // namespace blk
