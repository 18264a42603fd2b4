// Status and Result<T>: errors as values at every I/O boundary.
//
// A Status costs one null pointer on success. A failure carries a category, an errno where one applies, a
// "retry later" flag (transient: EAGAIN, ENOMEM, a busy resource) and a one-line message naming what was
// wrong. errno becomes a Status in one place, Status::FromErrno, with one sign convention: pass the positive
// errno.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace blk {

class [[nodiscard]] Status {
 public:
  enum class Code : uint8_t {
    kOk,
    kInvalidArgument,  // the caller (or a guest, or a file) gave something malformed
    kNotFound,
    kNotSupported,
    kIoError,
    kNoSpace,
    kCorruption,  // on-disk metadata is inconsistent
    kPermissionDenied,
    kBusy,           // a resource is exhausted for now; retry later
    kProtocolError,  // a peer broke the protocol (a frontend, a xenstore server)
  };

  Status() = default;
  Status(const Status& other) : state_(other.state_ ? std::make_unique<State>(*other.state_) : nullptr) {}
  Status& operator=(const Status& other) {
    if (this != &other) state_ = other.state_ ? std::make_unique<State>(*other.state_) : nullptr;
    return *this;
  }
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;

  static Status Ok() { return Status(); }
  static Status Error(Code code, std::string message, int err = 0) {
    return Status(code, std::move(message), err, code == Code::kBusy);
  }
  static Status InvalidArgument(std::string message) {
    return Error(Code::kInvalidArgument, std::move(message));
  }
  static Status NotFound(std::string message) { return Error(Code::kNotFound, std::move(message)); }
  static Status NotSupported(std::string message) { return Error(Code::kNotSupported, std::move(message)); }
  static Status Corruption(std::string message) { return Error(Code::kCorruption, std::move(message)); }
  static Status ProtocolError(std::string message) { return Error(Code::kProtocolError, std::move(message)); }
  static Status IoError(std::string message) { return Error(Code::kIoError, std::move(message)); }
  static Status Busy(std::string message) { return Error(Code::kBusy, std::move(message)); }
  // `err` is a positive errno value; `context` names the operation and its object ("open /x/disk.img").
  static Status FromErrno(int err, std::string_view context);

  bool ok() const { return state_ == nullptr; }
  Code code() const { return state_ ? state_->code : Code::kOk; }
  // The errno this status came from, or 0.
  int error_number() const { return state_ ? state_->err : 0; }
  bool retryable() const { return state_ && state_->retryable; }
  std::string ToString() const;
  const std::string& message() const;

  // Prefixes the message with more context ("vhd /x/a.vhd: " + message).
  Status Annotate(std::string_view prefix) const;

 private:
  struct State {
    Code code;
    bool retryable;
    int err;
    std::string message;
  };
  Status(Code code, std::string message, int err, bool retryable)
      : state_(std::make_unique<State>(State{code, retryable, err, std::move(message)})) {}

  std::unique_ptr<State> state_;
};

const char* CodeName(Status::Code code);

// A value or the Status that explains its absence.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : value_(std::move(status)) {}  // NOLINT: must not be ok

  bool ok() const { return std::holds_alternative<T>(value_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(value_);
  }
  T& value() & { return std::get<T>(value_); }
  const T& value() const& { return std::get<T>(value_); }
  T&& value() && { return std::get<T>(std::move(value_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  std::variant<T, Status> value_;
};

}  // namespace blk

// Returns early from the enclosing function when `expr` yields a failed Status.
#define BLK_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::blk::Status blk_status_ = (expr);        \
    if (!blk_status_.ok()) return blk_status_; \
  } while (0)
