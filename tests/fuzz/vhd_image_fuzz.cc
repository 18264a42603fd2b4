// Fuzz target: a whole VHD file from bytes. Opens it with VhdImage over an in-memory FileIo (the seam of
// formats/vhd/file_io.h), resolves and reads ranges of it, writes a sector into a writable copy and reopens
// the result, and runs `check` (CheckImage) on it as a file. Checks that an image Open accepts only ever
// sends reads inside the file, that a fixed disk reads what the file holds, that a write reads back and
// leaves an image that opens again, and that nothing crashes or allocates without bound on hostile metadata.
//
// Input: the file's bytes.
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "base/log.h"
#include "formats/vhd/check.h"
#include "formats/vhd/image.h"
#include "tests/fuzz/fuzz_input.h"

namespace blk::vhd {
namespace {

// Writes past this are refused, as a full disk would: a hostile block size must not make the fuzzer swap.
constexpr uint64_t kMaxFileBytes = 64ull << 20;
constexpr uint64_t kMaxReadBytes = 64 * 1024;

class MemoryFile : public FileIo {
 public:
  explicit MemoryFile(std::vector<uint8_t> bytes) : bytes_(std::move(bytes)) {}

  Status ReadAt(uint64_t offset, std::span<uint8_t> out) override {
    if (offset > bytes_.size() || out.size() > bytes_.size() - offset) {
      return Status::Corruption(path_ + ": truncated: read past the end");
    }
    if (!out.empty()) std::memcpy(out.data(), bytes_.data() + offset, out.size());
    return Status::Ok();
  }
  Status WriteAt(uint64_t offset, std::span<const uint8_t> data) override {
    if (offset > kMaxFileBytes || data.size() > kMaxFileBytes - offset)
      return Status::Error(Status::Code::kNoSpace, "full");
    if (offset + data.size() > bytes_.size()) bytes_.resize(offset + data.size());
    if (!data.empty()) std::memcpy(bytes_.data() + offset, data.data(), data.size());
    return Status::Ok();
  }
  Status Sync() override { return Status::Ok(); }
  Status Truncate(uint64_t size) override {
    if (size > kMaxFileBytes) return Status::Error(Status::Code::kNoSpace, "full");
    bytes_.resize(size);
    return Status::Ok();
  }
  Result<uint64_t> Size() override { return uint64_t{bytes_.size()}; }
  const std::string& path() const override { return path_; }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
  std::string path_ = "fuzz.vhd";
};

// A file-backed FileIo for what needs a path (CheckImage): one scratch directory per process.
const std::string& ScratchFile() {
  static const std::string path = [] {
    std::string pattern = (std::filesystem::temp_directory_path() / "vhd_fuzz.XXXXXX").string();
    FUZZ_CHECK(::mkdtemp(pattern.data()) != nullptr);
    static std::string dir = pattern;
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    });
    return pattern + "/image.vhd";
  }();
  return path;
}

void CheckPieces(const VhdImage& image, uint64_t offset, uint64_t length, uint64_t file_size) {
  std::array<Piece, 16> pieces;
  size_t count = image.Resolve(offset, length, pieces);
  uint64_t at = offset;
  for (size_t i = 0; i < count; ++i) {
    const Piece& piece = pieces[i];
    FUZZ_CHECK(piece.guest_offset == at);
    FUZZ_CHECK(piece.length > 0 && piece.length <= offset + length - at);
    if (piece.kind == Piece::Kind::kFile) {
      FUZZ_CHECK(piece.file_offset <= file_size && piece.length <= file_size - piece.file_offset);
      if (image.type() != DiskType::kFixed) FUZZ_CHECK(piece.file_offset >= image.metadata_end());
    }
    if (piece.kind == Piece::Kind::kNeedBitmap) break;
    at += piece.length;
  }
}

void ReadRange(VhdImage& image, const std::vector<uint8_t>& file, uint64_t offset, uint64_t length) {
  if (length == 0) return;
  CheckPieces(image, offset, length, file.size());
  std::vector<uint8_t> out(length);
  Status status = image.Read(offset, out);
  if (status.ok() && image.type() == DiskType::kFixed) {
    FUZZ_CHECK(std::memcmp(out.data(), file.data() + offset, length) == 0);
  }
  if (image.type() == DiskType::kDynamic) {
    // A dynamic disk reads only from its own file: every read of an accepted image succeeds.
    FUZZ_CHECK(status.ok());
  }
  CheckPieces(image, offset, length, file.size());  // with the bitmaps the read loaded
}

void WriteAndReopen(const std::vector<uint8_t>& file, uint64_t offset) {
  auto memory = std::make_unique<MemoryFile>(file);
  MemoryFile* raw = memory.get();
  Result<std::unique_ptr<VhdImage>> image = VhdImage::Open(std::move(memory), /*writable=*/true);
  if (!image.ok())
    return;  // a writable open may repair first (a batmap rewrite) and fail where read-only did not
  if ((*image)->type() != DiskType::kFixed && (*image)->new_block_bytes() > 8u << 20) return;
  std::vector<uint8_t> sector(kSectorSize);
  for (size_t i = 0; i < sector.size(); ++i) sector[i] = static_cast<uint8_t>(i * 31 + 7);
  Status written = (*image)->Write(offset, sector);
  if (!written.ok()) return;  // a differencing image without its parent cannot fill a new block
  std::vector<uint8_t> back(kSectorSize);
  Status read = (*image)->Read(offset, back);
  FUZZ_CHECK(read.ok());
  FUZZ_CHECK(back == sector);
  FUZZ_CHECK((*image)->Close().ok());
  std::vector<uint8_t> after = raw->bytes();
  image->reset();
  // What we wrote is an image we accept, holding the sector.
  Result<std::unique_ptr<VhdImage>> reopened =
      VhdImage::Open(std::make_unique<MemoryFile>(std::move(after)), /*writable=*/false);
  FUZZ_CHECK(reopened.ok());
  if ((*reopened)->type() == DiskType::kDifferencing) return;
  std::fill(back.begin(), back.end(), 0);
  FUZZ_CHECK((*reopened)->Read(offset, back).ok());
  FUZZ_CHECK(back == sector);
}

void Silence(LogLevel, const char*, void*) {}

}  // namespace
}  // namespace blk::vhd

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blk;
  using namespace blk::vhd;
  SetLogSink(&Silence, nullptr);
  std::vector<uint8_t> file(data, data + size);
  Result<std::unique_ptr<VhdImage>> image =
      VhdImage::Open(std::make_unique<MemoryFile>(file), /*writable=*/false);
  if (!image.ok()) {
    FUZZ_CHECK(!image.status().message().empty());
    return 0;
  }
  VhdImage& opened = **image;
  uint64_t virtual_size = opened.virtual_size();
  FUZZ_CHECK(virtual_size > 0 && virtual_size % kSectorSize == 0 && virtual_size <= kMaxVirtualSize);
  if (opened.type() != DiskType::kFixed) {
    FUZZ_CHECK(opened.block_count() <= opened.header().max_table_entries);
    FUZZ_CHECK(uint64_t{opened.block_count()} * opened.header().block_size >= virtual_size);
    for (uint32_t block = 0; block < opened.block_count(); ++block) {
      uint32_t sector = opened.bat_entry(block);
      if (sector == kBatUnused) continue;
      uint64_t start = uint64_t{sector} * kSectorSize;
      FUZZ_CHECK(start >= opened.metadata_end());
      FUZZ_CHECK(start + opened.bitmap_bytes() + opened.block_sectors(block) * kSectorSize <= file.size());
    }
  }
  // The start, the end, and a range the input's last bytes choose.
  uint64_t head = std::min(virtual_size, kMaxReadBytes);
  ReadRange(opened, file, 0, head);
  ReadRange(opened, file, virtual_size - head, head);
  uint64_t pick = 0;
  for (size_t i = 0; i < 8 && i < size; ++i) pick = pick << 8 | data[size - 1 - i];
  uint64_t offset = (pick % (virtual_size / kSectorSize)) * kSectorSize;
  ReadRange(opened, file, offset, std::min(kMaxReadBytes, virtual_size - offset));
  image->reset();

  WriteAndReopen(file, offset);

  const std::string& path = ScratchFile();
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  CheckReport report = CheckImage(path);
  FUZZ_CHECK(report.ok() || !report.problems.front().empty());
  return 0;
}
