// Transaction lifetime and the RunTransaction retry loop.
#include "xenstore/xenstore.h"

#include <cerrno>
#include <utility>

#include "base/log.h"

namespace blk {

Result<Transaction> Transaction::Begin(XenStore& store) {
  Result<TransactionId> id = store.DoTransactionStart();
  if (!id.ok()) return id.status();
  return Transaction(&store, *id);
}

Transaction::Transaction(Transaction&& other) noexcept
    : store_(other.store_), id_(other.id_), active_(std::exchange(other.active_, false)) {}

Transaction& Transaction::operator=(Transaction&& other) noexcept {
  if (this != &other) {
    if (active_) (void)Abort();
    store_ = other.store_;
    id_ = other.id_;
    active_ = std::exchange(other.active_, false);
  }
  return *this;
}

Transaction::~Transaction() {
  if (!active_) return;
  Status status = Abort();
  if (!status.ok())
    Log(LogLevel::kWarning, "xenstore", "abandoning transaction %u: %s", id_, status.ToString().c_str());
}

Status Transaction::Commit() {
  if (!active_) return Status::InvalidArgument("transaction already ended");
  active_ = false;
  return store_->DoTransactionEnd(id_, /*commit=*/true);
}

Status Transaction::Abort() {
  if (!active_) return Status::InvalidArgument("transaction already ended");
  active_ = false;
  return store_->DoTransactionEnd(id_, /*commit=*/false);
}

bool IsTransactionConflict(const Status& status) { return !status.ok() && status.error_number() == EAGAIN; }

Status RunTransaction(XenStore& store, const std::function<Status(Transaction&)>& body, int max_attempts) {
  Status last = Status::InvalidArgument("RunTransaction: max_attempts must be positive");
  for (int attempt = 0; attempt < max_attempts; ++attempt) {
    Result<Transaction> transaction = Transaction::Begin(store);
    if (!transaction.ok()) return transaction.status();
    Status status = body(*transaction);
    if (status.ok()) {
      status = transaction->Commit();
    } else if (transaction->active()) {
      (void)transaction->Abort();  // the body's failure is what matters
    }
    if (!IsTransactionConflict(status)) return status;
    last = std::move(status);
  }
  return last.Annotate("transaction conflicted on every attempt: ");
}

}  // namespace blk
