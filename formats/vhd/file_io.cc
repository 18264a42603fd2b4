// PosixFile (pread/pwrite/fdatasync) and the fault-injecting wrapper used by the crash tests.
#include "formats/vhd/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace blk::vhd {

Result<std::unique_ptr<FileIo>> PosixFile::Open(const std::string& path, bool writable, bool create) {
  int flags = O_CLOEXEC | (writable ? O_RDWR : O_RDONLY);
  if (create) flags |= O_CREAT | O_TRUNC;
  int fd = ::open(path.c_str(), flags, 0644);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  return std::unique_ptr<FileIo>(new PosixFile(UniqueFd(fd), path));
}

Status PosixFile::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t got = ::pread(fd_.get(), out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + path_);
    }
    if (got == 0) {
      return Status::Corruption(path_ + ": truncated: " + std::to_string(out.size()) + " bytes at offset " +
                                std::to_string(offset) + " reach past the end of the file");
    }
    done += static_cast<size_t>(got);
  }
  return Status::Ok();
}

Status PosixFile::WriteAt(uint64_t offset, std::span<const uint8_t> data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t put =
        ::pwrite(fd_.get(), data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (put < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write " + path_);
    }
    done += static_cast<size_t>(put);
  }
  return Status::Ok();
}

Status PosixFile::Sync() {
  if (::fdatasync(fd_.get()) != 0) return Status::FromErrno(errno, "fdatasync " + path_);
  return Status::Ok();
}

Status PosixFile::Truncate(uint64_t size) {
  if (::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0)
    return Status::FromErrno(errno, "ftruncate " + path_);
  return Status::Ok();
}

Result<uint64_t> PosixFile::Size() {
  struct stat st;
  if (::fstat(fd_.get(), &st) != 0) return Status::FromErrno(errno, "stat " + path_);
  return static_cast<uint64_t>(st.st_size);
}

Status FaultInjectingFile::Dead() const {
  return Status::Error(Status::Code::kIoError, path() + ": injected crash: the file is gone", EIO);
}

Status FaultInjectingFile::Crash() {
  crashed_ = true;
  if (fault_ == Fault::kPowerCut) {
    for (auto undo = unsynced_.rbegin(); undo != unsynced_.rend(); ++undo) {
      BLK_RETURN_IF_ERROR(inner_->WriteAt(undo->offset, undo->old_bytes));
    }
    if (have_synced_size_) BLK_RETURN_IF_ERROR(inner_->Truncate(synced_size_));
    if (real_syncs_) BLK_RETURN_IF_ERROR(inner_->Sync());
  }
  unsynced_.clear();
  return Dead();
}

Status FaultInjectingFile::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  if (crashed_) return Dead();
  return inner_->ReadAt(offset, out);
}

Status FaultInjectingFile::WriteAt(uint64_t offset, std::span<const uint8_t> data) {
  if (crashed_) return Dead();
  ++writes_;
  if (writes_ == fault_at_write_) {
    if (fault_ == Fault::kFailWrite)
      return Status::Error(Status::Code::kIoError, path() + ": injected write error", EIO);
    if (fault_ == Fault::kCrash || fault_ == Fault::kPowerCut) return Crash();
  }
  if (fault_ == Fault::kPowerCut) {
    Result<uint64_t> size = inner_->Size();
    if (!size.ok()) return size.status();
    if (!have_synced_size_) {
      have_synced_size_ = true;
      synced_size_ = *size;
    }
    // Remember what the write replaces (the part inside the file; the rest goes with the size).
    Undo undo{offset, {}};
    if (offset < *size) {
      undo.old_bytes.resize(std::min<uint64_t>(data.size(), *size - offset));
      BLK_RETURN_IF_ERROR(inner_->ReadAt(offset, undo.old_bytes));
    }
    unsynced_.push_back(std::move(undo));
  }
  return inner_->WriteAt(offset, data);
}

Status FaultInjectingFile::Sync() {
  if (crashed_) return Dead();
  if (real_syncs_) BLK_RETURN_IF_ERROR(inner_->Sync());
  unsynced_.clear();
  Result<uint64_t> size = inner_->Size();
  if (!size.ok()) return size.status();
  have_synced_size_ = true;
  synced_size_ = *size;
  return Status::Ok();
}

Status FaultInjectingFile::Truncate(uint64_t size) {
  if (crashed_) return Dead();
  return inner_->Truncate(size);
}

Result<uint64_t> FaultInjectingFile::Size() {
  if (crashed_) return Dead();
  return inner_->Size();
}

}  // namespace blk::vhd
