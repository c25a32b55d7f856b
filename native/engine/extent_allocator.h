// ExtentAllocator: a pure bookkeeping allocator over the byte range [0, capacity).
//
// Contract
// - Every extent starts at a multiple of kAlignment and spans a whole number of
//   kAlignment-byte units; `size` is rounded up to that.
// - Allocate(0) is allowed and consumes one unit, so every live allocation has a unique
//   offset and Free works the same for it.
// - Best fit: the smallest free extent that holds the request, lowest offset on ties.
// - AllocateScattered serves a request no single free extent holds with several live
//   allocations whose sizes add up to exactly the rounded request (no extra rounding).
//   Free coalesces with both neighbours at once, so free extents never touch.
// - Not thread-safe; MemoryPool serialises access with its mutex.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "engine/status.h"

namespace kvferry {

class ExtentAllocator {
 public:
  static constexpr uint64_t kAlignment = 64;

  struct Stats {
    uint64_t capacity = 0;
    uint64_t used = 0;
    uint64_t free_extents = 0;
    uint64_t largest_free = 0;
    uint64_t allocations = 0;
  };

  /** One live allocation: where it starts and its (rounded) size. */
  struct Extent {
    uint64_t offset = 0;
    uint64_t size = 0;
  };

  /** Manages [0, capacity rounded down to kAlignment). */
  explicit ExtentAllocator(uint64_t capacity);

  ExtentAllocator(const ExtentAllocator&) = delete;
  ExtentAllocator& operator=(const ExtentAllocator&) = delete;

  /** kResourceExhausted when no free extent holds the rounded size. */
  [[nodiscard]] Status Allocate(uint64_t size, uint64_t* offset);
  /**
   * `size` bytes (rounded) as one or more live allocations, appended to `*out` in order
   * (the request's first bytes go to the first extent). One extent, best fit, when one
   * free extent holds it; otherwise the largest free extents whole and the rest best fit,
   * which needs the fewest extents possible. The extents' sizes add up to exactly the
   * rounded size. Each is freed on its own (Free of its offset). kResourceExhausted, with
   * nothing allocated, when fewer bytes are free or more than `max_extents` would be needed.
   */
  [[nodiscard]] Status AllocateScattered(uint64_t size, size_t max_extents, std::vector<Extent>* out);
  /** kInvalidArgument unless `offset` is the start of a live allocation. */
  [[nodiscard]] Status Free(uint64_t offset);

  /** Size (rounded) of the live allocation starting at `offset`, or 0 if there is none. */
  uint64_t AllocationSize(uint64_t offset) const;

  Stats stats() const;
  uint64_t capacity() const { return capacity_; }

  /**
   * For tests: free and live extents are aligned, do not overlap, tile [0, capacity)
   * exactly, free neighbours are coalesced, and the indexes and counters agree.
   */
  [[nodiscard]] Status CheckInvariants() const;

 private:
  void InsertFree(uint64_t offset, uint64_t size);
  void EraseFree(std::map<uint64_t, uint64_t>::iterator it);
  /** Makes the first `size` bytes of the free extent `fit` (by size) a live allocation. */
  uint64_t TakeFree(std::set<std::pair<uint64_t, uint64_t>>::iterator fit, uint64_t size);

  uint64_t capacity_;
  uint64_t used_ = 0;
  // Free extents by offset (for coalescing) and by (size, offset) (for best fit).
  std::map<uint64_t, uint64_t> free_by_offset_;
  std::set<std::pair<uint64_t, uint64_t>> free_by_size_;
  // Live allocations: offset → rounded size.
  std::map<uint64_t, uint64_t> live_;
};

}  // namespace kvferry
