// The local path's door: a Unix-domain socket on which clients of this node receive the
// pool's memfd (SCM_RIGHTS) after the kernel vouches for who they are (SO_PEERCRED).
//
// One short exchange per connection, then the daemon closes it: the client sends nothing;
// the server sends one line of JSON — `{"ok":true,...header}` with the fd attached, or
// `{"ok":false,"reason":"..."}` without — and closes. A client that maps the pool keeps the
// mapping after the socket is gone. One thread accepts; no client can hold it for longer
// than a send to a full socket buffer (the line is a few hundred bytes).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/status.h"

namespace kvferry {

struct LocalSocketOptions {
  std::string path;
  /** The socket file's mode: 0600 when only the daemon's uid may connect. */
  uint32_t mode = 0600;
  /** The fd passed to every admitted client (not owned: the pool's memfd). */
  int fd = -1;
  /** JSON members (without braces) sent beside "ok":true, e.g. the pool's size and id. */
  std::string header;
  std::vector<uid_t> allowed_uids;
  std::vector<gid_t> allowed_gids;
};

struct LocalSocketStats {
  uint64_t admitted = 0;
  uint64_t refused = 0;
};

class LocalSocketServer {
 public:
  /** Binds `options.path` (an existing socket file there is replaced) and starts accepting. */
  static Status Start(LocalSocketOptions options, std::unique_ptr<LocalSocketServer>* out);
  ~LocalSocketServer();  // stops accepting and removes the socket file

  LocalSocketStats stats() const;

  /** Whether a client with these credentials may map the pool; if not, why. */
  static bool Admits(const LocalSocketOptions& o, uid_t uid, gid_t gid, std::string* reason);

 private:
  LocalSocketServer(LocalSocketOptions options, int listen_fd, int wake_fd);
  void Run();
  void Serve(int client);

  const LocalSocketOptions options_;
  const int listen_fd_;
  const int wake_fd_;
  std::atomic<uint64_t> admitted_{0};
  std::atomic<uint64_t> refused_{0};
  std::thread thread_;
};

/** The client side: connects to `path`, receives the header line and the fd (or the refusal). */
Status ReceiveLocalPool(const std::string& path, int timeout_ms, std::string* header, int* fd);

}  // namespace kvferry
