// The file-I/O seam under the VHD code: positioned reads and writes, durability, size. PosixFile is the real
// one; FaultInjectingFile wraps another and fails or "crashes" at the Nth write, optionally dropping
// everything written since the last Sync (a power cut), so crash-consistency tests run in-process.
//
// Threading: one FileIo is used by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "base/unique_fd.h"

namespace blk::vhd {

class FileIo {
 public:
  virtual ~FileIo() = default;
  // Reads exactly out.size() bytes; reading past the end of the file is Corruption ("truncated").
  virtual Status ReadAt(uint64_t offset, std::span<uint8_t> out) = 0;
  virtual Status WriteAt(uint64_t offset, std::span<const uint8_t> data) = 0;
  // Makes every earlier write durable (fdatasync).
  virtual Status Sync() = 0;
  virtual Status Truncate(uint64_t size) = 0;
  virtual Result<uint64_t> Size() = 0;
  virtual const std::string& path() const = 0;
};

class PosixFile : public FileIo {
 public:
  // Opens an existing file, or creates (or empties) one when `create` is set.
  static Result<std::unique_ptr<FileIo>> Open(const std::string& path, bool writable, bool create = false);

  Status ReadAt(uint64_t offset, std::span<uint8_t> out) override;
  Status WriteAt(uint64_t offset, std::span<const uint8_t> data) override;
  Status Sync() override;
  Status Truncate(uint64_t size) override;
  Result<uint64_t> Size() override;
  const std::string& path() const override { return path_; }
  int fd() const { return fd_.get(); }

 private:
  PosixFile(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  UniqueFd fd_;
  std::string path_;
};

class FaultInjectingFile : public FileIo {
 public:
  enum class Fault {
    kNone,
    kFailWrite,  // the Nth write returns EIO; later calls work (a transient failure)
    kCrash,      // the Nth write never happens and neither does anything after it
    kPowerCut,   // as kCrash, and every write since the last successful Sync is undone
  };
  // `real_syncs` false skips the inner fdatasync: the wrapper's own bookkeeping decides what a power cut
  // loses, so tests need not wait for the disk.
  FaultInjectingFile(std::unique_ptr<FileIo> inner, Fault fault, uint64_t fault_at_write,
                     bool real_syncs = true)
      : inner_(std::move(inner)), fault_(fault), fault_at_write_(fault_at_write), real_syncs_(real_syncs) {}

  Status ReadAt(uint64_t offset, std::span<uint8_t> out) override;
  Status WriteAt(uint64_t offset, std::span<const uint8_t> data) override;
  Status Sync() override;
  Status Truncate(uint64_t size) override;
  Result<uint64_t> Size() override;
  const std::string& path() const override { return inner_->path(); }

  uint64_t writes() const { return writes_; }
  bool crashed() const { return crashed_; }

 private:
  struct Undo {
    uint64_t offset;
    std::vector<uint8_t> old_bytes;
  };
  Status Crash();
  Status Dead() const;

  std::unique_ptr<FileIo> inner_;
  Fault fault_;
  uint64_t fault_at_write_;
  bool real_syncs_;
  uint64_t writes_ = 0;
  bool crashed_ = false;
  bool have_synced_size_ = false;
  uint64_t synced_size_ = 0;
  std::vector<Undo> unsynced_;
};

}  // namespace blk::vhd
