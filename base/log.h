// Logging to stderr in a form journald understands: each line starts with a "<N>" syslog priority, then the
// subject it is about (a device "1/51712", "xenstore", "blkbench") and the message. One line per event.
//
// Thread-safe: each line is formatted into a local buffer and written with a single write(2).
#pragma once

#include <cstdarg>

namespace blk {

enum class LogLevel { kError = 3, kWarning = 4, kNotice = 5, kInfo = 6, kDebug = 7 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Parses "error", "warning", "notice", "info", "debug"; returns false if unknown.
bool ParseLogLevel(const char* text, LogLevel* level);

// Redirects log lines into a caller-supplied sink (tests capture them); nullptr restores stderr.
using LogSink = void (*)(LogLevel level, const char* line, void* context);
void SetLogSink(LogSink sink, void* context);

void Log(LogLevel level, const char* subject, const char* format, ...) __attribute__((format(printf, 3, 4)));

}  // namespace blk
