// CreateImage: lays out and writes a new fixed, dynamic or differencing VHD.
#include "formats/vhd/create.h"

#include <sys/random.h>
#include <sys/stat.h>

#include <cerrno>
#include <ctime>
#include <filesystem>
#include <vector>

#include "formats/vhd/file_io.h"
#include "formats/vhd/image.h"

namespace blk::vhd {
namespace {

constexpr uint64_t kTableOffset = kFooterSize + kHeaderSize;
constexpr uint32_t kCreatorOsWindows = 0x5769326B;  // "Wi2k", what every writer puts here
constexpr uint32_t kTapdiskVersion = 0x00010003;    // images of version 1.2 and later carry a batmap
constexpr uint32_t kTapdiskVersionWithoutBatmap = 0x00010000;  // 1.0: a batmap only if one is found

Status RandomUuid(Uuid* uuid) {
  if (getrandom(uuid->data(), uuid->size(), 0) != static_cast<ssize_t>(uuid->size())) {
    return Status::FromErrno(errno, "getrandom");
  }
  (*uuid)[6] = static_cast<uint8_t>(((*uuid)[6] & 0x0F) | 0x40);  // version 4 (random)
  (*uuid)[8] = static_cast<uint8_t>(((*uuid)[8] & 0x3F) | 0x80);
  return Status::Ok();
}

struct Locator {
  uint32_t code;
  std::string bytes;
};

}  // namespace

Status CreateImage(const std::string& path, const CreateOptions& options) {
  uint64_t size = options.size;
  uint32_t block_size = options.block_size;
  Footer footer;
  DynamicHeader header;
  std::vector<Locator> locators;
  if (options.type == DiskType::kDifferencing) {
    if (options.parent.empty())
      return Status::InvalidArgument(path + ": a differencing image needs a parent");
    Result<std::unique_ptr<FileIo>> parent_file = PosixFile::Open(options.parent, false);
    if (!parent_file.ok()) return parent_file.status();
    Result<std::unique_ptr<VhdImage>> parent = VhdImage::Open(std::move(*parent_file), false);
    if (!parent.ok()) return parent.status();
    size = (*parent)->virtual_size();
    if ((*parent)->type() != DiskType::kFixed) block_size = (*parent)->header().block_size;
    header.parent_uuid = (*parent)->footer().uuid;
    struct stat st;
    if (::stat(options.parent.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + options.parent);
    header.parent_timestamp = VhdTimestamp(st.st_mtime);
    namespace fs = std::filesystem;
    std::error_code error;
    fs::path absolute_parent = fs::weakly_canonical(fs::absolute(options.parent), error);
    if (error) return Status::InvalidArgument(options.parent + ": " + error.message());
    fs::path child_dir = fs::weakly_canonical(fs::absolute(path), error).parent_path();
    if (error) return Status::InvalidArgument(path + ": " + error.message());
    std::string relative = absolute_parent.lexically_relative(child_dir).generic_string();
    if (relative.empty()) relative = absolute_parent.generic_string();
    if (relative[0] != '/' && relative.rfind("./", 0) != 0) relative = "./" + relative;
    EncodeParentName(absolute_parent.filename().string(), &header.parent_name_utf16be);
    locators.push_back({kPlatformW2ru, EncodeLocatorPath(kPlatformW2ru, relative)});
    locators.push_back({kPlatformW2ku, EncodeLocatorPath(kPlatformW2ku, absolute_parent.generic_string())});
    locators.push_back({kPlatformMacX, EncodeLocatorPath(kPlatformMacX, absolute_parent.generic_string())});
  }
  if (size == 0 || size % kSectorSize != 0 || size > kMaxVirtualSize) {
    return Status::InvalidArgument(path + ": size " + std::to_string(size) +
                                   " must be a non-zero multiple of 512 up to 2040 GiB");
  }
  if (!IsPowerOfTwo(block_size) || block_size < kMinBlockSize || block_size > kMaxBlockSize) {
    return Status::InvalidArgument(path + ": block size " + std::to_string(block_size) +
                                   " must be a power of two between 512 bytes and 256 MiB");
  }

  footer.timestamp = VhdTimestamp(std::time(nullptr));
  bool batmap = options.batmap && options.type != DiskType::kFixed;
  footer.creator_app = {'t', 'a', 'p', '\0'};
  footer.creator_version = batmap ? kTapdiskVersion : kTapdiskVersionWithoutBatmap;
  footer.creator_os = kCreatorOsWindows;
  footer.original_size = size;
  footer.current_size = size;
  footer.geometry = GeometryForSectors(size / kSectorSize);
  footer.disk_type = static_cast<uint32_t>(options.type);
  BLK_RETURN_IF_ERROR(RandomUuid(&footer.uuid));

  Result<std::unique_ptr<FileIo>> opened = PosixFile::Open(path, true, true);
  if (!opened.ok()) return opened.status();
  FileIo& file = **opened;
  std::array<uint8_t, kFooterSize> footer_bytes;

  if (options.type == DiskType::kFixed) {
    footer.data_offset = kNoOffset;
    EncodeFooter(footer, footer_bytes);
    BLK_RETURN_IF_ERROR(file.Truncate(size));
    BLK_RETURN_IF_ERROR(file.WriteAt(size, footer_bytes));
    return file.Sync();
  }

  footer.data_offset = kFooterSize;
  header.table_offset = kTableOffset;
  header.max_table_entries = static_cast<uint32_t>(BlocksFor(size, block_size));
  header.block_size = block_size;
  uint64_t end = kTableOffset + BatBytes(header.max_table_entries);
  std::vector<uint8_t> bat(BatBytes(header.max_table_entries), 0xFF);
  BatmapHeader batmap_header_fields;
  uint64_t batmap_header_offset = end;
  std::vector<uint8_t> batmap_bytes;
  if (batmap) {
    batmap_header_fields.batmap_offset = end + kSectorSize;
    batmap_bytes.assign(RoundUp(RoundUp(header.max_table_entries, 8) / 8, kSectorSize), 0);
    batmap_header_fields.batmap_sectors = static_cast<uint32_t>(batmap_bytes.size() / kSectorSize);
    batmap_header_fields.checksum = BatmapChecksum(batmap_bytes);
    end = batmap_header_fields.batmap_offset + batmap_bytes.size();
  }
  for (size_t i = 0; i < locators.size(); ++i) {
    ParentLocator& locator = header.locators[i];
    locator.platform_code = locators[i].code;
    locator.data_length = static_cast<uint32_t>(locators[i].bytes.size());
    locator.data_space =
        static_cast<uint32_t>(RoundUp(locator.data_length, kSectorSize));  // bytes, as Windows does
    locator.data_offset = end;
    end += locator.data_space;
  }

  EncodeFooter(footer, footer_bytes);
  std::array<uint8_t, kHeaderSize> header_bytes;
  EncodeHeader(header, header_bytes);
  BLK_RETURN_IF_ERROR(file.Truncate(end + kFooterSize));
  BLK_RETURN_IF_ERROR(file.WriteAt(0, footer_bytes));
  BLK_RETURN_IF_ERROR(file.WriteAt(kFooterSize, header_bytes));
  BLK_RETURN_IF_ERROR(file.WriteAt(kTableOffset, bat));
  if (batmap) {
    std::array<uint8_t, kSectorSize> batmap_header;
    EncodeBatmapHeader(batmap_header_fields, batmap_header);
    BLK_RETURN_IF_ERROR(file.WriteAt(batmap_header_offset, batmap_header));
    BLK_RETURN_IF_ERROR(file.WriteAt(batmap_header_fields.batmap_offset, batmap_bytes));
  }
  for (size_t i = 0; i < locators.size(); ++i) {
    const std::string& bytes = locators[i].bytes;
    BLK_RETURN_IF_ERROR(
        file.WriteAt(header.locators[i].data_offset,
                     std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())));
  }
  BLK_RETURN_IF_ERROR(file.WriteAt(end, footer_bytes));
  return file.Sync();
}

}  // namespace blk::vhd
