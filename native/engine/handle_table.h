// HandleTable: the capabilities a peer needs to touch this engine's pool.
//
// A handle is an unguessable, non-zero 64-bit id naming a range of bytes in the pool —
// one extent, or several extents seen as one range in the order given (a scatter handle:
// a whole batch of entries, each in its own extent, behind one id) — for one direction
// of access (Access::kRead or kWrite). Incoming requests bracket every access with Acquire/ReleaseAccess; Revoke
// refuses new accesses at once and reports the handle released (through the callback
// given at construction) exactly once, as soon as no access is in flight: immediately if
// none is, else when the last ReleaseAccess returns. After that the id is forgotten.
//
// Thread-safe. The release callback runs on the thread that made the handle idle
// (Revoke's caller, or the I/O loop thread whose connection ends the last access), outside the table's
// lock, so it may call back into the table.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <array>
#include <unordered_map>
#include <vector>

#include "engine/engine.h"
#include "engine/status.h"

namespace kvferry {

class HandleTable {
 public:
  using ReleasedFn = std::function<void(uint64_t handle)>;

  explicit HandleTable(ReleasedFn on_released);

  HandleTable(const HandleTable&) = delete;
  HandleTable& operator=(const HandleTable&) = delete;

  /** Most extents one handle may span. */
  static constexpr size_t kMaxExtents = 1 << 20;

  /**
   * Registers a range under a fresh id, accessible in the direction `access` only. The
   * caller has checked the range against the pool and `access` (kRead or kWrite).
   */
  [[nodiscard]] Status Expose(uint64_t offset, uint64_t length, Access access, uint64_t* handle);
  /**
   * The same for the concatenation of `extents` (1 to kMaxExtents of them; the caller has
   * checked each against the pool and that their sizes add up without overflow).
   */
  [[nodiscard]] Status Expose(std::vector<PoolExtent> extents, Access access, uint64_t* handle);

  /**
   * Starts an access to [offset, offset+length) of the handle's range; on success
   * `*pieces` holds (replacing what it held) where those bytes lie in the pool, in
   * order — one piece unless the range crosses extents; at least one, maybe empty — and
   * the caller must call ReleaseAccess(handle) when done. kNotFound for an unknown or
   * revoked handle, kPermissionDenied when the handle was not exposed for `access` (a
   * WRITE to a handle lent for reading, or the reverse), kOutOfRange when the range does
   * not fit the handle (overflow-safe).
   */
  [[nodiscard]] Status Acquire(uint64_t handle, Access access, uint64_t offset, uint64_t length,
                               std::vector<PoolExtent>* pieces);
  void ReleaseAccess(uint64_t handle);

  /** kNotFound for an unknown or already revoked handle. */
  [[nodiscard]] Status Revoke(uint64_t handle);

  /** Handles not yet released (live or revoked with accesses in flight). */
  size_t size() const;

 private:
  struct Entry {
    std::vector<PoolExtent> extents;
    // ends[i]: the handle offset where extents[i] ends (ascending; the last is length).
    std::vector<uint64_t> ends;
    uint64_t length = 0;
    Access access = Access::kRead;
    uint64_t in_flight = 0;
    bool revoked = false;
  };

  uint64_t NextIdLocked();

  const ReleasedFn on_released_;
  mutable std::mutex mu_;
  // Entropy from getrandom(2), fetched a page at a time (one syscall per 512 handles);
  // guarded by mu_.
  std::array<uint64_t, 512> entropy_{};
  size_t entropy_left_ = 0;
  std::unordered_map<uint64_t, Entry> entries_;
};

}  // namespace kvferry
