// A strict, bounded JSON reader for QMP: finds where one top-level object ends in a byte stream and lists its
// members, without building a tree. Everything is bounded (nesting depth, members, string and number length),
// so a peer cannot make us recurse deeply or allocate much; input that is not JSON is reported, never trusted.
//
// Threading: pure functions over the caller's bytes.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace blk {

struct JsonLimits {
  size_t max_depth = 32;             // containers nested inside each other, the top-level object included
  size_t max_members = 64;           // members of the top-level object
  size_t max_string_bytes = 4096;    // one string, decoded
  size_t max_number_chars = 64;
};

enum class JsonType { kObject, kArray, kString, kNumber, kBool, kNull };

struct JsonMember {
  std::string key;
  JsonType type = JsonType::kNull;
  std::string_view raw;                     // the value's exact text, inside the caller's buffer
  std::optional<std::string> string_value;  // decoded, for strings
};

enum class JsonScanOutcome {
  kComplete,    // one object was read: `end` is the offset just after its closing brace
  kIncomplete,  // the input ended inside the object: read more and scan again from the same offset
  kInvalid,     // not JSON (or beyond the limits): `error` says why
};

struct JsonObjectScan {
  JsonScanOutcome outcome = JsonScanOutcome::kInvalid;
  size_t end = 0;
  std::vector<JsonMember> members;  // in input order, when complete
  std::string error;
};

// Reads one JSON object starting at text[begin] (which must be '{', after any whitespace the caller skipped).
JsonObjectScan ScanJsonObject(std::string_view text, size_t begin, const JsonLimits& limits = {});

// `value` as a JSON string literal (quotes included); bytes outside printable ASCII become \u escapes, so
// the result is plain ASCII whatever the input was.
std::string JsonQuote(std::string_view value);

}  // namespace blk
