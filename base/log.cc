// Logging: journald-style priorities on stderr, one write per line.
#include "base/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>

namespace blk {
namespace {

std::atomic<LogLevel> g_level{LogLevel::kInfo};
std::mutex g_sink_mutex;
LogSink g_sink = nullptr;
void* g_sink_context = nullptr;

}  // namespace

void SetLogLevel(LogLevel level) { g_level.store(level, std::memory_order_relaxed); }
LogLevel GetLogLevel() { return g_level.load(std::memory_order_relaxed); }

bool ParseLogLevel(const char* text, LogLevel* level) {
  static constexpr struct {
    const char* name;
    LogLevel level;
  } kNames[] = {{"error", LogLevel::kError},
                {"warning", LogLevel::kWarning},
                {"notice", LogLevel::kNotice},
                {"info", LogLevel::kInfo},
                {"debug", LogLevel::kDebug}};
  for (const auto& entry : kNames) {
    if (std::strcmp(text, entry.name) == 0) {
      *level = entry.level;
      return true;
    }
  }
  return false;
}

void SetLogSink(LogSink sink, void* context) {
  std::lock_guard lock(g_sink_mutex);
  g_sink = sink;
  g_sink_context = context;
}

void Log(LogLevel level, const char* subject, const char* format, ...) {
  if (static_cast<int>(level) > static_cast<int>(GetLogLevel())) return;
  char line[1024];
  int used = std::snprintf(line, sizeof(line), "<%d>%s: ", static_cast<int>(level), subject);
  if (used < 0) return;
  va_list args;
  va_start(args, format);
  int body = std::vsnprintf(line + used, sizeof(line) - used - 1, format, args);
  va_end(args);
  size_t length = used + (body < 0 ? 0 : static_cast<size_t>(body));
  if (length > sizeof(line) - 2) length = sizeof(line) - 2;
  // A frontend-supplied string must not be able to forge a second log line.
  for (size_t i = used; i < length; ++i) {
    if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
  }
  {
    std::lock_guard lock(g_sink_mutex);
    if (g_sink != nullptr) {
      line[length] = '\0';
      g_sink(level, line, g_sink_context);
      return;
    }
  }
  line[length++] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, line, length);
  (void)ignored;
}

}  // namespace blk
