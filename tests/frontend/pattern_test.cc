// Tests of frontend/pattern.cc.
#include "frontend/pattern.h"

#include <gtest/gtest.h>

#include <vector>

namespace blk {
namespace {

TEST(PatternTest, FilledBufferChecksClean) {
  std::vector<uint8_t> buffer(16 * 512);
  FillPattern(buffer, 1000, 5);
  EXPECT_FALSE(CheckPattern(buffer, 1000, 5).has_value());
  std::vector<uint8_t> again(16 * 512);
  FillPattern(again, 1000, 5);
  EXPECT_EQ(buffer, again);  // deterministic
  FillPattern(again, 1000, 6);
  EXPECT_NE(buffer, again);
}

TEST(PatternTest, NamesTheFirstBadSectorAndWhy) {
  std::vector<uint8_t> buffer(8 * 512);
  FillPattern(buffer, 50, 1);
  buffer[3 * 512 + 100] ^= 1;
  buffer[6 * 512 + 100] ^= 1;
  auto corrupt = CheckPattern(buffer, 50, 1);
  ASSERT_TRUE(corrupt.has_value());
  EXPECT_EQ(corrupt->sector, 53u);
  EXPECT_EQ(corrupt->reason, "checksum mismatch");

  FillPattern(buffer, 50, 1);
  FillPattern({buffer.data() + 2 * 512, 512}, 70, 1);  // a misdirected write
  auto misplaced = CheckPattern(buffer, 50, 1);
  ASSERT_TRUE(misplaced.has_value());
  EXPECT_EQ(misplaced->sector, 52u);
  EXPECT_EQ(misplaced->reason, "holds sector 70");

  FillPattern(buffer, 50, 1);
  FillPattern({buffer.data() + 7 * 512, 512}, 57, 0);  // a lost write: the old generation
  auto stale = CheckPattern(buffer, 50, 1);
  ASSERT_TRUE(stale.has_value());
  EXPECT_EQ(stale->sector, 57u);
  EXPECT_EQ(stale->reason, "holds generation 0");

  std::vector<uint8_t> zeros(512, 0);
  EXPECT_TRUE(CheckPattern(zeros, 0, 0).has_value());
}

}  // namespace
}  // namespace blk
