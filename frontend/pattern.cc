// The sector pattern: [0,8) sector number, [8,16) seed, [16,504) bytes from a generator seeded by both,
// [504,512) an FNV-1a checksum of the first 504 bytes. Little-endian throughout.
#include "frontend/pattern.h"

#include <cstring>

namespace blk {
namespace {

constexpr size_t kBodyEnd = kPatternSectorSize - sizeof(uint64_t);

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Checksum(const uint8_t* data, size_t length) {
  uint64_t hash = 0xCBF29CE484222325ull;
  for (size_t i = 0; i < length; ++i) hash = (hash ^ data[i]) * 0x100000001B3ull;
  return hash;
}

void FillSector(uint8_t* sector, uint64_t number, uint64_t seed) {
  std::memcpy(sector, &number, sizeof(number));
  std::memcpy(sector + 8, &seed, sizeof(seed));
  uint64_t state = number * 0xD6E8FEB86659FD93ull ^ seed;
  for (size_t offset = 16; offset < kBodyEnd; offset += sizeof(uint64_t)) {
    uint64_t word = SplitMix(state);
    std::memcpy(sector + offset, &word, sizeof(word));
  }
  uint64_t sum = Checksum(sector, kBodyEnd);
  std::memcpy(sector + kBodyEnd, &sum, sizeof(sum));
}

uint64_t ReadWord(const uint8_t* at) {
  uint64_t word;
  std::memcpy(&word, at, sizeof(word));
  return word;
}

}  // namespace

void FillPattern(std::span<uint8_t> buffer, uint64_t first_sector, uint64_t seed) {
  for (size_t i = 0; i + kPatternSectorSize <= buffer.size(); i += kPatternSectorSize) {
    FillSector(buffer.data() + i, first_sector + i / kPatternSectorSize, seed);
  }
}

std::optional<PatternMismatch> CheckPattern(std::span<const uint8_t> buffer, uint64_t first_sector,
                                            uint64_t seed) {
  uint8_t expected[kPatternSectorSize];
  for (size_t i = 0; i + kPatternSectorSize <= buffer.size(); i += kPatternSectorSize) {
    const uint64_t number = first_sector + i / kPatternSectorSize;
    const uint8_t* actual = buffer.data() + i;
    FillSector(expected, number, seed);
    if (std::memcmp(actual, expected, kPatternSectorSize) == 0) continue;
    // Explain the difference as precisely as the sector itself allows.
    if (Checksum(actual, kBodyEnd) != ReadWord(actual + kBodyEnd))
      return PatternMismatch{number, "checksum mismatch"};
    if (ReadWord(actual) != number) {
      std::string reason = "holds sector ";
      reason += std::to_string(ReadWord(actual));
      return PatternMismatch{number, reason};
    }
    if (ReadWord(actual + 8) != seed) {
      std::string reason = "holds generation ";
      reason += std::to_string(ReadWord(actual + 8));
      return PatternMismatch{number, reason};
    }
    return PatternMismatch{number, "bytes differ"};
  }
  return std::nullopt;
}

}  // namespace blk
