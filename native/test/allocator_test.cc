#include "engine/extent_allocator.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
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

// A pool of `holes` free extents of `hole` units each, separated by one-unit allocations.
ExtentAllocator* Fragmented(std::unique_ptr<ExtentAllocator>* keep, uint64_t holes, uint64_t hole) {
  *keep = std::make_unique<ExtentAllocator>(holes * (hole + 1) * kUnit);
  ExtentAllocator* a = keep->get();
  std::vector<uint64_t> gaps;
  for (uint64_t i = 0; i < holes; ++i) {
    uint64_t gap = 0, sep = 0;
    EXPECT_TRUE(a->Allocate(hole * kUnit, &gap).ok());
    EXPECT_TRUE(a->Allocate(kUnit, &sep).ok());
    gaps.push_back(gap);
  }
  for (uint64_t g : gaps) EXPECT_TRUE(a->Free(g).ok());
  return a;
}

TEST(ExtentAllocator, ScatteredAllocationIsOneBestFitExtentWhenOneHoldsIt) {
  ExtentAllocator a(16 * kUnit);
  std::vector<ExtentAllocator::Extent> got;
  ASSERT_TRUE(a.AllocateScattered(100, 8, &got).ok());
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].size, 2 * kUnit);
  EXPECT_EQ(a.AllocationSize(got[0].offset), 2 * kUnit);
  EXPECT_TRUE(a.CheckInvariants().ok());
}

TEST(ExtentAllocator, ScatteredAllocationFillsSmallHolesWhenNoSingleExtentHoldsTheRequest) {
  std::unique_ptr<ExtentAllocator> keep;
  ExtentAllocator* a = Fragmented(&keep, 8, 4);  // 8 holes of 4 units: 32 units free
  uint64_t one = 0;
  EXPECT_EQ(a->Allocate(5 * kUnit, &one).code(), Code::kResourceExhausted);
  std::vector<ExtentAllocator::Extent> got;
  // 30 units and a byte: 31 units, the whole free space but one unit.
  ASSERT_TRUE(a->AllocateScattered(30 * kUnit + 1, 100, &got).ok());
  ASSERT_EQ(got.size(), 8u);
  uint64_t total = 0;
  for (const auto& e : got) {
    EXPECT_EQ(a->AllocationSize(e.offset), e.size);
    total += e.size;
  }
  EXPECT_EQ(total, 31 * kUnit) << "exactly the rounded size, nothing more";
  EXPECT_EQ(got.back().size, 3 * kUnit) << "the last piece is the rest";
  EXPECT_EQ(a->stats().used, 8 * kUnit + 31 * kUnit);
  EXPECT_TRUE(a->CheckInvariants().ok());
  // Each piece is freed on its own, and everything coalesces back.
  for (const auto& e : got) ASSERT_TRUE(a->Free(e.offset).ok());
  EXPECT_EQ(a->stats().used, 8 * kUnit);
  EXPECT_EQ(a->stats().free_extents, 8u);
  EXPECT_TRUE(a->CheckInvariants().ok());
}

TEST(ExtentAllocator, ScatteredAllocationTakesTheFewestExtentsLargestFirstAndTheLastBestFit) {
  // Holes of 1, 2, 3, 6 and 9 units (separated by live units).
  ExtentAllocator a(64 * kUnit);
  std::vector<uint64_t> holes;
  for (uint64_t units : {1, 2, 3, 6, 9}) {
    uint64_t h = 0, sep = 0;
    ASSERT_TRUE(a.Allocate(units * kUnit, &h).ok());
    ASSERT_TRUE(a.Allocate(kUnit, &sep).ok());
    holes.push_back(h);
  }
  uint64_t rest = 0;
  ASSERT_TRUE(a.Allocate(a.capacity() - a.stats().used, &rest).ok());
  for (uint64_t h : holes) ASSERT_TRUE(a.Free(h).ok());
  std::vector<ExtentAllocator::Extent> got;
  // 11 units: the 9-unit hole whole, then 2 units best fit (the 2-unit hole, not the 6).
  ASSERT_TRUE(a.AllocateScattered(11 * kUnit, 100, &got).ok());
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].offset, holes[4]);
  EXPECT_EQ(got[0].size, 9 * kUnit);
  EXPECT_EQ(got[1].offset, holes[1]);
  EXPECT_EQ(got[1].size, 2 * kUnit);
  EXPECT_TRUE(a.CheckInvariants().ok());
}

TEST(ExtentAllocator, ScatteredAllocationRefusesWithoutAllocatingAnything) {
  std::unique_ptr<ExtentAllocator> keep;
  ExtentAllocator* a = Fragmented(&keep, 8, 4);
  const auto before = a->stats();
  std::vector<ExtentAllocator::Extent> got;
  // More than is free.
  EXPECT_EQ(a->AllocateScattered(32 * kUnit + 1, 100, &got).code(), Code::kResourceExhausted);
  // Free, but only in more extents than allowed.
  EXPECT_EQ(a->AllocateScattered(13 * kUnit, 3, &got).code(), Code::kResourceExhausted);
  EXPECT_EQ(a->AllocateScattered(UINT64_MAX, 100, &got).code(), Code::kResourceExhausted);
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(a->stats().used, before.used);
  EXPECT_EQ(a->stats().free_extents, before.free_extents);
  ASSERT_TRUE(a->AllocateScattered(12 * kUnit, 3, &got).ok());
  EXPECT_EQ(got.size(), 3u);
  EXPECT_TRUE(a->CheckInvariants().ok());
}

TEST(ExtentAllocator, ScatteredAllocationSucceedsWheneverTheFreeBytesSufficeThroughRandomOps) {
  const uint64_t capacity = 4ull << 20;
  ExtentAllocator a(capacity);
  std::mt19937_64 rng(777);
  std::vector<std::vector<ExtentAllocator::Extent>> live;
  for (int step = 0; step < 20000; ++step) {
    if (live.empty() || rng() % 100 < 55) {
      const uint64_t size = rng() % 2 ? rng() % 4096 : rng() % (256 << 10);
      const uint64_t free = a.capacity() - a.stats().used;
      std::vector<ExtentAllocator::Extent> got;
      Status s = a.AllocateScattered(size, SIZE_MAX, &got);
      ASSERT_EQ(s.ok(), Rounded(size) <= free) << "step " << step << ": " << s.ToString();
      if (s.ok()) {
        uint64_t total = 0;
        for (const auto& e : got) total += e.size;
        ASSERT_EQ(total, Rounded(size));
        live.push_back(std::move(got));
      }
    } else {
      auto it = live.begin() + static_cast<long>(rng() % live.size());
      for (const auto& e : *it) ASSERT_TRUE(a.Free(e.offset).ok());
      live.erase(it);
    }
    if (step % 64 == 0) {
      Status inv = a.CheckInvariants();
      ASSERT_TRUE(inv.ok()) << "step " << step << ": " << inv.ToString();
    }
  }
}

}  // namespace
}  // namespace kvferry
