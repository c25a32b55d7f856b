// Status: the one error convention of the native engine.
#pragma once

#include <string>
#include <utility>

namespace kvferry {

enum class Code : int {
  kOk = 0,
  kInvalidArgument = 1,
  kNotFound = 2,
  kOutOfRange = 3,
  kResourceExhausted = 4,
  kUnavailable = 5,
  kCancelled = 6,
  kDeadlineExceeded = 7,
  kPermissionDenied = 8,
  kNotSupported = 9,
  kInternal = 10,
};

const char* CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

}  // namespace kvferry
