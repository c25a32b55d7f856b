// Socket helpers shared by the TCP server and client: addresses, socket options, the
// listener, and the words for an I/O failure. The connections themselves are
// non-blocking state machines on the transport's loops (server_connection.h,
// tcp_client.h), which move their bytes themselves. Nothing here closes an fd except
// ListenTcp on failure: the connection objects own their fds.
#pragma once

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
  /** No byte moved for the I/O timeout. */
  kTimeout,
  /** Reset, shut down locally, or another socket error. */
  kError,
};

const char* IoResultText(IoResult r);

/** "host:port" or "[v6addr]:port" → parts; false when malformed or port is 0. */
bool ParseHostPort(const std::string& address, std::string* host, uint16_t* port);

/** TCP_NODELAY plus the given SO_SNDBUF/SO_RCVBUF (0 leaves kernel autotuning alone). */
void SetStreamOptions(int fd, int buffer_bytes);

/**
 * Binds and listens (SO_REUSEADDR). An empty host means every address.
 * On success `*fd` is the listening socket and `*bound_port` its port.
 */
[[nodiscard]] Status ListenTcp(const std::string& host, uint16_t port, int* fd, uint16_t* bound_port);

}  // namespace tcp
}  // namespace kvferry
