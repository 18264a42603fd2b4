// Writes the seed corpora of the fuzz targets: small valid inputs of each kind, in the input format each
// target reads (see the header comment of each *_fuzz.cc). The seeds are checked in under tests/fuzz/corpus;
// run this again (fuzz_make_seeds tests/fuzz/corpus) after changing an input format.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "formats/vhd/create.h"
#include "formats/vhd/file_io.h"
#include "formats/vhd/format.h"
#include "formats/vhd/image.h"
#include "ring/request.h"

namespace blk {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

void Put(Bytes& out, uint64_t value, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

void WriteSeed(const fs::path& dir, const std::string& name, const Bytes& bytes) {
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}
void WriteSeed(const fs::path& dir, const std::string& name, const std::string& text) {
  WriteSeed(dir, name, Bytes(text.begin(), text.end()));
}

Bytes ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

Request Data(uint8_t operation, uint64_t sector, unsigned segments) {
  Request request;
  request.id = 0x1000 + segments;
  request.operation = operation;
  request.sector_number = sector;
  request.nr_segments = static_cast<uint16_t>(segments);
  for (unsigned i = 0; i < segments; ++i) request.segments[i] = {8 + i, 0, 7};
  return request;
}

Bytes Slot(Abi abi, const Request& request) {
  Bytes slot(RequestSize(abi));
  EncodeRequest(abi, request, slot.data());
  return slot;
}

void RequestSeeds(const fs::path& dir) {
  struct Seed {
    const char* name;
    uint8_t flags;  // bit 0 x86_32 (bit 6: native), 1 read-only, 2 flush, 3 barrier, 4 4 KiB sectors
    Request request;
  };
  Request discard;
  discard.operation = BLKIF_OP_DISCARD;
  discard.discard_sectors = 8;
  Request indirect;
  indirect.operation = BLKIF_OP_INDIRECT;
  indirect.indirect_op = BLKIF_OP_WRITE;
  indirect.nr_segments = 32;
  Request flush;
  flush.operation = BLKIF_OP_FLUSH_DISKCACHE;
  Request bad_segment = Data(BLKIF_OP_WRITE, 0, 2);
  bad_segment.segments[1].first_sect = 7;
  bad_segment.segments[1].last_sect = 3;
  const Seed seeds[] = {
      {"read", 0x0C, Data(BLKIF_OP_READ, 16, 1)},
      {"write-11", 0x0C, Data(BLKIF_OP_WRITE, 0, 11)},
      {"write-read-only", 0x0E, Data(BLKIF_OP_WRITE, 0, 1)},
      {"barrier", 0x0C, Data(BLKIF_OP_WRITE_BARRIER, 8, 2)},
      {"flush", 0x0C, flush},
      {"write-4k", 0x1C, Data(BLKIF_OP_WRITE, 8, 1)},
      {"discard", 0x0C, discard},
      {"indirect", 0x0C, indirect},
      {"bad-segment", 0x0C, bad_segment},
      {"end-of-disk", 0x0C, Data(BLKIF_OP_READ, 2047, 2)},
  };
  for (const Seed& seed : seeds) {
    for (Abi abi : {Abi::kX86_64, Abi::kX86_32}) {
      Bytes bytes;
      bytes.push_back(static_cast<uint8_t>(seed.flags | (abi == Abi::kX86_32 ? 1 : 0)));
      Put(bytes, 2048, 4);  // a 1 MiB disk
      Bytes slot = Slot(abi, seed.request);
      bytes.insert(bytes.end(), slot.begin(), slot.end());
      WriteSeed(dir, std::string(seed.name) + "-" + AbiName(abi), bytes);
    }
  }
  // The `protocol` key absent or "native": the backend's own layout.
  for (int i : {0, 1}) {
    Bytes bytes{static_cast<uint8_t>(seeds[i].flags | 0x40)};
    Put(bytes, 2048, 4);
    Bytes slot = Slot(kNativeAbi, seeds[i].request);
    bytes.insert(bytes.end(), slot.begin(), slot.end());
    WriteSeed(dir, std::string(seeds[i].name) + "-native", bytes);
  }
  // The optional tail: discard offered, up to 64 indirect segments, and the indirect page of 32 segments.
  for (Abi abi : {Abi::kX86_64, Abi::kX86_32}) {
    for (const Request* request : {&discard, &indirect}) {
      Bytes bytes{static_cast<uint8_t>(0x0C | (abi == Abi::kX86_32 ? 1 : 0))};
      Put(bytes, 2048, 4);
      Bytes slot = Slot(abi, *request);
      bytes.insert(bytes.end(), slot.begin(), slot.end());
      bytes.push_back(1);
      Put(bytes, 64, 2);
      for (unsigned i = 0; request == &indirect && i < indirect.nr_segments; ++i) {
        Put(bytes, 100 + i, 4);
        bytes.insert(bytes.end(), {0, 7, 0, 0});
      }
      WriteSeed(dir, std::string(request == &discard ? "discard" : "indirect") + "-offered-" + AbiName(abi),
                bytes);
    }
    // A secure discard with discard-secure offered (bit 1 of the discard byte).
    Request secure = discard;
    secure.discard_flag = BLKIF_DISCARD_SECURE;
    Bytes bytes{static_cast<uint8_t>(0x0C | (abi == Abi::kX86_32 ? 1 : 0))};
    Put(bytes, 2048, 4);
    Bytes slot = Slot(abi, secure);
    bytes.insert(bytes.end(), slot.begin(), slot.end());
    bytes.push_back(3);
    Put(bytes, 0, 2);
    WriteSeed(dir, std::string("secure-discard-offered-") + AbiName(abi), bytes);
  }
}

// back_ring_fuzz steps (the enum there).
enum Step : uint8_t {
  kPublishNear,
  kPublishAny,
  kWriteSlot,
  kWriteEvents,
  kTake,
  kPutResponse,
  kPush,
  kFinalCheck
};

void BackRingSeeds(const fs::path& dir) {
  for (Abi abi : {Abi::kX86_64, Abi::kX86_32}) {
    for (uint32_t start : {0u, 0xFFFFFFFEu}) {
      Bytes bytes;
      bytes.push_back(abi == Abi::kX86_32 ? 1 : 0);  // one page
      Put(bytes, start, 4);
      // Two requests published, taken, answered and pushed; then the final check arms req_event.
      for (uint32_t i = 0; i < 2; ++i) {
        bytes.push_back(kWriteSlot);
        bytes.push_back(static_cast<uint8_t>(start + i));
        Bytes slot = Slot(abi, Data(BLKIF_OP_READ, 8 * i, 1));
        bytes.insert(bytes.end(), slot.begin(), slot.end());
      }
      bytes.push_back(kPublishNear);
      bytes.push_back(3);  // rsp + 3 - 1 = two requests
      bytes.push_back(kTake);
      bytes.push_back(8);
      for (uint32_t i = 0; i < 2; ++i) {
        bytes.push_back(kPutResponse);
        Put(bytes, 0x1001, 8);
        bytes.push_back(BLKIF_OP_READ);
        Put(bytes, 0, 2);
      }
      bytes.push_back(kPush);
      bytes.push_back(kFinalCheck);
      std::string name = std::string("take-answer-") + AbiName(abi) + (start ? "-wrap" : "");
      WriteSeed(dir, name, bytes);
    }
  }
  Bytes far;
  far.push_back(2);  // x86_64, two pages
  Put(far, 100, 4);
  far.push_back(kPublishAny);
  Put(far, 100 + 100000, 4);
  far.push_back(kTake);
  far.push_back(16);
  WriteSeed(dir, "req-prod-far-ahead", far);
  Bytes events;
  events.push_back(4);  // x86_64, four pages
  Put(events, 7, 4);
  events.push_back(kWriteEvents);
  events.push_back(0);
  Put(events, 9, 4);
  events.push_back(kPublishNear);
  events.push_back(200);
  events.push_back(kTake);
  events.push_back(255);
  events.push_back(kFinalCheck);
  WriteSeed(dir, "events-and-full-ring", events);
}

void XenstoreSeeds(const fs::path& dir) {
  auto seed = [&](const std::string& name, uint8_t limits, const std::string& text) {
    std::string bytes(1, static_cast<char>(limits));
    WriteSeed(dir, name, bytes + text);
  };
  const std::string backend =
      "params=vhd:/var/lib/xen/images/disk.vhd\nmode=w\ndevice-type=disk\nfrontend-id=7\n"
      "frontend=/local/domain/7/device/vbd/51712\nonline=1\n";
  seed("one-page", 0x00,
       "ring-ref=8\nevent-channel=5\nprotocol=x86_64-abi\nfeature-persistent=0\n" + backend);
  seed("order-2", 0x02,
       "ring-page-order=2\nring-ref0=8\nring-ref1=9\nring-ref2=10\nring-ref3=11\nevent-channel=5\n"
       "protocol=x86_32-abi\nfeature-large-sector-size=1\n");
  seed("two-queues", 0x0A,
       "multi-queue-num-queues=2\nring-page-order=1\nqueue-0/ring-ref0=8\nqueue-0/ring-ref1=9\n"
       "queue-0/event-channel=5\nqueue-1/ring-ref0=10\nqueue-1/ring-ref1=11\nqueue-1/event-channel=6\n");
  seed("shared-ref", 0x08,
       "multi-queue-num-queues=2\nqueue-0/ring-ref=8\nqueue-0/event-channel=5\nqueue-1/ring-ref=8\n"
       "queue-1/event-channel=6\n");
  seed("bad-numbers", 0x00, "ring-ref=0123\nevent-channel=-1\nstate=4\nmode=r\nparams=aio:/x\n");
  seed("denied", 0x00, "ring-ref=8\nevent-channel=\x01\n");
}

void VhdFormatSeeds(const fs::path& dir, const Bytes& dynamic, const Bytes& child) {
  auto seed = [&](const std::string& name, uint8_t selector, const Bytes& body) {
    Bytes bytes{selector};
    bytes.insert(bytes.end(), body.begin(), body.end());
    WriteSeed(dir, name, bytes);
  };
  Bytes footer(dynamic.end() - vhd::kFooterSize, dynamic.end());
  Bytes with_flag{0};  // the 512-byte form
  with_flag.insert(with_flag.end(), footer.begin(), footer.end());
  seed("footer", 0, with_flag);
  seed("header", 1,
       Bytes(child.begin() + vhd::kFooterSize, child.begin() + vhd::kFooterSize + vhd::kHeaderSize));
  for (auto [name, code, path] : {std::tuple{"locator-w2ru", 1, "./parent.vhd"},
                                  std::tuple{"locator-w2ku", 0, "/var/lib/images/parent.vhd"},
                                  std::tuple{"locator-macx", 2, "/var/lib/images/parent.vhd"}}) {
    static constexpr uint32_t kCodes[] = {vhd::kPlatformW2ku, vhd::kPlatformW2ru, vhd::kPlatformMacX};
    std::string encoded = vhd::EncodeLocatorPath(kCodes[code], path);
    Bytes body{static_cast<uint8_t>(code)};
    body.insert(body.end(), encoded.begin(), encoded.end());
    seed(name, 2, body);
  }
  Bytes bat{15};
  for (uint32_t i = 0; i < 16; ++i) Put(bat, i == 3 ? 0x10000000u : vhd::kBatUnused, 4);
  Put(bat, 3, 4);
  Put(bat, 77, 4);
  bat.push_back(3);
  for (int i = 0; i < 4; ++i) bat.push_back(static_cast<uint8_t>(0xF0 >> i));
  Put(bat, 5, 2);
  Put(bat, 11, 2);
  Put(bat, 20, 2);
  seed("bat-and-bitmap", 3, bat);
  vhd::BatmapHeader batmap;
  batmap.batmap_offset = 4096;
  batmap.batmap_sectors = 1;
  std::array<uint8_t, vhd::kSectorSize> batmap_bytes;
  vhd::EncodeBatmapHeader(batmap, batmap_bytes);
  seed("batmap-header", 4, Bytes(batmap_bytes.begin(), batmap_bytes.end()));
}

int Main(const fs::path& corpus) {
  RequestSeeds(corpus / "request_fuzz");
  BackRingSeeds(corpus / "back_ring_fuzz");
  XenstoreSeeds(corpus / "xenstore_keys_fuzz");

  std::string pattern = (fs::temp_directory_path() / "fuzz_seeds.XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) return 1;
  fs::path scratch = pattern;
  auto create = [&](const std::string& name, const vhd::CreateOptions& options) {
    Status status = vhd::CreateImage((scratch / name).string(), options);
    if (!status.ok()) std::fprintf(stderr, "%s\n", status.ToString().c_str());
    return status.ok();
  };
  vhd::CreateOptions small_dynamic = vhd::CreateOptions::Dynamic(64 * 1024, 4096);
  vhd::CreateOptions plain = small_dynamic;
  plain.batmap = false;
  if (!create("fixed.vhd", vhd::CreateOptions::Fixed(4096)) || !create("dynamic.vhd", small_dynamic) ||
      !create("plain.vhd", plain) || !create("parent.vhd", vhd::CreateOptions::Dynamic(64 * 1024, 4096))) {
    return 1;
  }
  vhd::CreateOptions child = vhd::CreateOptions::Differencing((scratch / "parent.vhd").string());
  child.block_size = 4096;
  if (!create("child.vhd", child)) return 1;
  // One block written in the dynamic images, so the seeds hold a BAT entry and a bitmap.
  for (const char* name : {"dynamic.vhd", "plain.vhd"}) {
    auto file = vhd::PosixFile::Open((scratch / name).string(), true);
    if (!file.ok()) return 1;
    auto image = vhd::VhdImage::Open(std::move(*file), true);
    if (!image.ok()) return 1;
    std::vector<uint8_t> sector(512, 0xA5);
    if (!(*image)->Write(8192, sector).ok() || !(*image)->Close().ok()) return 1;
  }
  fs::path images = corpus / "vhd_image_fuzz";
  for (const char* name : {"fixed.vhd", "dynamic.vhd", "plain.vhd", "child.vhd"}) {
    WriteSeed(images, name, ReadAll((scratch / name).string()));
  }
  VhdFormatSeeds(corpus / "vhd_format_fuzz", ReadAll((scratch / "dynamic.vhd").string()),
                 ReadAll((scratch / "child.vhd").string()));
  fs::remove_all(scratch);
  return 0;
}

}  // namespace
}  // namespace blk

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  return blk::Main(argv[1]);
}
