// Tests of base/status.cc: errno translation, retry flag, annotation, Result.
#include "base/status.h"

#include <gtest/gtest.h>

#include <cerrno>

#include "base/format.h"

namespace blk {
namespace {

TEST(StatusTest, OkIsCheapAndEmpty) {
  Status status;
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(status.code(), Status::Code::kOk);
  EXPECT_EQ(status.ToString(), "ok");
  EXPECT_FALSE(status.retryable());
  EXPECT_EQ(sizeof(Status), sizeof(void*));
}

TEST(StatusTest, FromErrnoCategorisesAndKeepsContext) {
  Status missing = Status::FromErrno(ENOENT, "open /nope");
  EXPECT_EQ(missing.code(), Status::Code::kNotFound);
  EXPECT_EQ(missing.error_number(), ENOENT);
  EXPECT_FALSE(missing.retryable());
  EXPECT_NE(missing.ToString().find("open /nope: "), std::string::npos);

  EXPECT_EQ(Status::FromErrno(ENOSPC, "write").code(), Status::Code::kNoSpace);
  EXPECT_EQ(Status::FromErrno(EIO, "read").code(), Status::Code::kIoError);
  Status again = Status::FromErrno(EAGAIN, "io_submit");
  EXPECT_EQ(again.code(), Status::Code::kBusy);
  EXPECT_TRUE(again.retryable());
}

TEST(StatusTest, AnnotateAndCopyKeepEverything) {
  Status base = Status::FromErrno(EIO, "pread");
  Status annotated = base.Annotate("1/51712: ");
  EXPECT_EQ(annotated.code(), Status::Code::kIoError);
  EXPECT_EQ(annotated.error_number(), EIO);
  EXPECT_EQ(annotated.ToString().rfind("1/51712: pread: ", 0), 0u);
  Status copy = annotated;
  EXPECT_EQ(copy.ToString(), annotated.ToString());
  EXPECT_TRUE(Status::Ok().Annotate("x").ok());
}

TEST(ResultTest, HoldsValueOrStatus) {
  Result<int> good = 7;
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 7);
  EXPECT_TRUE(good.status().ok());
  Result<int> bad = Status::InvalidArgument("bad size");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(bad.status().ToString(), "bad size");
}

TEST(StrFormatTest, FormatsShortAndLongText) {
  EXPECT_EQ(StrFormat("d%u ref %u", 5u, 8u), "d5 ref 8");
  std::string long_text(1000, 'x');
  std::string formatted = StrFormat("[%s]", long_text.c_str());
  EXPECT_EQ(formatted.size(), 1002u);
  EXPECT_EQ(formatted, "[" + long_text + "]");
  EXPECT_EQ(StrFormat("%s", ""), "");
}

}  // namespace
}  // namespace blk
