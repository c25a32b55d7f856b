#include "engine/status.h"

#include <gtest/gtest.h>

namespace kvferry {
namespace {

TEST(Status, DefaultIsOkAndPrintsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(Status, ToStringJoinsCodeNameAndMessage) {
  EXPECT_EQ(Status(Code::kOutOfRange, "past the end").ToString(), "OUT_OF_RANGE: past the end");
  EXPECT_EQ(Status(Code::kCancelled, "").ToString(), "CANCELLED");
}

TEST(Status, EveryCodeHasTheGrpcStyleNameTheTypeScriptSideExpects) {
  EXPECT_STREQ(CodeName(Code::kOk), "OK");
  EXPECT_STREQ(CodeName(Code::kInvalidArgument), "INVALID_ARGUMENT");
  EXPECT_STREQ(CodeName(Code::kNotFound), "NOT_FOUND");
  EXPECT_STREQ(CodeName(Code::kOutOfRange), "OUT_OF_RANGE");
  EXPECT_STREQ(CodeName(Code::kResourceExhausted), "RESOURCE_EXHAUSTED");
  EXPECT_STREQ(CodeName(Code::kUnavailable), "UNAVAILABLE");
  EXPECT_STREQ(CodeName(Code::kCancelled), "CANCELLED");
  EXPECT_STREQ(CodeName(Code::kDeadlineExceeded), "DEADLINE_EXCEEDED");
  EXPECT_STREQ(CodeName(Code::kPermissionDenied), "PERMISSION_DENIED");
  EXPECT_STREQ(CodeName(Code::kNotSupported), "NOT_SUPPORTED");
  EXPECT_STREQ(CodeName(Code::kInternal), "INTERNAL");
  EXPECT_STREQ(CodeName(static_cast<Code>(99)), "UNKNOWN");
}

}  // namespace
}  // namespace kvferry
