// Tests of ring/blkif_abi.cc: protocol names and ring geometry.
#include "ring/blkif_abi.h"

#include <gtest/gtest.h>

namespace blk {
namespace {

TEST(BlkifAbiTest, ParsesEveryProtocolXenDefines) {
  EXPECT_EQ(ParseProtocol(""), kNativeAbi);
  EXPECT_EQ(ParseProtocol("x86_32-abi"), Abi::kX86_32);
  EXPECT_EQ(ParseProtocol("x86_64-abi"), Abi::kX86_64);
  EXPECT_EQ(ParseProtocol(XEN_IO_PROTO_ABI_NATIVE), kNativeAbi);
  EXPECT_FALSE(ParseProtocol("arm-abi").has_value());
  EXPECT_FALSE(ParseProtocol("x86_64-abi ").has_value());
  EXPECT_STREQ(AbiName(Abi::kX86_32), "x86_32-abi");
}

TEST(BlkifAbiTest, RingSlotsFollowRingH) {
  // Linux sizes: one page holds 32 requests in either ABI; order 4 (16 pages) holds 512 (x86_64) or 512
  // (x86_32).
  EXPECT_EQ(RingSlots(Abi::kX86_64, 1), 32u);
  EXPECT_EQ(RingSlots(Abi::kX86_32, 1), 32u);
  EXPECT_EQ(RingSlots(Abi::kX86_64, 2), 64u);
  EXPECT_EQ(RingSlots(Abi::kX86_32, 16), 512u);
  EXPECT_EQ(RequestSize(Abi::kX86_32), 108u);
  EXPECT_EQ(ResponseSize(Abi::kX86_32), 12u);
  EXPECT_EQ(ResponseSize(Abi::kX86_64), 16u);
}

}  // namespace
}  // namespace blk
