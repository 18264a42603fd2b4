// Status: errno translation and formatting.
#include "base/status.h"

#include <cerrno>
#include <cstring>

namespace blk {

const char* CodeName(Status::Code code) {
  switch (code) {
    case Status::Code::kOk:
      return "ok";
    case Status::Code::kInvalidArgument:
      return "invalid argument";
    case Status::Code::kNotFound:
      return "not found";
    case Status::Code::kNotSupported:
      return "not supported";
    case Status::Code::kIoError:
      return "I/O error";
    case Status::Code::kNoSpace:
      return "no space";
    case Status::Code::kCorruption:
      return "corruption";
    case Status::Code::kPermissionDenied:
      return "permission denied";
    case Status::Code::kBusy:
      return "busy";
    case Status::Code::kProtocolError:
      return "protocol error";
  }
  return "unknown";
}

Status Status::FromErrno(int err, std::string_view context) {
  Code code = Code::kIoError;
  bool retryable = false;
  switch (err) {
    case ENOENT:
      code = Code::kNotFound;
      break;
    case EINVAL:
      code = Code::kInvalidArgument;
      break;
    case EACCES:
    case EPERM:
    case EROFS:
      code = Code::kPermissionDenied;
      break;
    case ENOSPC:
    case EDQUOT:
      code = Code::kNoSpace;
      break;
    case EOPNOTSUPP:
      code = Code::kNotSupported;
      break;
    case EAGAIN:
    case EINTR:
    case ENOMEM:
    case EBUSY:
      code = Code::kBusy;
      retryable = true;
      break;
    default:
      break;
  }
  std::string message(context);
  message += ": ";
  message += std::strerror(err);
  return Status(code, std::move(message), err, retryable);
}

const std::string& Status::message() const {
  static const std::string kEmpty;
  return state_ ? state_->message : kEmpty;
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return state_->message.empty() ? std::string(CodeName(state_->code)) : state_->message;
}

Status Status::Annotate(std::string_view prefix) const {
  if (ok()) return Status();
  std::string message(prefix);
  message += state_->message;
  return Status(state_->code, std::move(message), state_->err, state_->retryable);
}

}  // namespace blk
