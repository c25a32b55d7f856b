#include "engine/crypto/random.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

namespace kvferry {
namespace crypto {

Status RandomBytes(void* out, size_t n) {
  auto* p = static_cast<uint8_t*>(out);
  while (n > 0) {
    // Blocks only until the kernel's pool is initialised (early boot); never short of
    // that for requests of at most 256 bytes, but loop anyway.
    ssize_t r = getrandom(p, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Status(Code::kInternal, std::string("getrandom: ") + std::strerror(errno));
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return Status::Ok();
}

}  // namespace crypto
}  // namespace kvferry
