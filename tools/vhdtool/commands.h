// vhdtool's verbs, named after vhd-util's: create, snapshot, info, check, convert, coalesce. Each takes its
// own arguments (after the verb) and returns the process exit code: 0 done (check: no problems), 1 failed
// (check: problems found), 2 bad usage. Results go to stdout, errors to stderr as "vhdtool: <one line>".
//
// Threading: run from main, one at a time.
#pragma once

#include <string>
#include <vector>

namespace blk::vhdtool {

using Args = std::vector<std::string>;

int Create(const Args& args);
int Snapshot(const Args& args);
int Info(const Args& args);
int Check(const Args& args);
int Convert(const Args& args);
int Coalesce(const Args& args);

// Prints `message` as "vhdtool: message" on stderr and returns `code`.
int Fail(const std::string& message, int code = 1);

}  // namespace blk::vhdtool
