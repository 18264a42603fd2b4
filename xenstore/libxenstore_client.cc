// LibXenStoreClient: each operation is one libxenstore call; errno becomes a Status naming the path.
#include "xenstore/libxenstore_client.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <utility>

// libxenstore's header has no C++ linkage guards.
extern "C" {
#include <xenstore.h>
}

namespace blk {
namespace {

struct FreeDeleter {
  void operator()(void* pointer) const { std::free(pointer); }
};
template <typename T>
using MallocPtr = std::unique_ptr<T, FreeDeleter>;

std::string Context(std::string_view operation, std::string_view path, TransactionId t) {
  std::string context = "xenstore ";
  context += operation;
  context += ' ';
  context += path;
  if (t != kNoTransaction) context += " (transaction " + std::to_string(t) + ")";
  return context;
}

// libxenstore takes C strings: a path with an embedded NUL would silently name another node.
Result<std::string> CPath(std::string_view operation, std::string_view path) {
  if (path.empty() || path.find('\0') != std::string_view::npos) {
    return Status::InvalidArgument(Context(operation, path, kNoTransaction) + ": empty path or embedded NUL");
  }
  return std::string(path);
}

Status ErrnoStatus(std::string_view operation, std::string_view path, TransactionId t) {
  int err = errno != 0 ? errno : EIO;
  return Status::FromErrno(err, Context(operation, path, t));
}

std::mutex& EnvironmentMutex() {
  static std::mutex mutex;
  return mutex;
}

xs_handle* OpenHandle(const std::string& socket_path) {
  if (socket_path.empty()) return xs_open(0);
  std::lock_guard lock(EnvironmentMutex());
  const char* previous_value = std::getenv("XENSTORED_PATH");
  std::optional<std::string> previous;
  if (previous_value != nullptr) previous = previous_value;
  setenv("XENSTORED_PATH", socket_path.c_str(), 1);
  xs_handle* handle = xs_open(0);
  int saved_errno = errno;
  if (previous) {
    setenv("XENSTORED_PATH", previous->c_str(), 1);
  } else {
    unsetenv("XENSTORED_PATH");
  }
  errno = saved_errno;
  return handle;
}

}  // namespace

void LibXenStoreClient::HandleCloser::operator()(xs_handle* handle) const { xs_close(handle); }

Result<std::unique_ptr<LibXenStoreClient>> LibXenStoreClient::Open(const Options& options) {
  errno = 0;
  std::unique_ptr<xs_handle, HandleCloser> handle(OpenHandle(options.socket_path));
  if (!handle) {
    std::string where =
        options.socket_path.empty() ? std::string("the xenstore daemon") : options.socket_path;
    return Status::FromErrno(errno != 0 ? errno : EIO, "xenstore open " + where);
  }
  int watch_pipe = xs_fileno(handle.get());
  if (watch_pipe < 0) return Status::FromErrno(errno != 0 ? errno : EIO, "xenstore watch fd");
  UniqueFd epoll(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll.valid()) return Status::FromErrno(errno, "epoll_create1 for xenstore watches");
  UniqueFd queue_ready(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!queue_ready.valid()) return Status::FromErrno(errno, "eventfd for xenstore watches");
  for (int fd : {watch_pipe, queue_ready.get()}) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd;
    if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &event) != 0) {
      return Status::FromErrno(errno, "epoll_ctl for xenstore watches");
    }
  }
  return std::unique_ptr<LibXenStoreClient>(new LibXenStoreClient(
      std::move(handle), std::move(epoll), std::move(queue_ready), options.watch_queue_capacity));
}

LibXenStoreClient::LibXenStoreClient(std::unique_ptr<xs_handle, HandleCloser> handle, UniqueFd epoll,
                                     UniqueFd queue_ready, size_t capacity)
    : handle_(std::move(handle)),
      epoll_(std::move(epoll)),
      queue_ready_(std::move(queue_ready)),
      queue_(capacity) {}

LibXenStoreClient::~LibXenStoreClient() = default;

Result<std::string> LibXenStoreClient::DoRead(TransactionId t, std::string_view path) {
  Result<std::string> c_path = CPath("read", path);
  if (!c_path.ok()) return c_path.status();
  unsigned int length = 0;
  errno = 0;
  MallocPtr<char> value(static_cast<char*>(xs_read(handle_.get(), t, c_path->c_str(), &length)));
  if (!value) return ErrnoStatus("read", path, t);
  return std::string(value.get(), length);
}

Status LibXenStoreClient::DoWrite(TransactionId t, std::string_view path, std::string_view value) {
  Result<std::string> c_path = CPath("write", path);
  if (!c_path.ok()) return c_path.status();
  errno = 0;
  if (!xs_write(handle_.get(), t, c_path->c_str(), value.data(), value.size())) {
    return ErrnoStatus("write", path, t);
  }
  return Status::Ok();
}

Status LibXenStoreClient::DoMkdir(TransactionId t, std::string_view path) {
  Result<std::string> c_path = CPath("mkdir", path);
  if (!c_path.ok()) return c_path.status();
  errno = 0;
  if (!xs_mkdir(handle_.get(), t, c_path->c_str())) return ErrnoStatus("mkdir", path, t);
  return Status::Ok();
}

Status LibXenStoreClient::DoRemove(TransactionId t, std::string_view path) {
  Result<std::string> c_path = CPath("rm", path);
  if (!c_path.ok()) return c_path.status();
  errno = 0;
  if (!xs_rm(handle_.get(), t, c_path->c_str())) return ErrnoStatus("rm", path, t);
  return Status::Ok();
}

Result<std::vector<std::string>> LibXenStoreClient::DoDirectory(TransactionId t, std::string_view path) {
  Result<std::string> c_path = CPath("directory", path);
  if (!c_path.ok()) return c_path.status();
  unsigned int count = 0;
  errno = 0;
  MallocPtr<char*> names(xs_directory(handle_.get(), t, c_path->c_str(), &count));
  if (!names) return ErrnoStatus("directory", path, t);
  std::vector<std::string> children;
  children.reserve(count);
  for (unsigned int i = 0; i < count; ++i) children.emplace_back(names.get()[i]);
  return children;
}

Result<std::vector<XsPermission>> LibXenStoreClient::DoGetPermissions(TransactionId t,
                                                                      std::string_view path) {
  Result<std::string> c_path = CPath("get-perms", path);
  if (!c_path.ok()) return c_path.status();
  unsigned int count = 0;
  errno = 0;
  MallocPtr<xs_permissions> permissions(xs_get_permissions(handle_.get(), t, c_path->c_str(), &count));
  if (!permissions) return ErrnoStatus("get-perms", path, t);
  std::vector<XsPermission> result;
  result.reserve(count);
  for (unsigned int i = 0; i < count; ++i) {
    const xs_permissions& entry = permissions.get()[i];
    result.push_back(XsPermission{entry.id, entry.perms & (XS_PERM_READ | XS_PERM_WRITE)});
  }
  return result;
}

Status LibXenStoreClient::DoSetPermissions(TransactionId t, std::string_view path,
                                           std::span<const XsPermission> permissions) {
  Result<std::string> c_path = CPath("set-perms", path);
  if (!c_path.ok()) return c_path.status();
  if (permissions.empty()) {
    return Status::InvalidArgument(Context("set-perms", path, t) +
                                   ": a permission list needs an owner entry");
  }
  std::vector<xs_permissions> entries;
  entries.reserve(permissions.size());
  for (const XsPermission& permission : permissions) {
    if ((permission.access & ~static_cast<uint32_t>(kXsReadWrite)) != 0) {
      return Status::InvalidArgument(Context("set-perms", path, t) + ": unknown access bits");
    }
    entries.push_back(xs_permissions{permission.domid, permission.access});
  }
  errno = 0;
  if (!xs_set_permissions(handle_.get(), t, c_path->c_str(), entries.data(),
                          static_cast<unsigned int>(entries.size()))) {
    return ErrnoStatus("set-perms", path, t);
  }
  return Status::Ok();
}

Result<TransactionId> LibXenStoreClient::DoTransactionStart() {
  errno = 0;
  xs_transaction_t t = xs_transaction_start(handle_.get());
  if (t == XBT_NULL) return Status::FromErrno(errno != 0 ? errno : EIO, "xenstore transaction start");
  return TransactionId{t};
}

Status LibXenStoreClient::DoTransactionEnd(TransactionId t, bool commit) {
  errno = 0;
  if (!xs_transaction_end(handle_.get(), t, /*abort=*/!commit)) {
    return Status::FromErrno(errno != 0 ? errno : EIO,
                             "xenstore transaction " + std::to_string(t) + (commit ? " commit" : " abort"));
  }
  return Status::Ok();
}

Status LibXenStoreClient::Watch(std::string_view path, std::string_view token) {
  Result<std::string> c_path = CPath("watch", path);
  if (!c_path.ok()) return c_path.status();
  Result<std::string> c_token = CPath("watch token for", token);
  if (!c_token.ok()) return c_token.status();
  // Registered first so that the initial event, which may arrive before xs_watch returns, is attributed.
  bool added = queue_.AddWatch(path, token);
  errno = 0;
  if (!xs_watch(handle_.get(), c_path->c_str(), c_token->c_str())) {
    Status status = ErrnoStatus("watch", path, kNoTransaction);
    if (added) queue_.RemoveWatch(path, token);  // a duplicate must not unregister the original
    return status;
  }
  return Status::Ok();
}

Status LibXenStoreClient::Unwatch(std::string_view path, std::string_view token) {
  Result<std::string> c_path = CPath("unwatch", path);
  if (!c_path.ok()) return c_path.status();
  Result<std::string> c_token = CPath("unwatch token for", token);
  if (!c_token.ok()) return c_token.status();
  errno = 0;
  if (!xs_unwatch(handle_.get(), c_path->c_str(), c_token->c_str())) {
    return ErrnoStatus("unwatch", path, kNoTransaction);
  }
  queue_.RemoveWatch(path, token);
  return Status::Ok();
}

Status LibXenStoreClient::DrainLibraryEvents() {
  for (;;) {
    errno = 0;
    MallocPtr<char*> event(xs_check_watch(handle_.get()));
    if (!event) {
      if (errno == EAGAIN) return Status::Ok();
      return Status::FromErrno(errno != 0 ? errno : EIO, "xenstore read watch event");
    }
    queue_.Push(event.get()[XS_WATCH_PATH], event.get()[XS_WATCH_TOKEN]);
  }
}

Status LibXenStoreClient::UpdateQueueReady() {
  bool want = !queue_.empty();
  if (want == queue_ready_set_) return Status::Ok();
  uint64_t value = 1;
  ssize_t done = want ? ::write(queue_ready_.get(), &value, sizeof(value))
                      : ::read(queue_ready_.get(), &value, sizeof(value));
  if (done != static_cast<ssize_t>(sizeof(value))) return Status::FromErrno(errno, "xenstore watch eventfd");
  queue_ready_set_ = want;
  return Status::Ok();
}

Result<size_t> LibXenStoreClient::ReadWatchEvents(std::vector<WatchEvent>* out, size_t max) {
  Status drained = DrainLibraryEvents();
  size_t popped = queue_.Pop(out, max);
  BLK_RETURN_IF_ERROR(UpdateQueueReady());
  if (!drained.ok() && popped == 0) return drained;
  return popped;
}

Result<std::string> LibXenStoreClient::Control(std::string_view command, std::string_view argument) {
  Result<std::string> c_command = CPath("control", command);
  if (!c_command.ok()) return c_command.status();
  std::string data(argument);
  data.push_back('\0');
  errno = 0;
  MallocPtr<char> answer(xs_control_command(handle_.get(), c_command->c_str(), data.data(),
                                            static_cast<unsigned int>(data.size())));
  if (!answer) return ErrnoStatus("control", command, kNoTransaction);
  return std::string(answer.get());
}

}  // namespace blk
