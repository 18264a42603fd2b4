// Page-aligned byte buffers for tests: a guest's I/O buffers start on a page (the frontend derives first_sect
// from the address), and O_DIRECT wants aligned memory too.
#pragma once

#include <cstdint>
#include <new>
#include <vector>

#include "ring/blkif_abi.h"

namespace blk {

template <typename T>
struct PageAligned {
  using value_type = T;
  PageAligned() = default;
  template <typename U>
  PageAligned(const PageAligned<U>&) {}
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{kPageSize}));
  }
  void deallocate(T* p, size_t) { ::operator delete (p, std::align_val_t{kPageSize}); }
  bool operator==(const PageAligned&) const { return true; }
};
using Bytes = std::vector<uint8_t, PageAligned<uint8_t>>;

}  // namespace blk
