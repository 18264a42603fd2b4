// OpenDiskImage: the format named by the caller, or probed from the file's last sector.
#include "formats/disk_image.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <array>
#include <cerrno>

#include "base/unique_fd.h"
#include "formats/raw_image.h"
#include "formats/vhd/format.h"
#include "formats/vhd_disk_image.h"

namespace blk {
namespace {

// A regular file whose last 512 bytes decode as a VHD footer (cookie and checksum both right).
Result<bool> EndsInVhdFooter(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno(errno, "open " + path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) < vhd::kFooterSize) return false;
  std::array<uint8_t, vhd::kFooterSize> bytes;
  ssize_t got = ::pread(fd.get(), bytes.data(), bytes.size(), st.st_size - static_cast<off_t>(bytes.size()));
  if (got != static_cast<ssize_t>(bytes.size()))
    return Status::FromErrno(got < 0 ? errno : EIO, "read " + path);
  return vhd::DecodeFooter(bytes).ok();
}

}  // namespace

const char* ImageFormatName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kRaw:
      return "raw";
    case ImageFormat::kVhd:
      return "vhd";
  }
  return "unknown";
}

Result<std::unique_ptr<DiskImage>> OpenDiskImage(const std::string& path, ImageFormatHint hint,
                                                 const ImageOpenOptions& options) {
  bool vhd = hint == ImageFormatHint::kVhd;
  if (hint == ImageFormatHint::kProbe) {
    Result<bool> probed = EndsInVhdFooter(path);
    if (!probed.ok()) return probed.status();
    vhd = *probed;
  }
  if (vhd) {
    auto image = VhdDiskImage::Open(path, options, /*allow_differencing=*/hint == ImageFormatHint::kVhd);
    if (!image.ok()) return image.status();
    return std::unique_ptr<DiskImage>(std::move(*image));
  }
  auto image = RawImage::Open(path, options);
  if (!image.ok()) return image.status();
  return std::unique_ptr<DiskImage>(std::move(*image));
}

}  // namespace blk
