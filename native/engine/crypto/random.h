// Unpredictable bytes from the kernel (getrandom(2)), for handshake nonces.
#pragma once

#include <cstddef>

#include "engine/status.h"

namespace kvferry {
namespace crypto {

/** Fills `out` with `n` bytes from getrandom(2); kInternal if the kernel refuses. */
[[nodiscard]] Status RandomBytes(void* out, size_t n);

}  // namespace crypto
}  // namespace kvferry
