#include "test_util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <utility>

#include "engine/crypto/random.h"
#include "engine/tcp/handshake.h"

namespace kvferry {
namespace test {

std::unique_ptr<Engine> MakeEngine(uint64_t pool_size, const std::function<void(EngineOptions&)>& tweak) {
  EngineOptions o;
  o.pool_size = pool_size;
  o.token = kToken;
  o.listen_host = "127.0.0.1";
  o.listen_port = 0;
  if (tweak) tweak(o);
  std::unique_ptr<Engine> e;
  Status s = Engine::Create(o, &e);
  if (!s.ok()) {
    ADD_FAILURE() << "Engine::Create: " << s.ToString();
    return nullptr;
  }
  return e;
}

std::string PeerOf(const Engine& engine) {
  const std::string info = engine.connection_info();
  return info.empty() ? "127.0.0.1:" + std::to_string(engine.data_port()) : info;
}

Collector::Collector(Engine* engine) : engine_(engine) {
  engine_->SetNotifier([this] { Pull(); });
}

Collector::~Collector() { engine_->SetNotifier(nullptr); }

void Collector::Pull() {
  std::vector<Completion> batch;
  engine_->DrainCompletions(&batch);
  std::lock_guard<std::mutex> lock(mu_);
  for (Completion& c : batch) {
    if (c.kind == CompletionKind::kHandleReleased) {
      ++released_[c.id];
      continue;
    }
    ++op_total_;
    if (on_op_) on_op_(c);
    if (!ops_.emplace(c.id, c).second) ++duplicates_;
  }
  cv_.notify_all();
}

bool Collector::WaitOps(size_t n, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return op_total_ >= n; });
}

bool Collector::WaitReleased(uint64_t handle, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return released_.count(handle) != 0; });
}

std::map<uint64_t, Completion> Collector::ops() {
  std::lock_guard<std::mutex> lock(mu_);
  return ops_;
}

size_t Collector::op_count() {
  std::lock_guard<std::mutex> lock(mu_);
  return op_total_;
}

size_t Collector::duplicates() {
  std::lock_guard<std::mutex> lock(mu_);
  return duplicates_;
}

size_t Collector::released_count(uint64_t handle) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = released_.find(handle);
  return it == released_.end() ? 0 : it->second;
}

void Collector::OnOp(std::function<void(const Completion&)> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  on_op_ = std::move(fn);
}

void FillPattern(uint8_t* p, uint64_t n, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (uint64_t i = 0; i < n; ++i) {
    if ((i & 7) == 0) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
    }
    p[i] = static_cast<uint8_t>(x >> (8 * (i & 7)));
  }
}

void RoundTrip(Engine* server, Engine* client, Collector* cc, uint64_t size, uint64_t seed, uint64_t* dst_out,
               uint64_t* read_handle) {
  uint64_t dst = 0, wh = 0, rh = 0;
  ASSERT_TRUE(server->Allocate(size, &dst).ok());
  ASSERT_TRUE(server->Expose(dst, size, Access::kWrite, &wh).ok());
  ASSERT_TRUE(server->Expose(dst, size, Access::kRead, &rh).ok());
  if (dst_out != nullptr) *dst_out = dst;
  if (read_handle != nullptr) *read_handle = rh;
  FillPattern(client->pool_base(), size, seed);
  ASSERT_TRUE(client->Submit({MakeOp(1, OpKind::kWrite, PeerOf(*server), 0, wh, 0, size)}).ok());
  ASSERT_TRUE(cc->WaitOps(1, std::chrono::seconds(30)));
  EXPECT_EQ(cc->ops().at(1).code, Code::kOk) << cc->ops().at(1).message;
  ASSERT_TRUE(client->Submit({MakeOp(2, OpKind::kRead, PeerOf(*server), size, rh, 0, size)}).ok());
  ASSERT_TRUE(cc->WaitOps(2, std::chrono::seconds(30)));
  EXPECT_EQ(cc->ops().at(2).code, Code::kOk) << cc->ops().at(2).message;
  EXPECT_EQ(std::memcmp(client->pool_base(), client->pool_base() + size, size), 0);
}

size_t ThreadCount() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::stoul(line.substr(8));
  }
  return 0;
}

size_t OpenFiles() {
  size_t n = 0;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  while (readdir(dir) != nullptr) ++n;
  closedir(dir);
  return n;
}

uint64_t Alloc(Engine* e, uint64_t n) {
  uint64_t off = 0;
  Status s = e->Allocate(n, &off);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return off;
}

uint64_t Expose(Engine* e, uint64_t offset, uint64_t length, Access access) {
  uint64_t h = 0;
  Status s = e->Expose(offset, length, access, &h);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return h;
}

Completion RunOne(Engine* e, Collector* collector, const TransferOp& op) {
  const size_t before = collector->op_count();
  Status s = e->Submit({op});
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(collector->WaitOps(before + 1, std::chrono::seconds(30)));
  auto all = collector->ops();
  auto it = all.find(op.id);
  if (it == all.end()) {
    ADD_FAILURE() << "no completion for op " << op.id;
    return Completion();
  }
  return it->second;
}

TransferOp MakeOp(uint64_t id, OpKind kind, const std::string& peer, uint64_t local, uint64_t handle,
                  uint64_t remote_offset, uint64_t length) {
  TransferOp op;
  op.id = id;
  op.kind = kind;
  op.peer = peer;
  op.local_offset = local;
  op.remote_handle = handle;
  op.remote_offset = remote_offset;
  op.length = length;
  return op;
}

int RawConnect(uint16_t port, int recv_timeout_ms) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  struct timeval tv;
  tv.tv_sec = recv_timeout_ms / 1000;
  tv.tv_usec = (recv_timeout_ms % 1000) * 1000;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

bool RawSend(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool RawSendHeader(int fd, const tcp::FrameHeader& h) {
  uint8_t buf[tcp::kHeaderSize];
  tcp::EncodeHeader(h, buf);
  return RawSend(fd, buf, sizeof(buf));
}

bool RawRecv(int fd, void* data, size_t n) {
  auto* p = static_cast<uint8_t*>(data);
  while (n > 0) {
    ssize_t r = recv(fd, p, n, 0);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool RawRecvHeader(int fd, tcp::FrameHeader* h) {
  uint8_t buf[tcp::kHeaderSize];
  if (!RawRecv(fd, buf, sizeof(buf))) return false;
  *h = tcp::DecodeHeader(buf);
  return true;
}

int RawHello(int fd, const std::string& token) {
  // The client's side of the handshake, except that the server's proof is not checked:
  // the proof for `token` goes out whatever the server proved (to test the server).
  const tcp::HandshakeKey key = tcp::DeriveDataPlaneKey(token);
  tcp::Nonce nonce_c;
  if (!crypto::RandomBytes(nonce_c.data(), nonce_c.size()).ok()) return 0;
  tcp::ClientHandshake client(key, 1 << 20, nonce_c);
  const std::vector<uint8_t> hello = client.Hello();
  if (!RawSend(fd, hello.data(), hello.size())) return 0;
  tcp::FrameHeader challenge;
  if (!RawRecvHeader(fd, &challenge)) return 0;
  if (challenge.type != tcp::FrameType::kChallenge || challenge.length != 64) return static_cast<int>(challenge.type);
  uint8_t payload[64];
  if (!RawRecv(fd, payload, sizeof(payload))) return 0;
  tcp::Nonce nonce_s;
  std::memcpy(nonce_s.data(), payload, nonce_s.size());
  const crypto::Digest proof = tcp::ClientProof(key, nonce_s, nonce_c);
  tcp::FrameHeader h;
  h.type = tcp::FrameType::kProof;
  h.length = proof.size();
  if (!RawSendHeader(fd, h) || !RawSend(fd, proof.data(), proof.size())) return 0;
  tcp::FrameHeader reply;
  if (!RawRecvHeader(fd, &reply)) return 0;
  return static_cast<int>(reply.type);
}

bool RawServeHandshake(int fd, const std::string& token, uint64_t slice_bytes) {
  tcp::Nonce nonce_s;
  if (!crypto::RandomBytes(nonce_s.data(), nonce_s.size()).ok()) return false;
  tcp::ServerHandshake server(tcp::DeriveDataPlaneKey(token), slice_bytes, nonce_s);
  uint8_t buf[128];
  while (server.state() == tcp::ServerHandshake::State::kRunning) {
    if (!RawRecv(fd, buf, server.want())) return false;
    server.Feed(buf, server.want());
    std::vector<uint8_t>& out = server.outbox();
    if (!out.empty() && !RawSend(fd, out.data(), out.size())) return false;
    out.clear();
  }
  return server.state() == tcp::ServerHandshake::State::kAccepted;
}

bool WaitClosed(int fd, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  uint8_t buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    struct pollfd pfd = {fd, POLLIN, 0};
    int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
    if (poll(&pfd, 1, left > 0 ? left : 0) <= 0) continue;
    ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (r == 0) return true;
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;  // reset
  }
  return false;
}

ScriptedPeer::ScriptedPeer(Script script, int receive_buffer) : script_(std::move(script)) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (receive_buffer > 0) {
    // Set on the listener so accepted sockets start with it (before the window opens).
    setsockopt(listen_fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof(receive_buffer));
  }
  struct sockaddr_in addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(listen_fd_, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr));
  listen(listen_fd_, 64);
  socklen_t len = sizeof(addr);
  getsockname(listen_fd_, reinterpret_cast<struct sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] {
    for (;;) {
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;  // listen socket shut down
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) {
        close(fd);
        return;
      }
      const int index = accepted_.fetch_add(1);
      fds_.push_back(fd);
      threads_.emplace_back([this, fd, index] { script_(fd, index); });
    }
  });
}

ScriptedPeer::~ScriptedPeer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    shutdown(listen_fd_, SHUT_RDWR);
    for (int fd : fds_) shutdown(fd, SHUT_RDWR);
  }
  acceptor_.join();
  for (auto& t : threads_) t.join();
  for (int fd : fds_) close(fd);
  close(listen_fd_);
}

SilentPeer::SilentPeer()
    : ScriptedPeer([](int fd, int) {
        if (!RawServeHandshake(fd, kToken, 1 << 20)) return;
        std::vector<uint8_t> sink(1 << 16);
        while (recv(fd, sink.data(), sink.size(), 0) > 0) {
        }
      }) {}

}  // namespace test
}  // namespace kvferry
