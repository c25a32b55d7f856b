// An op's local bytes as the transports see them: pool pieces in op order (the op's gather,
// or its single range), pieces adjacent in the pool merged, each with the op offset where it
// ends; and the pieces behind any range of the op. Shared by every transport (tcp/, ucx/).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/engine.h"

namespace kvferry {

class LocalPieces {
 public:
  LocalPieces() = default;

  /** The pieces of `spec` (its gather is moved out: the pieces replace it). */
  explicit LocalPieces(TransferOp* spec) {
    if (spec->gather.empty()) spec->gather.push_back({spec->local_offset, spec->length});
    uint64_t end = 0;
    for (const PoolExtent& e : spec->gather) {
      end += e.size;
      if (!pieces_.empty() && pieces_.back().offset + pieces_.back().size == e.offset) {
        pieces_.back().size += e.size;  // adjacent in the pool: one piece
        ends_.back() = end;
      } else if (e.size > 0) {
        pieces_.push_back(e);
        ends_.push_back(end);
      }
    }
    spec->gather.clear();
  }

  /** Calls fn(pool offset, bytes) for each piece of the op's range [at, at + length), in order. */
  template <typename Fn>
  void ForRange(uint64_t at, uint64_t length, Fn&& fn) const {
    for (size_t i = Index(at); length > 0 && i < pieces_.size(); ++i) {
      const uint64_t within = at - (ends_[i] - pieces_[i].size);
      const uint64_t n = std::min(length, pieces_[i].size - within);
      fn(pieces_[i].offset + within, n);
      at += n;
      length -= n;
    }
  }

  /** How many bytes from op offset `at` to the end of the piece holding it (0 past the end). */
  uint64_t RestOfPiece(uint64_t at) const {
    const size_t i = Index(at);
    return i < pieces_.size() ? ends_[i] - at : 0;
  }

 private:
  size_t Index(uint64_t at) const {
    return static_cast<size_t>(std::upper_bound(ends_.begin(), ends_.end(), at) - ends_.begin());
  }

  std::vector<PoolExtent> pieces_;
  std::vector<uint64_t> ends_;  // op offset where pieces_[i] ends
};

}  // namespace kvferry
