// Blocking socket helpers shared by the TCP server and client.
//
// Every call here works on a blocking fd whose SO_RCVTIMEO/SO_SNDTIMEO bound how long one
// system call may wait, so a stalled peer shows up as IoResult::kTimeout. The transfer
// calls optionally take an IoDeadline, which bounds the whole call (all its system
// calls together), so a peer that trickles bytes cannot stretch it forever. Nothing here
// closes an fd: the connection objects own their fds (see tcp_server.h, tcp_client.h).
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/status.h"

namespace kvferry {
namespace tcp {

enum class IoResult {
  kOk,
  /** The peer closed the connection (EOF) before the bytes were complete. */
  kClosed,
  /** SO_RCVTIMEO/SO_SNDTIMEO expired with no progress. */
  kTimeout,
  /** Reset, shut down locally, or another socket error. */
  kError,
};

const char* IoResultText(IoResult r);

/**
 * An absolute deadline for a run of blocking calls on one fd whose SO_RCVTIMEO and
 * SO_SNDTIMEO are `timeout_ms` while idle. Before each system call, Arm() shrinks those
 * timeouts to the time left, so no call can wait past the deadline (by more than a few
 * milliseconds of slack); it only touches the socket when the call could otherwise run
 * past it, so a fast exchange costs no extra system call. Relax() puts the idle timeouts
 * back. Not thread-safe: one per fd, used by the thread that does the I/O.
 */
class IoDeadline {
 public:
  IoDeadline(int fd, int timeout_ms);
  /** A new period: the calls that follow must be done within timeout_ms from now. */
  void Start();
  /** Before one blocking call: false when the time is up, else bounds the call by it. */
  bool Arm();
  /** Back to the idle timeouts (timeout_ms per call); a no-op unless Arm shrank them. */
  void Relax();

 private:
  int fd_;
  std::chrono::microseconds timeout_;
  std::chrono::microseconds slack_;
  std::chrono::microseconds armed_;  // what SO_RCVTIMEO/SO_SNDTIMEO are set to now
  std::chrono::steady_clock::time_point at_;
};

/**
 * Receives exactly `n` bytes; `*got` says how many arrived even on failure. With a
 * deadline, kTimeout once it passes, however the bytes trickle in.
 */
IoResult RecvFull(int fd, void* buf, size_t n, size_t* got, IoDeadline* deadline = nullptr);

/** Fills every buffer of `iov` in order (advancing it in place), as few calls as the kernel allows. */
IoResult RecvFullV(int fd, struct iovec* iov, int iovcnt, IoDeadline* deadline = nullptr);

/**
 * Receives exactly `n` bytes into `buf` and, in the same system calls, up to `spill_cap`
 * bytes that follow them into `spill` (whatever had already arrived; it never waits for
 * them). `*spilled` says how many landed there. A frame's payload and the start of the
 * next frame's header usually come in one call instead of two.
 */
IoResult RecvFullAndPeek(int fd, void* buf, size_t n, void* spill, size_t spill_cap, size_t* spilled,
                         IoDeadline* deadline = nullptr);

/** One recv of up to `n` bytes (retrying EINTR); kOk when at least one byte arrived. */
IoResult RecvSome(int fd, void* buf, size_t n, size_t* got);

/**
 * Sends every byte described by `iov` (advancing it in place) with MSG_NOSIGNAL, as few
 * sendmsg calls as the kernel allows (any number of iovecs: IOV_MAX per call).
 */
IoResult SendFull(int fd, struct iovec* iov, int iovcnt, IoDeadline* deadline = nullptr);

/** "host:port" or "[v6addr]:port" → parts; false when malformed or port is 0. */
bool ParseHostPort(const std::string& address, std::string* host, uint16_t* port);

/** Applies SO_RCVTIMEO and SO_SNDTIMEO. */
void SetIoTimeouts(int fd, int timeout_ms);
/** TCP_NODELAY plus the given SO_SNDBUF/SO_RCVBUF (0 leaves kernel autotuning alone). */
void SetStreamOptions(int fd, int buffer_bytes);

/**
 * Binds and listens (SO_REUSEADDR). An empty host means every address.
 * On success `*fd` is the listening socket and `*bound_port` its port.
 */
[[nodiscard]] Status ListenTcp(const std::string& host, uint16_t port, int* fd, uint16_t* bound_port);

/** Compares in time that depends only on `expected`'s length. */
bool ConstantTimeEquals(const std::string& expected, const std::string& actual);

}  // namespace tcp
}  // namespace kvferry
