#include "engine/extent_allocator.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <random>
#include <vector>

namespace kvferry {
namespace {

constexpr uint64_t kUnit = ExtentAllocator::kAlignment;

uint64_t Rounded(uint64_t size) { return size == 0 ? kUnit : (size + kUnit - 1) / kUnit * kUnit; }

TEST(ExtentAllocator, StartsAsOneFreeExtentCoveringTheAlignedCapacity) {
  ExtentAllocator a(1000);  // rounds down to 960
  auto s = a.stats();
  EXPECT_EQ(s.capacity, 960u);
  EXPECT_EQ(s.used, 0u);
  EXPECT_EQ(s.free_extents, 1u);
  EXPECT_EQ(s.largest_free, 960u);
  EXPECT_EQ(s.allocations, 0u);
  EXPECT_TRUE(a.CheckInvariants().ok());
}

TEST(ExtentAllocator, RoundsSizesUpToWholeAlignedUnits) {
  ExtentAllocator a(1 << 20);
  uint64_t o1 = 0, o2 = 0, o3 = 0;
  ASSERT_TRUE(a.Allocate(1, &o1).ok());
  ASSERT_TRUE(a.Allocate(65, &o2).ok());
  ASSERT_TRUE(a.Allocate(64, &o3).ok());
  EXPECT_EQ(o1 % kUnit, 0u);
  EXPECT_EQ(o2 % kUnit, 0u);
  EXPECT_EQ(o3 % kUnit, 0u);
  EXPECT_EQ(a.AllocationSize(o1), 64u);
  EXPECT_EQ(a.AllocationSize(o2), 128u);
  EXPECT_EQ(a.stats().used, 64u + 128u + 64u);
}

TEST(ExtentAllocator, ZeroByteAllocationsConsumeOneUnitAndGetDistinctOffsets) {
  ExtentAllocator a(4 * kUnit);
  uint64_t o1 = 0, o2 = 0;
  ASSERT_TRUE(a.Allocate(0, &o1).ok());
  ASSERT_TRUE(a.Allocate(0, &o2).ok());
  EXPECT_NE(o1, o2);
  EXPECT_EQ(a.stats().used, 2 * kUnit);
  EXPECT_TRUE(a.Free(o1).ok());
  EXPECT_TRUE(a.Free(o2).ok());
  EXPECT_EQ(a.stats().used, 0u);
}

TEST(ExtentAllocator, RefusesWhatDoesNotFitWithResourceExhausted) {
  ExtentAllocator a(4 * kUnit);
  uint64_t o = 0;
  EXPECT_EQ(a.Allocate(5 * kUnit, &o).code(), Code::kResourceExhausted);
  EXPECT_EQ(a.Allocate(UINT64_MAX, &o).code(), Code::kResourceExhausted);
  EXPECT_EQ(a.Allocate(UINT64_MAX - 10, &o).code(), Code::kResourceExhausted);
  ASSERT_TRUE(a.Allocate(4 * kUnit, &o).ok());
  EXPECT_EQ(a.Allocate(0, &o).code(), Code::kResourceExhausted);
  EXPECT_TRUE(a.CheckInvariants().ok());
}

TEST(ExtentAllocator, RefusesToFreeAnOffsetThatIsNotALiveAllocation) {
  ExtentAllocator a(16 * kUnit);
  uint64_t o = 0;
  ASSERT_TRUE(a.Allocate(2 * kUnit, &o).ok());
  EXPECT_EQ(a.Free(o + kUnit).code(), Code::kInvalidArgument);  // inside, not the start
  EXPECT_EQ(a.Free(12345).code(), Code::kInvalidArgument);
  EXPECT_EQ(a.Free(UINT64_MAX).code(), Code::kInvalidArgument);
  ASSERT_TRUE(a.Free(o).ok());
  EXPECT_EQ(a.Free(o).code(), Code::kInvalidArgument);  // double free
  EXPECT_TRUE(a.CheckInvariants().ok());
}

TEST(ExtentAllocator, CoalescesWithBothNeighboursWhenTheMiddleIsFreedLast) {
  ExtentAllocator a(3 * kUnit);
  uint64_t x = 0, y = 0, z = 0;
  ASSERT_TRUE(a.Allocate(kUnit, &x).ok());
  ASSERT_TRUE(a.Allocate(kUnit, &y).ok());
  ASSERT_TRUE(a.Allocate(kUnit, &z).ok());
  ASSERT_TRUE(a.Free(x).ok());
  ASSERT_TRUE(a.Free(z).ok());
  EXPECT_EQ(a.stats().free_extents, 2u);
  ASSERT_TRUE(a.Free(y).ok());
  EXPECT_EQ(a.stats().free_extents, 1u);
  EXPECT_EQ(a.stats().largest_free, 3 * kUnit);
  EXPECT_TRUE(a.CheckInvariants().ok());
}

TEST(ExtentAllocator, PicksTheSmallestFreeExtentThatFits) {
  ExtentAllocator a(64 * kUnit);
  // Carve holes of 8, 2 and 4 units separated by live guards.
  std::vector<uint64_t> o(7);
  const uint64_t sizes[] = {8, 1, 2, 1, 4, 1};
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(a.Allocate(sizes[i] * kUnit, &o[i]).ok());
  ASSERT_TRUE(a.Free(o[0]).ok());
  ASSERT_TRUE(a.Free(o[2]).ok());
  ASSERT_TRUE(a.Free(o[4]).ok());
  uint64_t got = 0;
  ASSERT_TRUE(a.Allocate(2 * kUnit, &got).ok());
  EXPECT_EQ(got, o[2]);
  ASSERT_TRUE(a.Allocate(3 * kUnit, &got).ok());
  EXPECT_EQ(got, o[4]);
  EXPECT_TRUE(a.CheckInvariants().ok());
}

TEST(ExtentAllocator, KeepsEveryInvariantThroughOneHundredThousandRandomOps) {
  const uint64_t capacity = 64ull << 20;
  ExtentAllocator a(capacity);
  std::mt19937_64 rng(20240607);
  std::map<uint64_t, uint64_t> live;  // offset → rounded size, our own model
  uint64_t used = 0;
  int times_empty = 0;
  for (int step = 0; step < 100000; ++step) {
    // Alternate filling and draining phases, so the pool is both crowded and, often,
    // emptied all the way (where it must have coalesced back into one extent).
    const uint64_t alloc_percent = (step / 5000) % 2 == 0 ? 65 : 35;
    const bool allocate = live.empty() || rng() % 100 < alloc_percent;
    if (allocate) {
      // Mostly small, sometimes large, sometimes zero.
      uint64_t size;
      switch (rng() % 4) {
        case 0: size = rng() % 256; break;
        case 1: size = rng() % 8192; break;
        case 2: size = rng() % (256 << 10); break;
        default: size = rng() % (4 << 20); break;
      }
      uint64_t off = 0;
      Status s = a.Allocate(size, &off);
      if (s.ok()) {
        ASSERT_EQ(off % kUnit, 0u);
        const uint64_t r = Rounded(size);
        ASSERT_LE(off + r, a.capacity());
        // No overlap with any live allocation of the model.
        auto next = live.lower_bound(off);
        if (next != live.end()) {
          ASSERT_LE(off + r, next->first) << "overlaps the next allocation";
        }
        if (next != live.begin()) {
          auto prev = std::prev(next);
          ASSERT_LE(prev->first + prev->second, off) << "overlaps the previous allocation";
        }
        live.emplace(off, r);
        used += r;
      } else {
        ASSERT_EQ(s.code(), Code::kResourceExhausted);
        ASSERT_LT(a.stats().largest_free, Rounded(size));
      }
    } else {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      ASSERT_TRUE(a.Free(it->first).ok());
      used -= it->second;
      live.erase(it);
    }
    if (live.empty()) {
      ++times_empty;
      ASSERT_EQ(a.stats().free_extents, 1u) << "step " << step << ": not coalesced after freeing everything";
      ASSERT_EQ(a.stats().largest_free, a.capacity());
    }
    ASSERT_EQ(a.stats().used, used);
    ASSERT_EQ(a.stats().allocations, live.size());
    Status inv = a.CheckInvariants();
    ASSERT_TRUE(inv.ok()) << "step " << step << ": " << inv.ToString();
  }
  EXPECT_GT(times_empty, 100);  // the draining phases really drained
  for (auto& entry : live) ASSERT_TRUE(a.Free(entry.first).ok());
  auto s = a.stats();
  EXPECT_EQ(s.used, 0u);
  EXPECT_EQ(s.free_extents, 1u);
  EXPECT_EQ(s.largest_free, capacity);
  EXPECT_TRUE(a.CheckInvariants().ok());
}

}  // namespace
}  // namespace kvferry
