#include "granary/status.h"

#include <cerrno>
#include <memory>

#include <gtest/gtest.h>

namespace granary {
namespace {

TEST(StatusTest, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_TRUE(Status(StatusCode::kOk, "ignored").message().empty());
}

TEST(StatusTest, CarriesCodeMessageAndContext) {
  Status s = NotFoundError("key a/b");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.ToString(), "NotFound: key a/b");
  Status c = s.WithContext("shard 12 of ds");
  EXPECT_EQ(c.message(), "shard 12 of ds: key a/b");
  EXPECT_EQ(c.code(), StatusCode::kNotFound);
  EXPECT_TRUE(Status::OK().WithContext("x").ok());
}

TEST(StatusTest, ErrnoMapping) {
  EXPECT_EQ(ErrnoToStatus(ENOENT, "f").code(), StatusCode::kNotFound);
  EXPECT_EQ(ErrnoToStatus(EEXIST, "f").code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(ErrnoToStatus(ENOSPC, "f").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoToStatus(EDQUOT, "f").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoToStatus(EACCES, "f").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoToStatus(EIO, "f").code(), StatusCode::kInternal);
  Status s = ErrnoToStatus(ENOSPC, "write /x/y");
  EXPECT_EQ(s.sys_errno(), ENOSPC);
  EXPECT_NE(s.message().find("/x/y"), std::string::npos);
  EXPECT_NE(s.message().find("No space left"), std::string::npos);
}

Result<int> Half(int x) {
  if (x % 2) return InvalidArgumentError("odd " + std::to_string(x));
  return x / 2;
}

Result<int> Quarter(int x) {
  GRANARY_ASSIGN_OR_RETURN(int h, Half(x));
  GRANARY_ASSIGN_OR_RETURN(h, Half(h));
  return h;
}

Status CheckEven(int x) {
  GRANARY_RETURN_IF_ERROR(Half(x).status());
  return Status::OK();
}

TEST(ResultTest, ValueAndErrorPropagate) {
  EXPECT_EQ(*Quarter(8), 2);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "odd 3");
  EXPECT_EQ(r.value_or(-1), -1);
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_FALSE(CheckEven(5).ok());
}

TEST(ResultTest, MoveOnlyValues) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(7);
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).value();
  EXPECT_EQ(*p, 7);
}

TEST(ResultTest, OkStatusIsNotAValue) {
  Result<int> r = Status::OK();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

TEST(ResultDeathTest, ValueOfErrorAborts) {
  Result<int> r = NotFoundError("x");
  EXPECT_DEATH((void)r.value(), "");
}

}  // namespace
}  // namespace granary
