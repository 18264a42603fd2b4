// The bounded JSON reader of qmp_json.h: a recursive descent whose depth is capped by JsonLimits::max_depth.
// Running out of input anywhere is "incomplete", never an error, so a message split across reads is fine.
#include "tools/qdisk-shim/qmp_json.h"

#include <cstdint>
#include <cstdio>

namespace blk {
namespace {

enum class Step { kOk, kIncomplete, kInvalid };

class Reader {
 public:
  Reader(std::string_view text, size_t pos, const JsonLimits& limits) : text_(text), pos_(pos), limits_(limits) {}

  JsonObjectScan ScanTopLevel() {
    JsonObjectScan scan;
    Step step = Object(/*depth=*/1, &scan.members);
    if (step == Step::kOk) {
      scan.outcome = JsonScanOutcome::kComplete;
      scan.end = pos_;
    } else if (step == Step::kIncomplete) {
      scan.outcome = JsonScanOutcome::kIncomplete;
      scan.members.clear();
    } else {
      scan.outcome = JsonScanOutcome::kInvalid;
      scan.error = error_;
      scan.members.clear();
    }
    return scan;
  }

 private:
  Step Fail(std::string why) {
    error_ = std::move(why);
    return Step::kInvalid;
  }
  bool AtEnd() const { return pos_ >= text_.size(); }
  void SkipSpace() {
    while (!AtEnd() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  // `members` is non-null for the top-level object only: nested objects are checked, not listed.
  Step Object(size_t depth, std::vector<JsonMember>* members) {
    if (depth > limits_.max_depth) return Fail("JSON nested too deeply");
    if (AtEnd()) return Step::kIncomplete;
    if (text_[pos_] != '{') return Fail("expected an object");
    ++pos_;
    SkipSpace();
    if (AtEnd()) return Step::kIncomplete;
    if (text_[pos_] == '}') {
      ++pos_;
      return Step::kOk;
    }
    size_t count = 0;
    while (true) {
      SkipSpace();
      if (AtEnd()) return Step::kIncomplete;
      if (text_[pos_] != '"') return Fail("expected a member name");
      std::string key;
      if (Step s = String(&key); s != Step::kOk) return s;
      SkipSpace();
      if (AtEnd()) return Step::kIncomplete;
      if (text_[pos_] != ':') return Fail("expected ':' after a member name");
      ++pos_;
      SkipSpace();
      size_t value_begin = pos_;
      JsonMember member;
      std::string decoded;
      if (Step s = Value(depth, &member.type, &decoded); s != Step::kOk) return s;
      if (members != nullptr) {
        if (++count > limits_.max_members) return Fail("too many members in the object");
        member.key = std::move(key);
        member.raw = text_.substr(value_begin, pos_ - value_begin);
        if (member.type == JsonType::kString) member.string_value = std::move(decoded);
        members->push_back(std::move(member));
      }
      SkipSpace();
      if (AtEnd()) return Step::kIncomplete;
      if (text_[pos_] == '}') {
        ++pos_;
        return Step::kOk;
      }
      if (text_[pos_] != ',') return Fail("expected ',' or '}' in an object");
      ++pos_;
    }
  }

  Step Array(size_t depth) {
    if (depth > limits_.max_depth) return Fail("JSON nested too deeply");
    ++pos_;  // '['
    SkipSpace();
    if (AtEnd()) return Step::kIncomplete;
    if (text_[pos_] == ']') {
      ++pos_;
      return Step::kOk;
    }
    while (true) {
      SkipSpace();
      JsonType type;
      std::string ignored;
      if (Step s = Value(depth, &type, &ignored); s != Step::kOk) return s;
      SkipSpace();
      if (AtEnd()) return Step::kIncomplete;
      if (text_[pos_] == ']') {
        ++pos_;
        return Step::kOk;
      }
      if (text_[pos_] != ',') return Fail("expected ',' or ']' in an array");
      ++pos_;
    }
  }

  // `depth` is that of the container holding the value.
  Step Value(size_t depth, JsonType* type, std::string* decoded) {
    if (AtEnd()) return Step::kIncomplete;
    char c = text_[pos_];
    switch (c) {
      case '{':
        *type = JsonType::kObject;
        return Object(depth + 1, nullptr);
      case '[':
        *type = JsonType::kArray;
        return Array(depth + 1);
      case '"':
        *type = JsonType::kString;
        return String(decoded);
      case 't':
        *type = JsonType::kBool;
        return Literal("true");
      case 'f':
        *type = JsonType::kBool;
        return Literal("false");
      case 'n':
        *type = JsonType::kNull;
        return Literal("null");
      default:
        if (c == '-' || (c >= '0' && c <= '9')) {
          *type = JsonType::kNumber;
          return Number();
        }
        return Fail("unexpected character in JSON");
    }
  }

  Step Literal(std::string_view word) {
    for (char expected : word) {
      if (AtEnd()) return Step::kIncomplete;
      if (text_[pos_] != expected) return Fail("bad JSON literal");
      ++pos_;
    }
    return Step::kOk;
  }

  static bool IsDigit(char c) { return c >= '0' && c <= '9'; }

  // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? ; a number is only known to be over at the next character,
  // so one that runs to the end of the input is incomplete (QMP numbers never end a message).
  Step Number() {
    size_t begin = pos_;
    auto digits = [&](bool need_one) -> Step {
      size_t start = pos_;
      while (!AtEnd() && IsDigit(text_[pos_])) ++pos_;
      if (AtEnd()) return Step::kIncomplete;
      if (need_one && pos_ == start) return Fail("bad JSON number");
      return Step::kOk;
    };
    if (text_[pos_] == '-') ++pos_;
    if (AtEnd()) return Step::kIncomplete;
    if (text_[pos_] == '0') {
      ++pos_;
      if (AtEnd()) return Step::kIncomplete;
    } else if (Step s = digits(true); s != Step::kOk) {
      return s;
    }
    if (text_[pos_] == '.') {
      ++pos_;
      if (Step s = digits(true); s != Step::kOk) return s;
    }
    if (text_[pos_] == 'e' || text_[pos_] == 'E') {
      ++pos_;
      if (AtEnd()) return Step::kIncomplete;
      if (text_[pos_] == '+' || text_[pos_] == '-') ++pos_;
      if (Step s = digits(true); s != Step::kOk) return s;
    }
    if (pos_ - begin > limits_.max_number_chars) return Fail("JSON number too long");
    return Step::kOk;
  }

  static int HexValue(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  Step Hex4(uint32_t* out) {
    *out = 0;
    for (int i = 0; i < 4; ++i) {
      if (AtEnd()) return Step::kIncomplete;
      int v = HexValue(text_[pos_]);
      if (v < 0) return Fail("bad \\u escape in a JSON string");
      *out = *out * 16 + static_cast<uint32_t>(v);
      ++pos_;
    }
    return Step::kOk;
  }

  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  Step String(std::string* out) {
    out->clear();
    ++pos_;  // '"'
    while (true) {
      if (AtEnd()) return Step::kIncomplete;
      if (out->size() > limits_.max_string_bytes) return Fail("JSON string too long");
      unsigned char c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') {
        ++pos_;
        return Step::kOk;
      }
      if (c < 0x20) return Fail("control character in a JSON string");
      if (c != '\\') {
        out->push_back(static_cast<char>(c));
        ++pos_;
        continue;
      }
      ++pos_;
      if (AtEnd()) return Step::kIncomplete;
      char e = text_[pos_++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp;
          if (Step s = Hex4(&cp); s != Step::kOk) return s;
          if (cp >= 0xDC00 && cp <= 0xDFFF) return Fail("lone low surrogate in a JSON string");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (AtEnd()) return Step::kIncomplete;
            if (text_[pos_] != '\\') return Fail("lone high surrogate in a JSON string");
            ++pos_;
            if (AtEnd()) return Step::kIncomplete;
            if (text_[pos_] != 'u') return Fail("lone high surrogate in a JSON string");
            ++pos_;
            uint32_t low;
            if (Step s = Hex4(&low); s != Step::kOk) return s;
            if (low < 0xDC00 || low > 0xDFFF) return Fail("bad surrogate pair in a JSON string");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          if (cp == 0) return Fail("NUL in a JSON string");
          AppendUtf8(cp, out);
          break;
        }
        default:
          return Fail("bad escape in a JSON string");
      }
    }
  }

  std::string_view text_;
  size_t pos_;
  const JsonLimits& limits_;
  std::string error_;
};

}  // namespace

JsonObjectScan ScanJsonObject(std::string_view text, size_t begin, const JsonLimits& limits) {
  if (begin > text.size()) begin = text.size();
  return Reader(text, begin, limits).ScanTopLevel();
}

std::string JsonQuote(std::string_view value) {
  std::string out = "\"";
  for (char ch : value) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(ch);
    } else if (c >= 0x20 && c < 0x7F) {
      out.push_back(ch);
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
    }
  }
  out.push_back('"');
  return out;
}

}  // namespace blk
