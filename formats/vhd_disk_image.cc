// VhdDiskImage: a VHD chain behind the DiskImage interface, with its data descriptors and write gates.
#include "formats/vhd_disk_image.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cerrno>

namespace blk {
namespace {

constexpr uint64_t kPage = 4096;

uint64_t RoundUpTo(uint64_t value, uint64_t unit) { return (value + unit - 1) / unit * unit; }

// Appends an extent, joining it to the last one when they continue each other.
bool Emit(std::span<ImageExtent> out, size_t* count, ImageExtent extent) {
  if (*count > 0) {
    ImageExtent& last = out[*count - 1];
    bool joins =
        last.fd == extent.fd && (extent.zero() || last.file_offset + last.length == extent.file_offset);
    if (joins) {
      last.length += extent.length;
      return true;
    }
  }
  if (*count == out.size()) return false;
  out[(*count)++] = extent;
  return true;
}

}  // namespace

bool VhdDiskImage::Gate::TryClose() {
  if (closed_) return false;
  closed_ = true;
  return true;
}

void VhdDiskImage::Gate::Wait(Waiter& waiter) {
  waiter.next_waiter = nullptr;
  if (tail_ != nullptr) {
    tail_->next_waiter = &waiter;
  } else {
    head_ = &waiter;
  }
  tail_ = &waiter;
}

void VhdDiskImage::Gate::Open() {
  closed_ = false;
  // Detach first: a woken waiter may close the gate again and others may queue behind it.
  Waiter* waiter = std::exchange(head_, nullptr);
  tail_ = nullptr;
  while (waiter != nullptr) {
    Waiter* next = waiter->next_waiter;
    waiter->next_waiter = nullptr;
    waiter->Wake();
    waiter = next;
  }
}

Result<std::unique_ptr<VhdDiskImage>> VhdDiskImage::Open(const std::string& path,
                                                         const ImageOpenOptions& options,
                                                         bool allow_differencing,
                                                         vhd::VhdChain::WrapFile wrap) {
  if (options.logical_block_size != 0 && options.logical_block_size != 512 &&
      options.logical_block_size != 4096) {
    return Status::InvalidArgument(path + ": logical block size " +
                                   std::to_string(options.logical_block_size) + " is neither 512 nor 4096");
  }
  std::unique_ptr<VhdDiskImage> image(new VhdDiskImage());
  auto chain = vhd::VhdChain::Open(path, !options.read_only, std::move(wrap));
  if (!chain.ok()) return chain.status();
  image->chain_ = std::move(*chain);
  vhd::VhdImage& leaf = image->leaf();
  if (!allow_differencing && leaf.type() == vhd::DiskType::kDifferencing) {
    return Status::Error(Status::Code::kPermissionDenied,
                         path + ": a differencing VHD is served only when named as one (vhd:" + path +
                             "): a bare path is probed, and its parent locators are not trusted");
  }
  image->path_ = path;
  image->read_only_ = options.read_only;
  image->size_bytes_ = leaf.virtual_size();
  image->logical_block_size_ = options.logical_block_size != 0 ? options.logical_block_size : 512;
  image->physical_block_size_ = std::max<uint32_t>(image->logical_block_size_, 4096);
  if (image->size_bytes_ % image->logical_block_size_ != 0) {
    return Status::InvalidArgument(path + ": virtual size " + std::to_string(image->size_bytes_) +
                                   " is not a multiple of the " + std::to_string(image->logical_block_size_) +
                                   "-byte sector");
  }
  bool direct = options.direct;
  for (size_t level = 0; level < image->chain_->images().size(); ++level) {
    const std::string& file = image->chain_->images()[level]->path();
    int flags = (level == 0 && !options.read_only ? O_RDWR : O_RDONLY) | O_CLOEXEC;
    UniqueFd fd;
    if (direct) {
      fd.Reset(::open(file.c_str(), flags | O_DIRECT));
      if (!fd.valid() && errno != EINVAL) return Status::FromErrno(errno, "open " + file);
    }
    if (level == 0) image->direct_io_ = fd.valid();
    if (!fd.valid()) {
      fd.Reset(::open(file.c_str(), flags));
      if (!fd.valid()) return Status::FromErrno(errno, "open " + file);
    }
    image->data_fds_.push_back(std::move(fd));
  }
  if (!options.read_only && leaf.type() != vhd::DiskType::kFixed) {
    uint64_t block_bytes = RoundUpTo(leaf.new_block_bytes(), kPage);
    image->bitmap_buffer_bytes_ = RoundUpTo(leaf.bitmap_bytes(), kPage);
    image->metadata_buffer_bytes_ =
        RoundUpTo(std::max<uint64_t>(leaf.batmap_bytes(), vhd::kFooterSize), kPage);
    size_t bytes = block_bytes + 2 * kPage + image->bitmap_buffer_bytes_ + image->metadata_buffer_bytes_;
    // Reserved once per open image; pages are touched only by the first allocation.
    void* memory =
        ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) return Status::FromErrno(errno, path + ": allocating the new-block buffer");
    image->scratch_ = Mapping(memory, bytes);
  }
  return image;
}

VhdDiskImage::~VhdDiskImage() = default;

uint64_t VhdDiskImage::block_size() const {
  const vhd::VhdImage& top = *chain_->images().front();
  return top.type() == vhd::DiskType::kFixed ? top.virtual_size() : top.header().block_size;
}

std::span<uint8_t> VhdDiskImage::new_block_buffer() {
  return {scratch_.as<uint8_t>(), static_cast<size_t>(leaf().new_block_bytes())};
}

std::span<uint8_t> VhdDiskImage::footer_buffer() {
  return {scratch_.as<uint8_t>() + RoundUpTo(leaf().new_block_bytes(), kPage), vhd::kFooterSize};
}

std::span<uint8_t> VhdDiskImage::bat_buffer() {
  return {scratch_.as<uint8_t>() + RoundUpTo(leaf().new_block_bytes(), kPage) + kPage, vhd::kSectorSize};
}

std::span<uint8_t> VhdDiskImage::bitmap_buffer() {
  return {scratch_.as<uint8_t>() + RoundUpTo(leaf().new_block_bytes(), kPage) + 2 * kPage,
          static_cast<size_t>(bitmap_buffer_bytes_)};
}

std::span<uint8_t> VhdDiskImage::metadata_buffer() {
  return {
      scratch_.as<uint8_t>() + RoundUpTo(leaf().new_block_bytes(), kPage) + 2 * kPage + bitmap_buffer_bytes_,
      static_cast<size_t>(metadata_buffer_bytes_)};
}

Result<vhd::BlockWritePlan> VhdDiskImage::PlanWrite(uint64_t offset, uint64_t length) {
  vhd::VhdImage& top = leaf();
  if (top.type() != vhd::DiskType::kFixed) {
    auto block = static_cast<uint32_t>(offset / top.header().block_size);
    if (top.bat_entry(block) != vhd::kBatUnused && !top.BatmapBit(block))
      BLK_RETURN_IF_ERROR(top.LoadBitmap(block));
  }
  return top.PlanWrite(offset, length);
}

Result<size_t> VhdDiskImage::Map(uint64_t offset, uint64_t length, std::span<ImageExtent> out) {
  return MapFrom(0, offset, length, out);
}

Result<size_t> VhdDiskImage::MapFrom(size_t level, uint64_t offset, uint64_t length,
                                     std::span<ImageExtent> out) {
  size_t count = 0;
  uint64_t covered = 0;
  if (level >= chain_->images().size()) {
    if (!out.empty() && length > 0) out[count++] = {-1, 0, length};
    return count;
  }
  BLK_RETURN_IF_ERROR(MapInto(level, offset, length, out, &count, &covered));
  return count;
}

Status VhdDiskImage::MapInto(size_t level, uint64_t offset, uint64_t length, std::span<ImageExtent> out,
                             size_t* count, uint64_t* covered) {
  vhd::VhdImage& image = *chain_->images()[level];
  int fd = data_fds_[level].get();
  const uint64_t end = offset + length;
  std::array<vhd::Piece, 16> pieces;
  while (offset < end) {
    // A child may be larger than its parent; what lies beyond the parent reads as zeros.
    if (offset >= image.virtual_size()) {
      if (!Emit(out, count, {-1, 0, end - offset})) return Status::Ok();
      *covered += end - offset;
      return Status::Ok();
    }
    uint64_t stop = std::min(end, image.virtual_size());
    size_t resolved = image.Resolve(offset, stop - offset, pieces);
    for (size_t i = 0; i < resolved; ++i) {
      const vhd::Piece& piece = pieces[i];
      switch (piece.kind) {
        case vhd::Piece::Kind::kFile:
          if (!Emit(out, count, {fd, piece.file_offset, piece.length})) return Status::Ok();
          break;
        case vhd::Piece::Kind::kZero:
          if (!Emit(out, count, {-1, 0, piece.length})) return Status::Ok();
          break;
        case vhd::Piece::Kind::kParent: {
          uint64_t below = 0;
          if (level + 1 >= chain_->images().size()) {
            if (!Emit(out, count, {-1, 0, piece.length})) return Status::Ok();
            below = piece.length;
          } else {
            BLK_RETURN_IF_ERROR(MapInto(level + 1, piece.guest_offset, piece.length, out, count, &below));
          }
          *covered += below;
          if (below < piece.length) return Status::Ok();  // `out` is full
          offset = piece.guest_offset + piece.length;
          continue;
        }
        case vhd::Piece::Kind::kNeedBitmap:
          // A synchronous 512-byte read, once per block while the image is open (the bitmap is cached).
          BLK_RETURN_IF_ERROR(image.LoadBitmap(piece.block));
          break;
      }
      if (piece.kind == vhd::Piece::Kind::kNeedBitmap) break;  // resolve again from here
      *covered += piece.length;
      offset = piece.guest_offset + piece.length;
    }
    if (resolved == 0) return Status::IoError(image.path() + ": no piece resolved");
  }
  return Status::Ok();
}

}  // namespace blk
