// A deterministic, self-checking data pattern for 512-byte sectors, to prove that what was read is what was
// written, where it was written. Each sector carries its own sector number, a generation (seed), bytes
// derived from both, and a checksum over all of it; a check names the first sector that is wrong and how.
//
// Threading: pure functions on caller memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace blk {

inline constexpr size_t kPatternSectorSize = 512;

// Fills `buffer` (a multiple of 512 bytes) as the sectors starting at `first_sector`, generation `seed`.
void FillPattern(std::span<uint8_t> buffer, uint64_t first_sector, uint64_t seed);

struct PatternMismatch {
  uint64_t sector;     // the sector expected where the mismatch is
  std::string reason;  // "holds sector 9", "holds generation 3", "checksum mismatch", "bytes differ"
};

// Checks `buffer` against FillPattern(buffer, first_sector, seed); nullopt when all sectors match.
std::optional<PatternMismatch> CheckPattern(std::span<const uint8_t> buffer, uint64_t first_sector,
                                            uint64_t seed);

}  // namespace blk
