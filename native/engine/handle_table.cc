#include "engine/handle_table.h"

#include <string>
#include <utility>

namespace kvferry {

HandleTable::HandleTable(ReleasedFn on_released) : on_released_(std::move(on_released)) {}

uint64_t HandleTable::NextIdLocked() {
  // Handles are capabilities handed to peers, so they come straight from the OS
  // entropy source behind std::random_device (getrandom on Linux) rather than from a
  // seeded PRNG, whose later outputs a peer could predict from the handles it has seen.
  for (;;) {
    uint64_t id = (static_cast<uint64_t>(random_()) << 32) | static_cast<uint64_t>(random_());
    if (id != 0 && entries_.count(id) == 0) return id;
  }
}

Status HandleTable::Expose(uint64_t offset, uint64_t length, uint64_t* handle) {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t id = NextIdLocked();
  entries_.emplace(id, Entry{offset, length, 0, false});
  *handle = id;
  return Status::Ok();
}

Status HandleTable::Acquire(uint64_t handle, uint64_t offset, uint64_t length, uint64_t* pool_offset) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(handle);
  if (it == entries_.end() || it->second.revoked) {
    // Unknown and revoked look the same to a peer.
    return Status(Code::kNotFound, "no such handle");
  }
  Entry& e = it->second;
  if (offset > e.length || length > e.length - offset) {
    return Status(Code::kOutOfRange, "range [" + std::to_string(offset) + ", +" + std::to_string(length) +
                                         ") exceeds the handle's " + std::to_string(e.length) + " bytes");
  }
  ++e.in_flight;
  *pool_offset = e.offset + offset;
  return Status::Ok();
}

void HandleTable::ReleaseAccess(uint64_t handle) {
  bool released = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(handle);
    if (it == entries_.end() || it->second.in_flight == 0) return;  // caller bug; stay safe
    if (--it->second.in_flight == 0 && it->second.revoked) {
      entries_.erase(it);
      released = true;
    }
  }
  if (released && on_released_) on_released_(handle);
}

Status HandleTable::Revoke(uint64_t handle) {
  bool released = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(handle);
    if (it == entries_.end() || it->second.revoked) return Status(Code::kNotFound, "no such handle");
    it->second.revoked = true;
    if (it->second.in_flight == 0) {
      entries_.erase(it);
      released = true;
    }
  }
  if (released && on_released_) on_released_(handle);
  return Status::Ok();
}

size_t HandleTable::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

}  // namespace kvferry
