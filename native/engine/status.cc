#include "engine/status.h"

namespace kvferry {

const char* CodeName(Code code) {
  switch (code) {
    case Code::kOk:
      return "OK";
    case Code::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case Code::kNotFound:
      return "NOT_FOUND";
    case Code::kOutOfRange:
      return "OUT_OF_RANGE";
    case Code::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case Code::kUnavailable:
      return "UNAVAILABLE";
    case Code::kCancelled:
      return "CANCELLED";
    case Code::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case Code::kPermissionDenied:
      return "PERMISSION_DENIED";
    case Code::kNotSupported:
      return "NOT_SUPPORTED";
    case Code::kInternal:
      return "INTERNAL";
  }
  // A value outside the enum (e.g. decoded from a corrupt frame before validation).
  return "UNKNOWN";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out = CodeName(code_);
  if (!message_.empty()) {
    out += ": ";
    out += message_;
  }
  return out;
}

}  // namespace kvferry
