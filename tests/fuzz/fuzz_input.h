// What every fuzz target shares: a reader that turns the fuzzer's bytes into choices (never reading past the
// input; an exhausted input yields zeros), and FUZZ_CHECK, which aborts with the failed condition so that
// libFuzzer records the input as a crash and the corpus replay fails the test.
//
// Threading: a FuzzInput belongs to one call of LLVMFuzzerTestOneInput.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>

#define FUZZ_CHECK(condition)                                                                \
  do {                                                                                       \
    if (!(condition)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

namespace blk::fuzz {

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t remaining() const { return size_ - used_; }
  bool empty() const { return used_ == size_; }

  uint8_t U8() {
    uint8_t value = 0;
    Fill(std::span(&value, 1));
    return value;
  }
  uint16_t U16() { return Little<uint16_t>(); }
  uint32_t U32() { return Little<uint32_t>(); }
  uint64_t U64() { return Little<uint64_t>(); }
  bool Bool() { return U8() & 1; }

  // Copies the next out.size() bytes into `out`; what the input lacks is zero.
  void Fill(std::span<uint8_t> out) {
    size_t take = out.size() < remaining() ? out.size() : remaining();
    if (take > 0) std::memcpy(out.data(), data_ + used_, take);
    if (take < out.size()) std::memset(out.data() + take, 0, out.size() - take);
    used_ += take;
  }
  // The rest of the input, consumed.
  std::span<const uint8_t> Rest() {
    std::span<const uint8_t> rest(data_ + used_, remaining());
    used_ = size_;
    return rest;
  }

 private:
  template <typename T>
  T Little() {
    uint8_t bytes[sizeof(T)];
    Fill(bytes);
    T value = 0;
    for (size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(T{bytes[i]} << (8 * i));
    return value;
  }

  const uint8_t* data_;
  size_t size_;
  size_t used_ = 0;
};

}  // namespace blk::fuzz
