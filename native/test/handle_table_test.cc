#include "engine/handle_table.h"

#include <gtest/gtest.h>

#include <mutex>
#include <set>
#include <vector>

namespace kvferry {
namespace {

class HandleTableTest : public ::testing::Test {
 protected:
  HandleTableTest()
      : table_([this](uint64_t h) {
          std::lock_guard<std::mutex> lock(mu_);
          released_.push_back(h);
        }) {}

  std::vector<uint64_t> released() {
    std::lock_guard<std::mutex> lock(mu_);
    return released_;
  }

  std::mutex mu_;
  std::vector<uint64_t> released_;
  HandleTable table_;
};

TEST_F(HandleTableTest, IssuesDistinctNonZeroIds) {
  std::set<uint64_t> seen;
  for (int i = 0; i < 10000; ++i) {
    uint64_t h = 0;
    ASSERT_TRUE(table_.Expose(0, 64, Access::kWrite, &h).ok());
    ASSERT_NE(h, 0u);
    ASSERT_TRUE(seen.insert(h).second) << "handle reused";
  }
  // Ids are spread over the whole 64-bit space, not a counter.
  EXPECT_GT(*seen.rbegin(), 1ull << 60);
}

TEST_F(HandleTableTest, AcquireMapsIntoTheExposedRangeAndChecksBounds) {
  uint64_t h = 0;
  ASSERT_TRUE(table_.Expose(4096, 1000, Access::kWrite, &h).ok());
  std::vector<PoolExtent> at;
  ASSERT_TRUE(table_.Acquire(h, Access::kWrite, 10, 990, &at).ok());
  ASSERT_EQ(at.size(), 1u);
  EXPECT_EQ(at[0].offset, 4106u);
  EXPECT_EQ(at[0].size, 990u);
  table_.ReleaseAccess(h);
  ASSERT_TRUE(table_.Acquire(h, Access::kWrite, 1000, 0, &at).ok());  // empty range at the end
  table_.ReleaseAccess(h);

  EXPECT_EQ(table_.Acquire(h, Access::kWrite, 10, 991, &at).code(), Code::kOutOfRange);
  EXPECT_EQ(table_.Acquire(h, Access::kWrite, 1001, 0, &at).code(), Code::kOutOfRange);
  EXPECT_EQ(table_.Acquire(h, Access::kWrite, UINT64_MAX, 1, &at).code(), Code::kOutOfRange);
  EXPECT_EQ(table_.Acquire(h, Access::kWrite, UINT64_MAX, 0, &at).code(), Code::kOutOfRange);
  EXPECT_EQ(table_.Acquire(h, Access::kWrite, 1, UINT64_MAX, &at).code(), Code::kOutOfRange);
  EXPECT_EQ(table_.Acquire(h, Access::kWrite, 8, UINT64_MAX - 7, &at).code(), Code::kOutOfRange);
  EXPECT_EQ(table_.Acquire(h ^ 1, Access::kWrite, 0, 1, &at).code(), Code::kNotFound);
  EXPECT_EQ(table_.Acquire(0, Access::kWrite, 0, 1, &at).code(), Code::kNotFound);
}

TEST_F(HandleTableTest, AScatterHandleMapsRangesAcrossItsExtentsInOrder) {
  // Three extents seen as one 300-byte range: [1000,+100) [5000,+0) [200,+200).
  uint64_t h = 0;
  ASSERT_TRUE(table_.Expose({{1000, 100}, {5000, 0}, {200, 200}}, Access::kRead, &h).ok());
  std::vector<PoolExtent> at;
  auto pieces = [&](uint64_t offset, uint64_t length) {
    EXPECT_TRUE(table_.Acquire(h, Access::kRead, offset, length, &at).ok());
    table_.ReleaseAccess(h);
    std::vector<std::pair<uint64_t, uint64_t>> out;
    for (const PoolExtent& p : at) out.emplace_back(p.offset, p.size);
    return out;
  };
  using V = std::vector<std::pair<uint64_t, uint64_t>>;
  EXPECT_EQ(pieces(0, 300), (V{{1000, 100}, {5000, 0}, {200, 200}}));
  EXPECT_EQ(pieces(10, 20), (V{{1010, 20}}));
  EXPECT_EQ(pieces(90, 20), (V{{1090, 10}, {5000, 0}, {200, 10}}));
  EXPECT_EQ(pieces(100, 50), (V{{200, 50}}));
  EXPECT_EQ(pieces(299, 1), (V{{399, 1}}));
  EXPECT_EQ(pieces(300, 0), (V{{400, 0}}));
  EXPECT_EQ(table_.Acquire(h, Access::kRead, 250, 51, &at).code(), Code::kOutOfRange);
  EXPECT_EQ(table_.Acquire(h, Access::kRead, UINT64_MAX, 2, &at).code(), Code::kOutOfRange);

  // Bounds on the extents themselves.
  EXPECT_EQ(table_.Expose(std::vector<PoolExtent>{}, Access::kRead, &h).code(), Code::kInvalidArgument);
  EXPECT_EQ(table_.Expose({{0, UINT64_MAX}, {0, 1}}, Access::kRead, &h).code(), Code::kOutOfRange);
  EXPECT_EQ(table_.Expose(std::vector<PoolExtent>(HandleTable::kMaxExtents + 1, PoolExtent{0, 1}), Access::kRead, &h).code(),
            Code::kInvalidArgument);
}

TEST_F(HandleTableTest, RevokeWithoutAccessReleasesAtOnceExactlyOnce) {
  uint64_t h = 0;
  ASSERT_TRUE(table_.Expose(0, 64, Access::kWrite, &h).ok());
  ASSERT_TRUE(table_.Revoke(h).ok());
  EXPECT_EQ(released(), std::vector<uint64_t>{h});
  EXPECT_EQ(table_.Revoke(h).code(), Code::kNotFound);
  std::vector<PoolExtent> at;
  EXPECT_EQ(table_.Acquire(h, Access::kWrite, 0, 1, &at).code(), Code::kNotFound);
  EXPECT_EQ(released().size(), 1u);
  EXPECT_EQ(table_.size(), 0u);
}

TEST_F(HandleTableTest, RevokeWithAccessInFlightReleasesWhenTheLastAccessEnds) {
  uint64_t h = 0, other = 0;
  ASSERT_TRUE(table_.Expose(0, 64, Access::kWrite, &h).ok());
  ASSERT_TRUE(table_.Expose(64, 64, Access::kWrite, &other).ok());
  std::vector<PoolExtent> at;
  ASSERT_TRUE(table_.Acquire(h, Access::kWrite, 0, 8, &at).ok());
  ASSERT_TRUE(table_.Acquire(h, Access::kWrite, 8, 8, &at).ok());

  ASSERT_TRUE(table_.Revoke(h).ok());
  EXPECT_TRUE(released().empty());
  // New accesses are refused at once, even though old ones are still running.
  EXPECT_EQ(table_.Acquire(h, Access::kWrite, 0, 8, &at).code(), Code::kNotFound);
  EXPECT_EQ(table_.Revoke(h).code(), Code::kNotFound);

  table_.ReleaseAccess(h);
  EXPECT_TRUE(released().empty());
  table_.ReleaseAccess(h);
  EXPECT_EQ(released(), std::vector<uint64_t>{h});
  table_.ReleaseAccess(h);  // a stray release changes nothing
  EXPECT_EQ(released().size(), 1u);
  // The other handle is untouched.
  EXPECT_TRUE(table_.Acquire(other, Access::kWrite, 0, 64, &at).ok());
  table_.ReleaseAccess(other);
  EXPECT_EQ(table_.size(), 1u);
}

TEST_F(HandleTableTest, AHandleServesOnlyTheDirectionItWasExposedFor) {
  uint64_t lent = 0, inbox = 0;
  ASSERT_TRUE(table_.Expose(0, 64, Access::kRead, &lent).ok());
  ASSERT_TRUE(table_.Expose(64, 64, Access::kWrite, &inbox).ok());
  std::vector<PoolExtent> at;
  Status s = table_.Acquire(lent, Access::kWrite, 0, 8, &at);
  EXPECT_EQ(s.code(), Code::kPermissionDenied) << s.ToString();
  EXPECT_NE(s.message().find("not writable"), std::string::npos) << s.message();
  s = table_.Acquire(inbox, Access::kRead, 0, 8, &at);
  EXPECT_EQ(s.code(), Code::kPermissionDenied) << s.ToString();
  EXPECT_NE(s.message().find("not readable"), std::string::npos) << s.message();
  // A refused access holds nothing: revoking releases at once.
  ASSERT_TRUE(table_.Revoke(lent).ok());
  EXPECT_EQ(released(), std::vector<uint64_t>{lent});

  ASSERT_TRUE(table_.Acquire(inbox, Access::kWrite, 0, 8, &at).ok());
  ASSERT_EQ(at.size(), 1u);
  EXPECT_EQ(at[0].offset, 64u);
  table_.ReleaseAccess(inbox);
  uint64_t bad = 0;
  EXPECT_EQ(table_.Expose(0, 64, static_cast<Access>(3), &bad).code(), Code::kInvalidArgument);
  EXPECT_EQ(table_.Expose(0, 64, static_cast<Access>(0), &bad).code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace kvferry
