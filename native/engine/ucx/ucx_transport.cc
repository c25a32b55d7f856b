// UcxTransport (see ucx_transport.h and wire.h). Everything below runs on the progress
// thread except the public entry points, which validate and post commands to it.
#include "engine/ucx/ucx_transport.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "engine/crypto/hmac_sha256.h"
#include "engine/crypto/random.h"
#include "engine/local_pieces.h"
#include "engine/ucx/wire.h"

namespace kvferry {
namespace ucx {

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kPeerPrefix = "ucx:";
/** A local piece at least this large is sent alone (contiguous), not gathered with others. */
constexpr uint64_t kContiguousSlice = 256 << 10;
/** Slices of one op carried again after their rail failed, before the op fails UNAVAILABLE. */
constexpr int kMaxRetries = 64;
/** Slices in flight on one rail of one peer. */
constexpr size_t kWindow = 8;
/** Handshakes a target keeps pending at once (the oldest is dropped beyond). */
constexpr size_t kMaxPending = 256;
/** Sessions a target keeps (the least recently used is dropped beyond). */
constexpr size_t kMaxSessions = 4096;
/** WRITE outcomes a session keeps for CONFIRMs not asked yet. */
constexpr size_t kMaxLanded = 4096;
/** The progress thread looks at its timers at least this often. */
constexpr int kTickMs = 20;

// ---- base64url ------------------------------------------------------------------------

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

std::string Base64(const std::string& in) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kB64[(acc >> bits) & 63]);
    }
  }
  if (bits > 0) out.push_back(kB64[(acc << (6 - bits)) & 63]);
  return out;
}

bool Unbase64(const std::string& in, std::string* out) {
  out->clear();
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const char* at = std::strchr(kB64, c);
    if (c == '\0' || at == nullptr) return false;
    acc = (acc << 6) | static_cast<uint32_t>(at - kB64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return !out->empty();
}

/** The rails' worker addresses of a peer string, or why it is not one. */
std::string ParsePeer(const std::string& peer, std::vector<std::string>* addresses) {
  if (peer.compare(0, std::strlen(kPeerPrefix), kPeerPrefix) != 0) {
    return "peer '" + peer.substr(0, 64) + "' is not a UCX connection info (\"ucx:\" and worker addresses)";
  }
  addresses->clear();
  size_t at = std::strlen(kPeerPrefix);
  while (at <= peer.size()) {
    size_t comma = peer.find(',', at);
    if (comma == std::string::npos) comma = peer.size();
    std::string address;
    if (!Unbase64(peer.substr(at, comma - at), &address)) return "peer's UCX worker address " + std::to_string(addresses->size()) + " is not base64url";
    addresses->push_back(std::move(address));
    if (addresses->size() > 16) return "peer names more than 16 UCX rails";
    at = comma + 1;
  }
  return "";
}

// ---- proofs ---------------------------------------------------------------------------

using Key = crypto::Digest;

Key DeriveKey(const std::string& token) {
  static const char kLabel[] = "kvferry/v1 ucx data-plane";
  return crypto::HmacSha256Of(token.data(), token.size(), kLabel, sizeof(kLabel) - 1);
}

Proof ProofOf(const Key& key, const char* who, const Nonce& first, const Nonce& second) {
  std::string msg(who);
  msg.append(reinterpret_cast<const char*>(first.data()), first.size());
  msg.append(reinterpret_cast<const char*>(second.data()), second.size());
  crypto::Digest d = crypto::HmacSha256Of(key.data(), key.size(), msg.data(), msg.size());
  Proof p;
  std::memcpy(p.data(), d.data(), p.size());
  return p;
}

template <typename T>
T Random() {
  T v{};
  if (!crypto::RandomBytes(&v, sizeof(v)).ok()) std::abort();  // getrandom(2) does not fail on Linux ≥ 3.17
  return v;
}

// ---- status mapping -------------------------------------------------------------------

/** A target's refusal of a rendezvous WRITE travels back as the sender's completion status. */
ucs_status_t UcsOf(Code code) {
  switch (code) {
    case Code::kNotFound: return UCS_ERR_NO_ELEM;
    case Code::kOutOfRange: return UCS_ERR_OUT_OF_RANGE;
    case Code::kPermissionDenied: return UCS_ERR_REJECTED;
    case Code::kResourceExhausted: return UCS_ERR_EXCEEDS_LIMIT;
    default: return UCS_ERR_INVALID_PARAM;
  }
}

/** kOk for a refusal code the target chose (UcsOf), else kUnavailable: the rail failed. */
Code RefusalOf(ucs_status_t s) {
  switch (s) {
    case UCS_ERR_NO_ELEM: return Code::kNotFound;
    case UCS_ERR_OUT_OF_RANGE: return Code::kOutOfRange;
    case UCS_ERR_REJECTED: return Code::kPermissionDenied;
    case UCS_ERR_EXCEEDS_LIMIT: return Code::kResourceExhausted;
    case UCS_ERR_INVALID_PARAM: return Code::kInvalidArgument;
    default: return Code::kOk;
  }
}

/** IB devices are named with their port for UCX ("mlx5_0" → "mlx5_0:1"); others (lo, eth0) as given. */
std::string UcxDeviceName(const std::string& device) {
  if (device.find(':') != std::string::npos) return device;
  struct stat st;
  const std::string sys = "/sys/class/infiniband/" + device;
  return stat(sys.c_str(), &st) == 0 ? device + ":1" : device;
}

/** What a request moves: one contiguous range, or an iov of several (UCX's datatypes). */
struct Buffer {
  const void* at;
  size_t count;
};

/**
 * The request's buffer over `iov`, setting its datatype. No memory handle goes with it:
 * a rendezvous hands the peer a key to the handle's registration, and the pool's would
 * let the peer reach the whole pool; UCX registers what it moves (its registration cache).
 */
Buffer BufferOf(const std::vector<ucp_dt_iov_t>& iov, ucp_request_param_t* p) {
  p->op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE;
  if (iov.size() == 1) {
    p->datatype = ucp_dt_make_contig(1);
    return {iov[0].buffer, iov[0].length};
  }
  p->datatype = ucp_dt_make_iov();
  return {iov.data(), iov.size()};
}

/** An AM header as the struct `Header`, or false when its size is not that struct's. */
template <typename Header>
bool Parse(const void* header, size_t length, Header* out) {
  if (length != sizeof(Header)) return false;
  std::memcpy(out, header, sizeof(Header));
  return true;
}

/** What an AM callback returns for a message it drops: a rendezvous sender learns it was refused. */
ucs_status_t Dropped(const ucp_am_recv_param_t* param) {
  return (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 ? UCS_ERR_INVALID_PARAM : UCS_OK;
}

bool HasReplyEp(const ucp_am_recv_param_t* param) { return (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0; }

}  // namespace


Status UcxOptionsFrom(const EngineOptions& engine, UcxTransportOptions* out) {
  out->token = engine.token;
  out->slice_bytes = engine.slice_bytes;
  out->io_timeout_ms = engine.io_timeout_ms;
  out->handshake_timeout_ms = engine.handshake_timeout_ms;
  out->devices.clear();
  size_t at = 0;
  while (!engine.devices.empty() && at <= engine.devices.size()) {
    size_t comma = engine.devices.find(',', at);
    if (comma == std::string::npos) comma = engine.devices.size();
    std::string d = engine.devices.substr(at, comma - at);
    d.erase(0, d.find_first_not_of(" \t"));
    d.erase(d.find_last_not_of(" \t") + 1);
    if (d.empty() || d.find_first_of(" \t\"'") != std::string::npos) {
      return Status(Code::kInvalidArgument, "device_name '" + engine.devices + "': expected device names separated by commas (\"mlx5_0,mlx5_1\"), or \"\" for UCX's choice");
    }
    out->devices.push_back(d);
    at = comma + 1;
  }
  if (out->devices.size() > 16) return Status(Code::kInvalidArgument, "device_name names more than 16 devices");
  if (out->slice_bytes == 0) return Status(Code::kInvalidArgument, "slice_bytes must be positive");
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------

class UcxTransport::Impl {
 public:
  Impl(const TransportContext& context, const UcxTransportOptions& options)
      : context_(context), options_(options), key_(DeriveKey(options.token)) {}
  ~Impl() { Shutdown(); }

  Status Start();
  Status Submit(std::vector<TransferOp> ops);
  void Cancel(uint64_t op_id) { Post([this, op_id] { CancelOp(op_id); }); }
  void Disconnect(const std::string& peer) { Post([this, peer] { DropPeer(peer, Code::kUnavailable, "disconnected"); }); }
  void Shutdown();
  uint64_t connected_peers() const { return connected_peers_.load(); }
  std::string connection_info() const { return info_; }

 private:
  struct Rail;
  struct Op;
  struct Conn;
  struct Peer;
  struct Slice;
  struct Session;

  /** One device: a context with the pool registered, and its worker. */
  struct Rail {
    Impl* impl = nullptr;
    size_t index = 0;
    std::string device;
    ucp_context_h context = nullptr;
    ucp_worker_h worker = nullptr;
    int efd = -1;
    std::string address;
  };

  struct Op {
    TransferOp spec;
    LocalPieces local;
    Peer* peer = nullptr;
    uint64_t dispatched = 0;
    std::deque<std::pair<uint64_t, uint64_t>> redo;  // (op offset, length) to move again
    size_t in_flight = 0;
    bool queued = false;
    Code failure = Code::kOk;
    std::string why;
    bool cancelled = false;
    Clock::time_point start;
    Clock::time_point cancelled_at;
    uint64_t moved = 0;
    int retries = 0;  // slices carried again after a rail failed under them
  };

  struct Slice {
    Op* op = nullptr;
    Conn* conn = nullptr;
    uint64_t offset = 0;  // within the op
    uint64_t length = 0;
    uint64_t request = 0;
    void* ucp_request = nullptr;  // the send (WRITE) or receive (READ) in flight
    bool awaiting_data = false;   // READ sent, DATA not arrived
    RequestHeader header{};
    std::vector<ucp_dt_iov_t> iov;
  };

  struct Conn {
    Peer* peer = nullptr;
    Rail* rail = nullptr;
    size_t remote_rail = 0;
    ucp_ep_h ep = nullptr;
    enum class State { kHello, kProof, kEstablished, kDead } state = State::kHello;
    uint64_t cookie = 0;
    Nonce nonce_c{};
    SessionId session{};
    std::unordered_set<Slice*> in_flight;
    Clock::time_point opened;
    Clock::time_point progress;
    std::string death;
  };

  struct Peer {
    std::string key;
    std::vector<std::string> addresses;
    std::vector<std::unique_ptr<Conn>> conns;
    std::deque<Op*> pending;
    size_t next_conn = 0;
    bool counted = false;
  };

  /** A target's side of a handshake, between CHALLENGE and PROOF. */
  struct Pending {
    Rail* rail = nullptr;
    uint64_t cookie = 0;
    Nonce nonce_c{};
    Nonce nonce_s{};
    Clock::time_point deadline;
  };

  /** A target's authenticated initiator (one rail of one peer); it answers on reply eps. */
  struct Session {
    SessionId id{};
    Rail* rail = nullptr;
    size_t serving = 0;  // reads and writes in flight
    Clock::time_point used;
    std::unordered_set<uint64_t> landing;            // WRITEs whose bytes are being received
    std::map<uint64_t, uint32_t> landed;             // WRITEs received (code), until CONFIRMed
  };

  /** A target's access in flight (a WRITE being received, a DATA being sent). */
  struct Serving {
    Impl* impl = nullptr;
    Session* session = nullptr;
    uint64_t handle = 0;
    DataHeader header{};
    std::vector<ucp_dt_iov_t> iov;
    void* desc = nullptr;  // a WRITE's rendezvous descriptor, until received
    Rail* rail = nullptr;
    void* request = nullptr;  // the receive (WRITE) or send (DATA) in flight
    bool write = false;
    uint64_t write_request = 0;
  };

  /** A control message in flight: its header (and data) live until it completes. */
  struct Control {
    Impl* impl;
    std::string header;
  };

  // ---- thread plumbing ---------------------------------------------------------------
  void Post(std::function<void()> command);
  void PostLocked(std::function<void()> command);
  void Run();
  bool ProgressAll();
  void Sleep(int timeout_ms);
  void Flush();

  // ---- client -----------------------------------------------------------------------
  void Accept(std::vector<TransferOp> ops);
  Peer* PeerFor(const std::string& key);
  void EnsureConns(Peer* peer);
  void Dispatch(Peer* peer);
  void DispatchLoop(Peer* peer);
  void Issue(Conn* c, Op* op, uint64_t offset, uint64_t length);
  uint64_t SliceLength(const Op& op, uint64_t offset, uint64_t most) const;
  void LocalIov(const Op& op, uint64_t offset, uint64_t length, std::vector<ucp_dt_iov_t>* iov) const;
  void SettleSlice(Slice* s, Code code, const std::string& why);
  /** What a request that ended with `status` (not OK, not a refusal) means for its slice. */
  Code Interrupted(const Slice* s, ucs_status_t status) const;
  void LostSession(Slice* s);
  void FailOp(Op* op, Code code, const std::string& why);
  void MaybeFinish(Op* op);
  void CancelOp(uint64_t id);
  void ConnDead(Conn* c, const std::string& why);
  /** The handshake was refused, or the peer could not prove the token: its ops fail PERMISSION_DENIED. */
  void Refused(Conn* c, const std::string& why);
  void DropPeer(const std::string& key, Code code, const std::string& why);
  /** Sends a header-only control message (wire.h), eager; UCS_OK unless it failed at once. */
  template <typename Header>
  ucs_status_t SendControl(ucp_ep_h ep, uint16_t id, const Header& header, bool reply) {
    return SendBytes(ep, id, std::string(reinterpret_cast<const char*>(&header), sizeof(header)), reply);
  }
  ucs_status_t SendBytes(ucp_ep_h ep, uint16_t id, std::string header, bool reply);
  void CheckTimers();
  void CountPeer(Peer* peer);

  static void OnSendDone(void* request, ucs_status_t status, void* user);
  static void OnReadDataDone(void* request, ucs_status_t status, size_t length, void* user);
  static void OnControlDone(void* request, ucs_status_t status, void* user);
  static void OnConnError(void* arg, ucp_ep_h ep, ucs_status_t status);

  static ucs_status_t OnChallenge(void* arg, const void* header, size_t header_length, void* data, size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnWelcome(void* arg, const void* header, size_t header_length, void* data, size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnRefused(void* arg, const void* header, size_t header_length, void* data, size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnConfirmed(void* arg, const void* header, size_t header_length, void* data, size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnConfirm(void* arg, const void* header, size_t header_length, void* data, size_t length, const ucp_am_recv_param_t* param);
  void SendConfirm(Slice* s);
  static ucs_status_t OnData(void* arg, const void* header, size_t header_length, void* data, size_t length, const ucp_am_recv_param_t* param);

  // ---- server -----------------------------------------------------------------------
  static ucs_status_t OnHello(void* arg, const void* header, size_t header_length, void* data, size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnProof(void* arg, const void* header, size_t header_length, void* data, size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnWrite(void* arg, const void* header, size_t header_length, void* data, size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnRead(void* arg, const void* header, size_t header_length, void* data, size_t length, const ucp_am_recv_param_t* param);
  static void OnWriteReceived(void* request, ucs_status_t status, size_t length, void* user);
  static void OnDataSent(void* request, ucs_status_t status, void* user);

  Session* FindSession(const SessionId& id);
  Status Access(const RequestHeader& h, ::kvferry::Access mode, std::vector<ucp_dt_iov_t>* iov);
  void EndServing(Serving* s);
  /** A WRITE received or a DATA sent (header.request != 0) is over: counted, its access released. */
  void Served(Serving* s, ucs_status_t status);
  void ServeRead(Rail* rail, ucp_ep_h reply_ep, const RequestHeader& h);

  const TransportContext context_;
  const UcxTransportOptions options_;
  const Key key_;
  std::vector<std::unique_ptr<Rail>> rails_;
  std::string info_;
  std::thread thread_;
  int wake_fd_ = -1;
  int epoll_fd_ = -1;
  std::atomic<bool> stopping_{false};
  bool started_ = false;
  /** The progress thread has stopped: UCX callbacks still run (closing, destroying) only free their requests. */
  bool shut_ = false;
  bool dispatching_ = false;
  std::atomic<uint64_t> connected_peers_{0};

  std::mutex mu_;  // guards commands_ and live_ids_
  std::vector<std::function<void()>> commands_;
  std::unordered_set<uint64_t> live_ids_;

  // Progress thread only.
  std::map<std::string, std::unique_ptr<Peer>> peers_;
  std::vector<std::unique_ptr<Conn>> graveyard_;  // dead conns with slices still settling
  std::unordered_map<uint64_t, std::unique_ptr<Op>> ops_;
  std::unordered_map<Slice*, std::unique_ptr<Slice>> slices_;
  std::unordered_map<uint64_t, Slice*> reads_;  // request → a READ slice awaiting its DATA
  std::unordered_map<uint64_t, Conn*> by_cookie_;
  std::map<uint64_t, Pending> pending_;
  std::map<SessionId, std::unique_ptr<Session>> sessions_;
  std::unordered_set<Serving*> serving_;
  std::vector<std::function<void()>> deferred_;  // work a UCX callback asked for
  std::vector<void*> closing_;                    // ep close requests to free once done
  std::vector<Completion> completed_;
  uint64_t next_request_ = 1;
  /** Control messages (handshake, READ requests, refusals) sent and not completed. */
  size_t controls_ = 0;
};

// ---- lifecycle ------------------------------------------------------------------------

Status UcxTransport::Impl::Start() {
  std::vector<std::string> devices = options_.devices;
  if (devices.empty()) devices.push_back("");
  for (size_t i = 0; i < devices.size(); ++i) {
    // Kept at once, so that a start that fails half-way is cleaned up by Shutdown.
    rails_.push_back(std::make_unique<Rail>());
    Rail* rail = rails_.back().get();
    rail->impl = this;
    rail->index = i;
    rail->device = devices[i];
    ucp_config_t* config = nullptr;
    ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
    if (s != UCS_OK) return Status(Code::kUnavailable, std::string("UCX configuration: ") + ucs_status_string(s));
    if (!rail->device.empty()) {
      s = ucp_config_modify(config, "NET_DEVICES", UcxDeviceName(rail->device).c_str());
      if (s != UCS_OK) {
        ucp_config_release(config);
        return Status(Code::kInvalidArgument, "device_name " + rail->device + ": " + ucs_status_string(s));
      }
    }
    ucp_params_t params;
    std::memset(&params, 0, sizeof(params));
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
    // No RMA: no peer is ever handed a key to this pool (wire.h); rendezvous payloads still
    // move with the NIC's RDMA where it has it.
    params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    params.name = "kvferry";
    s = ucp_init(&params, config, &rail->context);
    ucp_config_release(config);
    if (s != UCS_OK) {
      return Status(Code::kUnavailable, "UCX on " + (rail->device.empty() ? std::string("its default devices") : "device " + rail->device) + ": " + ucs_status_string(s));
    }
    ucp_worker_params_t wp;
    std::memset(&wp, 0, sizeof(wp));
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE | UCP_WORKER_PARAM_FIELD_EVENTS;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;  // only the progress thread touches it
    wp.events = UCP_WAKEUP_RMA | UCP_WAKEUP_TX | UCP_WAKEUP_RX;
    s = ucp_worker_create(rail->context, &wp, &rail->worker);
    if (s != UCS_OK) return Status(Code::kUnavailable, std::string("UCX worker: ") + ucs_status_string(s));
    s = ucp_worker_get_efd(rail->worker, &rail->efd);
    if (s != UCS_OK) return Status(Code::kUnavailable, std::string("UCX wake-up fd: ") + ucs_status_string(s));
    ucp_address_t* address = nullptr;
    size_t length = 0;
    s = ucp_worker_get_address(rail->worker, &address, &length);
    if (s != UCS_OK) return Status(Code::kUnavailable, std::string("UCX worker address: ") + ucs_status_string(s));
    rail->address.assign(reinterpret_cast<const char*>(address), length);
    ucp_worker_release_address(rail->worker, address);
    const std::pair<AmId, ucp_am_recv_callback_t> handlers[] = {
        {kAmHello, &Impl::OnHello},     {kAmChallenge, &Impl::OnChallenge}, {kAmProof, &Impl::OnProof},
        {kAmWelcome, &Impl::OnWelcome}, {kAmRefused, &Impl::OnRefused},     {kAmWrite, &Impl::OnWrite},
        {kAmRead, &Impl::OnRead},       {kAmData, &Impl::OnData},           {kAmConfirm, &Impl::OnConfirm},
        {kAmConfirmed, &Impl::OnConfirmed},
    };
    for (const auto& [id, cb] : handlers) {
      ucp_am_handler_param_t hp;
      std::memset(&hp, 0, sizeof(hp));
      hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG |
                      UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
      hp.id = id;
      hp.cb = cb;
      hp.arg = rail;
      hp.flags = UCP_AM_FLAG_WHOLE_MSG;
      s = ucp_worker_set_am_recv_handler(rail->worker, &hp);
      if (s != UCS_OK) return Status(Code::kUnavailable, std::string("UCX AM handler: ") + ucs_status_string(s));
    }
    info_ += (i == 0 ? kPeerPrefix : ",") + Base64(rail->address);
  }
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (wake_fd_ < 0 || epoll_fd_ < 0) return Status(Code::kInternal, "eventfd/epoll for the UCX progress thread");
  struct epoll_event ev;
  std::memset(&ev, 0, sizeof(ev));
  ev.events = EPOLLIN;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  for (auto& rail : rails_) epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, rail->efd, &ev);
  started_ = true;
  thread_ = std::thread([this] { Run(); });
  return Status::Ok();
}

void UcxTransport::Impl::Shutdown() {
  {
    // Under the lock: a Submit either posted its ops before this (the thread runs them) or
    // sees stopping_ and refuses them.
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_.exchange(true)) return;
  }
  if (thread_.joinable()) {
    Post([] {});
    thread_.join();
  }
  shut_ = true;
  // Destroying a worker ends whatever it still had in flight; only then are the accesses
  // of requests being served given back (their handles may then be released and freed).
  for (auto& rail : rails_) {
    for (void* r : closing_) ucp_request_free(r);
    closing_.clear();
    if (rail->worker != nullptr) ucp_worker_destroy(rail->worker);
    if (rail->context != nullptr) ucp_cleanup(rail->context);
  }
  rails_.clear();
  for (Serving* s : serving_) {
    context_.handles->ReleaseAccess(s->handle);
    delete s;
  }
  serving_.clear();
  // Every op still here ends now: no request of this transport can touch its extents.
  for (auto& [id, op] : ops_) {
    Completion c;
    c.id = id;
    c.code = Code::kCancelled;
    c.message = "the engine is shut down";
    completed_.push_back(std::move(c));
  }
  Flush();
  std::lock_guard<std::mutex> lock(mu_);
  if (wake_fd_ >= 0) close(wake_fd_);
  if (epoll_fd_ >= 0) close(epoll_fd_);
  wake_fd_ = epoll_fd_ = -1;
}

void UcxTransport::Impl::Post(std::function<void()> command) {
  std::lock_guard<std::mutex> lock(mu_);
  PostLocked(std::move(command));
}

void UcxTransport::Impl::PostLocked(std::function<void()> command) {
  commands_.push_back(std::move(command));
  if (wake_fd_ >= 0) {
    uint64_t one = 1;
    ssize_t n = write(wake_fd_, &one, sizeof(one));
    (void)n;
  }
}

Status UcxTransport::Impl::Submit(std::vector<TransferOp> ops) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!started_ || stopping_.load()) return Status(Code::kUnavailable, "the transport is shut down");
  {
    std::unordered_set<uint64_t> ids;
    for (const TransferOp& op : ops) {
      if (live_ids_.count(op.id) != 0 || !ids.insert(op.id).second) {
        return Status(Code::kInvalidArgument, "op id " + std::to_string(op.id) + " is already in flight");
      }
    }
    const std::string* checked = nullptr;
    for (const TransferOp& op : ops) {
      if (checked != nullptr && *checked == op.peer) continue;
      std::vector<std::string> addresses;
      std::string why = ParsePeer(op.peer, &addresses);
      if (!why.empty()) return Status(Code::kInvalidArgument, why);
      checked = &op.peer;
    }
    live_ids_.insert(ids.begin(), ids.end());
  }
  auto shared = std::make_shared<std::vector<TransferOp>>(std::move(ops));
  PostLocked([this, shared] { Accept(std::move(*shared)); });
  return Status::Ok();
}

// ---- the progress thread ----------------------------------------------------------------

void UcxTransport::Impl::Run() {
  auto last_tick = Clock::now();
  for (;;) {
    std::vector<std::function<void()>> commands;
    {
      std::lock_guard<std::mutex> lock(mu_);
      commands.swap(commands_);
    }
    for (auto& c : commands) c();
    if (stopping_.load()) break;
    bool busy = ProgressAll();
    while (!deferred_.empty()) {
      std::vector<std::function<void()>> work;
      work.swap(deferred_);
      for (auto& w : work) w();
      busy = true;
    }
    if (Clock::now() - last_tick >= std::chrono::milliseconds(kTickMs)) {
      last_tick = Clock::now();
      CheckTimers();
    }
    Flush();
    if (!busy) Sleep(kTickMs);
  }
  {
    // Ops submitted before stopping_ was set are taken in (Accept connects nothing now), so
    // that Shutdown reports them with the rest.
    std::vector<std::function<void()>> commands;
    {
      std::lock_guard<std::mutex> lock(mu_);
      commands.swap(commands_);
    }
    for (auto& c : commands) c();
  }
  // Shutdown. From here UCX callbacks only free their requests. Every endpoint is closed
  // and every request of an op cancelled, and the workers progressed until those end (a
  // bounded wait), so that no request touches an op's extents once its completion is out.
  shut_ = true;
  auto close_ep = [this](ucp_ep_h* ep) {
    if (*ep == nullptr) return;
    ucp_request_param_t p;
    std::memset(&p, 0, sizeof(p));
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
    void* r = ucp_ep_close_nbx(*ep, &p);
    if (UCS_PTR_IS_PTR(r)) closing_.push_back(r);
    *ep = nullptr;
  };
  for (auto& [key, peer] : peers_) {
    for (auto& c : peer->conns) close_ep(&c->ep);
  }
  for (auto& c : graveyard_) close_ep(&c->ep);
  for (auto& [raw, owned] : slices_) {
    if (raw->ucp_request != nullptr) ucp_request_cancel(raw->conn->rail->worker, raw->ucp_request);
  }
  for (Serving* s : serving_) {
    if (s->request != nullptr) ucp_request_cancel(s->rail->worker, s->request);
  }
  // UCX asserts that no request is outstanding on an endpoint it destroys: wait for all.
  const auto give_up = Clock::now() + std::chrono::seconds(2);
  auto outstanding = [this] {
    if (!closing_.empty() || controls_ > 0) return true;
    for (Serving* s : serving_) {
      if (s->request != nullptr) return true;
    }
    for (auto& [raw, owned] : slices_) {
      if (raw->ucp_request != nullptr) return true;
    }
    return false;
  };
  while (outstanding() && Clock::now() < give_up) ProgressAll();
  // The ops are reported by Shutdown once the workers are destroyed (a request that did not
  // end in time may still be writing until then).
}

bool UcxTransport::Impl::ProgressAll() {
  bool any = false;
  for (auto& rail : rails_) {
    for (int i = 0; i < 64 && ucp_worker_progress(rail->worker) != 0; ++i) any = true;
  }
  for (auto it = closing_.begin(); it != closing_.end();) {
    if (ucp_request_check_status(*it) != UCS_INPROGRESS) {
      ucp_request_free(*it);
      it = closing_.erase(it);
    } else {
      ++it;
    }
  }
  return any;
}

void UcxTransport::Impl::Sleep(int timeout_ms) {
  for (auto& rail : rails_) {
    if (ucp_worker_arm(rail->worker) == UCS_ERR_BUSY) return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!commands_.empty()) return;
  }
  // Armed workers signal their fds on any event (a rendezvous step included), so the thread
  // sleeps until one; the timeout only paces the timers.
  struct epoll_event events[8];
  const int n = epoll_wait(epoll_fd_, events, 8, timeout_ms);
  for (int i = 0; i < n; ++i) {
    uint64_t v;
    ssize_t r = read(wake_fd_, &v, sizeof(v));
    (void)r;
  }
}

void UcxTransport::Impl::Flush() {
  if (completed_.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Completion& c : completed_) live_ids_.erase(c.id);
  }
  context_.complete_ops(&completed_);
  completed_.clear();
}

// ---- client: ops and slices ---------------------------------------------------------------

void UcxTransport::Impl::Accept(std::vector<TransferOp> ops) {
  const auto now = Clock::now();
  std::vector<Peer*> touched;
  for (TransferOp& spec : ops) {
    auto op = std::make_unique<Op>();
    op->local = LocalPieces(&spec);
    op->peer = PeerFor(spec.peer);
    op->spec = std::move(spec);
    op->start = now;
    Op* raw = op.get();
    ops_.emplace(raw->spec.id, std::move(op));
    if (raw->spec.length == 0) {
      MaybeFinish(raw);  // nothing to move (no empty request is sent: UCX has nothing to carry)
      continue;
    }
    raw->queued = true;
    raw->peer->pending.push_back(raw);
    if (std::find(touched.begin(), touched.end(), raw->peer) == touched.end()) touched.push_back(raw->peer);
  }
  if (stopping_.load()) return;  // shutting down: Shutdown reports them
  for (Peer* p : touched) {
    EnsureConns(p);
    Dispatch(p);
  }
}

UcxTransport::Impl::Peer* UcxTransport::Impl::PeerFor(const std::string& key) {
  auto it = peers_.find(key);
  if (it != peers_.end()) return it->second.get();
  auto peer = std::make_unique<Peer>();
  peer->key = key;
  (void)ParsePeer(key, &peer->addresses);  // checked by Submit
  Peer* raw = peer.get();
  peers_.emplace(key, std::move(peer));
  return raw;
}

void UcxTransport::Impl::EnsureConns(Peer* peer) {
  if (!peer->conns.empty()) return;
  // Rails that cannot even be started fail once all are made (the others may work).
  std::vector<std::pair<Conn*, std::string>> unreachable;
  // One connection per local rail, each to the peer's rail of the same index (wrapping).
  for (auto& rail : rails_) {
    auto c = std::make_unique<Conn>();
    c->peer = peer;
    c->rail = rail.get();
    c->remote_rail = rail->index % peer->addresses.size();
    c->opened = c->progress = Clock::now();
    c->cookie = Random<uint64_t>();
    c->nonce_c = Random<Nonce>();
    ucp_ep_params_t ep;
    std::memset(&ep, 0, sizeof(ep));
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.address = reinterpret_cast<const ucp_address_t*>(peer->addresses[c->remote_rail].data());
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = &Impl::OnConnError;
    ep.err_handler.arg = c.get();
    Conn* raw = c.get();
    peer->conns.push_back(std::move(c));
    ucs_status_t s = ucp_ep_create(rail->worker, &ep, &raw->ep);
    if (s != UCS_OK) {
      raw->ep = nullptr;
      unreachable.push_back({raw, std::string("cannot reach its UCX worker: ") + ucs_status_string(s)});
      continue;
    }
    by_cookie_[raw->cookie] = raw;
    HelloHeader h{};
    h.version = kWireVersion;
    h.cookie = raw->cookie;
    h.nonce_c = raw->nonce_c;
    SendControl(raw->ep, kAmHello, h, true);
  }
  for (auto& [c, why] : unreachable) ConnDead(c, why);
}

ucs_status_t UcxTransport::Impl::SendBytes(ucp_ep_h ep, uint16_t id, std::string header, bool reply) {
  auto* control = new Control{this, std::move(header)};
  ucp_request_param_t p;
  std::memset(&p, 0, sizeof(p));
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.cb.send = &Impl::OnControlDone;
  p.user_data = control;
  p.flags = UCP_AM_SEND_FLAG_EAGER | (reply ? UCP_AM_SEND_FLAG_REPLY : 0);
  void* r = ucp_am_send_nbx(ep, id, control->header.data(), control->header.size(), nullptr, 0, &p);
  if (UCS_PTR_IS_PTR(r)) {
    ++controls_;
    return UCS_OK;
  }
  delete control;  // done at once, or failed
  return UCS_PTR_STATUS(r);
}

void UcxTransport::Impl::OnControlDone(void* request, ucs_status_t, void* user) {
  auto* control = static_cast<Control*>(user);
  --control->impl->controls_;
  delete control;
  ucp_request_free(request);
}

void UcxTransport::Impl::Dispatch(Peer* peer) {
  // A slice that ends at once (a send refused on the spot) settles inside the loop below;
  // the loop, not a nested call, hands out what that frees.
  if (dispatching_) return;
  dispatching_ = true;
  DispatchLoop(peer);
  dispatching_ = false;
}

void UcxTransport::Impl::DispatchLoop(Peer* peer) {
  std::vector<Conn*> ready;
  for (auto& c : peer->conns) {
    if (c->state == Conn::State::kEstablished) ready.push_back(c.get());
  }
  if (ready.empty()) return;
  bool progressed = true;
  while (progressed && !peer->pending.empty()) {
    progressed = false;
    for (size_t k = 0; k < ready.size() && !peer->pending.empty(); ++k) {
      Conn* c = ready[(peer->next_conn + k) % ready.size()];
      if (c->state != Conn::State::kEstablished || c->in_flight.size() >= kWindow) continue;
      Op* op = peer->pending.front();
      uint64_t offset, length;
      if (!op->redo.empty()) {
        auto& r = op->redo.front();
        offset = r.first;
        length = SliceLength(*op, offset, std::min(options_.slice_bytes, r.second));
        r.first += length;
        r.second -= length;
        if (r.second == 0) op->redo.pop_front();
      } else {
        offset = op->dispatched;
        length = SliceLength(*op, offset, std::min(options_.slice_bytes, op->spec.length - op->dispatched));
        op->dispatched += length;
      }
      if (op->redo.empty() && op->dispatched == op->spec.length) {
        op->queued = false;
        peer->pending.pop_front();
      }
      Issue(c, op, offset, length);
      progressed = true;
    }
    peer->next_conn = (peer->next_conn + 1) % ready.size();
  }
}

uint64_t UcxTransport::Impl::SliceLength(const Op& op, uint64_t offset, uint64_t most) const {
  // A large local piece (an entry's part) goes alone, so that UCX moves a contiguous buffer
  // (its rendezvous with an iov datatype copies); small ones are gathered up to `most`.
  const uint64_t rest = op.local.RestOfPiece(offset);
  return rest >= kContiguousSlice ? std::min(most, rest) : most;
}

void UcxTransport::Impl::LocalIov(const Op& op, uint64_t offset, uint64_t length, std::vector<ucp_dt_iov_t>* iov) const {
  iov->clear();
  op.local.ForRange(offset, length, [&](uint64_t at, uint64_t n) {
    iov->push_back({context_.pool_base + at, static_cast<size_t>(n)});
  });
}

void UcxTransport::Impl::Issue(Conn* c, Op* op, uint64_t offset, uint64_t length) {
  auto owned = std::make_unique<Slice>();
  Slice* s = owned.get();
  slices_.emplace(s, std::move(owned));
  s->op = op;
  s->conn = c;
  s->offset = offset;
  s->length = length;
  s->request = next_request_++;
  s->header.session = c->session;
  s->header.request = s->request;
  s->header.handle = op->spec.remote_handle;
  s->header.offset = op->spec.remote_offset + offset;
  s->header.length = length;
  ++op->in_flight;
  if (c->in_flight.empty()) c->progress = Clock::now();
  c->in_flight.insert(s);
  LocalIov(*op, offset, length, &s->iov);
  // A send refused on the spot: the rail is broken; the slice goes to another.
  auto failed = [this, s, c](ucs_status_t status) {
    const std::string why = std::string("UCX send: ") + ucs_status_string(status);
    SettleSlice(s, Code::kUnavailable, why);
    ConnDead(c, why);
  };
  if (op->spec.kind == OpKind::kRead) {
    // Ask; the DATA that answers lands in the op's local extents (OnData).
    s->awaiting_data = true;
    reads_[s->request] = s;
    const ucs_status_t sent = SendControl(c->ep, kAmRead, s->header, true);
    if (sent != UCS_OK) failed(sent);
    return;
  }
  ucp_request_param_t p;
  std::memset(&p, 0, sizeof(p));
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.user_data = s;
  p.cb.send = &Impl::OnSendDone;
  p.flags = UCP_AM_SEND_FLAG_RNDV;  // so the target judges the request before any byte moves
  const Buffer buffer = BufferOf(s->iov, &p);
  void* r = ucp_am_send_nbx(c->ep, kAmWrite, &s->header, sizeof(s->header), buffer.at, buffer.count, &p);
  if (r == nullptr) SendConfirm(s);
  else if (UCS_PTR_IS_ERR(r)) failed(UCS_PTR_STATUS(r));
  else s->ucp_request = r;
}

// UCX completion callbacks run inside ucp_worker_progress, sometimes while UCX is failing
// an endpoint: they only note the outcome, and the progress loop acts on it afterwards
// (settling may send again or close the endpoint, which must not happen in there).

void UcxTransport::Impl::OnSendDone(void* request, ucs_status_t status, void* user) {
  auto* s = static_cast<Slice*>(user);
  ucp_request_free(request);
  Impl* self = s->conn->rail->impl;
  s->ucp_request = nullptr;
  if (self->shut_) return;
  self->deferred_.push_back([self, s, status] {
    if (self->slices_.count(s) == 0) return;
    // Sent; done once the target says the bytes landed (wire.h: CONFIRM).
    if (status == UCS_OK) return self->SendConfirm(s);
    const Code refusal = RefusalOf(status);
    if (refusal != Code::kOk) return self->SettleSlice(s, refusal, std::string("peer refused the write: ") + ucs_status_string(status));
    if (status == UCS_ERR_NOT_CONNECTED) return self->LostSession(s);
    self->SettleSlice(s, self->Interrupted(s, status), std::string("UCX: ") + ucs_status_string(status));
  });
}

void UcxTransport::Impl::OnReadDataDone(void* request, ucs_status_t status, size_t, void* user) {
  auto* s = static_cast<Slice*>(user);
  ucp_request_free(request);
  Impl* self = s->conn->rail->impl;
  s->ucp_request = nullptr;
  if (self->shut_) return;
  self->deferred_.push_back([self, s, status] {
    if (self->slices_.count(s) == 0) return;
    if (status == UCS_OK) return self->SettleSlice(s, Code::kOk, "");
    self->SettleSlice(s, self->Interrupted(s, status), std::string("UCX: ") + ucs_status_string(status));
  });
}

Code UcxTransport::Impl::Interrupted(const Slice* s, ucs_status_t status) const {
  // A rail closed under a request ends it CANCELED: carried again elsewhere, unless the op
  // itself was cancelled.
  return status == UCS_ERR_CANCELED && s->op->cancelled ? Code::kCancelled : Code::kUnavailable;
}

void UcxTransport::Impl::LostSession(Slice* s) {
  // The target no longer knows this rail's session (it dropped it): the rail is failed, so
  // that the slice goes elsewhere and the peer is greeted afresh when no rail is left.
  Conn* c = s->conn;
  SettleSlice(s, Code::kUnavailable, "the peer no longer knows this connection's session");
  ConnDead(c, "the peer no longer knows this connection's session");
}

void UcxTransport::Impl::SettleSlice(Slice* s, Code code, const std::string& why) {
  // Detached first, so that FailOp below (which stops the op's other slices) never sees it.
  auto owned = slices_.find(s);
  if (owned == slices_.end()) return;
  std::unique_ptr<Slice> slice = std::move(owned->second);
  slices_.erase(owned);
  Op* op = s->op;
  Conn* c = s->conn;
  c->in_flight.erase(s);
  c->progress = Clock::now();
  if (s->awaiting_data) reads_.erase(s->request);
  --op->in_flight;
  if (code == Code::kOk) {
    op->moved += s->length;
    // Counted as each slice lands, as the TCP transport counts frames.
    (op->spec.kind == OpKind::kWrite ? context_.counters->bytes_sent : context_.counters->bytes_received) += s->length;
  } else if (code == Code::kUnavailable && !op->cancelled && op->failure == Code::kOk && op->peer->conns.size() > 0 &&
             ++op->retries <= kMaxRetries) {
    // The rail failed under it: another rail (or this one's peer, greeted afresh) carries it again.
    op->redo.push_back({s->offset, s->length});
    if (!op->queued) {
      op->queued = true;
      op->peer->pending.push_front(op);
    }
    if (op->why.empty()) op->why = why;
  } else if (code == Code::kCancelled && op->cancelled) {
    // Cancelled on purpose: the op's completion says so.
  } else {
    FailOp(op, code, why);
  }
  Peer* peer = op->peer;
  MaybeFinish(op);
  Dispatch(peer);
}

void UcxTransport::Impl::FailOp(Op* op, Code code, const std::string& why) {
  if (op->failure != Code::kOk) return;
  op->failure = code;
  op->why = why;
  if (op->queued) {
    auto& q = op->peer->pending;
    q.erase(std::remove(q.begin(), q.end(), op), q.end());
    op->queued = false;
  }
  // Its other slices stop: requests in flight are cancelled, READs not answered yet are dropped.
  std::vector<Slice*> mine;
  for (auto& [raw, owned] : slices_) {
    if (raw->op == op) mine.push_back(raw);
  }
  for (Slice* s : mine) {
    if (s->ucp_request != nullptr) {
      ucp_request_cancel(s->conn->rail->worker, s->ucp_request);
    } else if (s->awaiting_data) {
      Conn* c = s->conn;
      c->in_flight.erase(s);
      reads_.erase(s->request);
      --op->in_flight;
      slices_.erase(s);
    }
  }
}

void UcxTransport::Impl::MaybeFinish(Op* op) {
  if (op->in_flight > 0) return;
  const bool all_moved = op->moved == op->spec.length;
  if (!all_moved && op->failure == Code::kOk && !op->cancelled && (op->queued || !op->redo.empty())) return;
  if (op->queued) {
    auto& q = op->peer->pending;
    q.erase(std::remove(q.begin(), q.end(), op), q.end());
  }
  Completion c;
  c.id = op->spec.id;
  if (op->failure != Code::kOk) {
    c.code = op->failure;
    c.message = op->why;
  } else if (op->cancelled && !all_moved) {
    c.code = Code::kCancelled;
    c.message = "cancelled";
  } else if (!all_moved) {
    c.code = Code::kUnavailable;
    c.message = op->why.empty() ? "no UCX rail to the peer is left" : op->why;
  } else {
    c.bytes = op->moved;
  }
  c.micros = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - op->start).count());
  completed_.push_back(std::move(c));
  ops_.erase(op->spec.id);  // frees it
}

void UcxTransport::Impl::CancelOp(uint64_t id) {
  auto it = ops_.find(id);
  if (it == ops_.end()) return;
  Op* op = it->second.get();
  if (op->cancelled) return;
  op->cancelled = true;
  op->cancelled_at = Clock::now();
  FailOp(op, Code::kCancelled, "cancelled");
  MaybeFinish(op);
}

void UcxTransport::Impl::OnConnError(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* c = static_cast<Conn*>(arg);
  Impl* self = c->rail->impl;
  if (self->shut_) return;
  const std::string why = std::string("UCX connection to the peer failed: ") + ucs_status_string(status);
  self->deferred_.push_back([self, c, why] { self->ConnDead(c, why); });
}

void UcxTransport::Impl::ConnDead(Conn* c, const std::string& why) {
  if (c->state == Conn::State::kDead) return;
  const bool was_up = c->state == Conn::State::kEstablished;
  c->state = Conn::State::kDead;
  c->death = why;
  by_cookie_.erase(c->cookie);
  // READs waiting for their DATA go to another rail now; requests in flight end in their
  // callbacks once the endpoint is closed (failing over the same way).
  std::vector<Slice*> waiting;
  for (Slice* s : c->in_flight) {
    if (s->awaiting_data) waiting.push_back(s);
  }
  for (Slice* s : waiting) SettleSlice(s, Code::kUnavailable, why);
  if (c->ep != nullptr) {
    ucp_request_param_t p;
    std::memset(&p, 0, sizeof(p));
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
    void* r = ucp_ep_close_nbx(c->ep, &p);
    if (UCS_PTR_IS_PTR(r)) closing_.push_back(r);
    c->ep = nullptr;
  }
  Peer* peer = c->peer;
  (void)was_up;
  CountPeer(peer);
  bool any_alive = false;
  for (auto& other : peer->conns) any_alive |= other->state != Conn::State::kDead;
  if (any_alive) return Dispatch(peer);
  // No rail left: what waits fails; the peer is connected afresh by its next op.
  std::vector<Op*> waiting_ops(peer->pending.begin(), peer->pending.end());
  for (Op* op : waiting_ops) {
    FailOp(op, Code::kUnavailable, op->why.empty() ? why : op->why);
    MaybeFinish(op);
  }
  for (auto& dead : peer->conns) graveyard_.push_back(std::move(dead));
  peer->conns.clear();
}

void UcxTransport::Impl::CountPeer(Peer* peer) {
  bool up = false;
  for (auto& c : peer->conns) up |= c->state == Conn::State::kEstablished;
  if (up != peer->counted) {
    peer->counted = up;
    if (up) ++connected_peers_;
    else --connected_peers_;
  }
}

void UcxTransport::Impl::DropPeer(const std::string& key, Code code, const std::string& why) {
  auto it = peers_.find(key);
  if (it == peers_.end()) return;
  Peer* peer = it->second.get();
  std::vector<Op*> mine;
  for (auto& [id, op] : ops_) {
    if (op->peer == peer) mine.push_back(op.get());
  }
  for (Op* op : mine) FailOp(op, code, why);
  std::vector<Conn*> conns;  // ConnDead may move them all to the graveyard
  for (auto& c : peer->conns) conns.push_back(c.get());
  for (Conn* c : conns) ConnDead(c, why);
  for (Op* op : mine) {
    if (ops_.count(op->spec.id) != 0) MaybeFinish(op);
  }
  for (auto& dead : peer->conns) graveyard_.push_back(std::move(dead));
  peer->conns.clear();
  if (peer->counted) --connected_peers_;
  peer->counted = false;
  bool referenced = false;
  for (auto& [id, op] : ops_) referenced |= op->peer == peer;
  if (!referenced) peers_.erase(it);
}

void UcxTransport::Impl::CheckTimers() {
  const auto now = Clock::now();
  const auto handshake = std::chrono::milliseconds(options_.handshake_timeout_ms);
  const auto io = std::chrono::milliseconds(options_.io_timeout_ms);
  std::vector<std::pair<Conn*, std::string>> dead;
  for (auto& [key, peer] : peers_) {
    for (auto& c : peer->conns) {
      if (c->state == Conn::State::kDead) continue;
      if (c->state != Conn::State::kEstablished && now - c->opened > std::max(handshake, io)) {
        dead.push_back({c.get(), "the UCX handshake did not finish in " + std::to_string(std::max(options_.handshake_timeout_ms, options_.io_timeout_ms)) + " ms"});
      } else if (!c->in_flight.empty() && now - c->progress > io) {
        dead.push_back({c.get(), "no UCX request to the peer finished in " + std::to_string(options_.io_timeout_ms) + " ms"});
      }
    }
  }
  // A cancelled op whose requests do not end: its rails are stopped (their other ops move on).
  for (auto& [id, op] : ops_) {
    if (!op->cancelled || op->in_flight == 0 || now - op->cancelled_at < std::chrono::milliseconds(kTickMs * 5)) continue;
    for (auto& [raw, owned] : slices_) {
      if (raw->op == op.get()) dead.push_back({raw->conn, "stopped to cancel an op"});
    }
  }
  for (auto& [c, why] : dead) ConnDead(c, why);
  // Ops waiting for a peer whose rails are all gone (a slice came back after the last died).
  for (auto& [key, peer] : peers_) {
    if (!peer->conns.empty() || peer->pending.empty()) continue;
    std::vector<Op*> waiting(peer->pending.begin(), peer->pending.end());
    for (Op* op : waiting) {
      FailOp(op, Code::kUnavailable, op->why.empty() ? "no UCX rail to the peer is left" : op->why);
      MaybeFinish(op);
    }
  }
  for (auto it = graveyard_.begin(); it != graveyard_.end();) {
    if ((*it)->in_flight.empty()) it = graveyard_.erase(it);
    else ++it;
  }
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (now > it->second.deadline) it = pending_.erase(it);
    else ++it;
  }
}

// ---- client: handshake and data --------------------------------------------------------

ucs_status_t UcxTransport::Impl::OnChallenge(void* arg, const void* header, size_t header_length, void*, size_t,
                                             const ucp_am_recv_param_t*) {
  auto* rail = static_cast<Rail*>(arg);
  Impl* self = rail->impl;
  ChallengeHeader h;
  if (!Parse(header, header_length, &h)) return UCS_OK;
  auto it = self->by_cookie_.find(h.cookie);
  if (it == self->by_cookie_.end() || it->second->state != Conn::State::kHello || it->second->rail != rail) return UCS_OK;
  Conn* c = it->second;
  const Proof expected = ProofOf(self->key_, "server", c->nonce_c, h.nonce_s);
  if (!crypto::DigestEquals(expected.data(), h.proof_s.data(), expected.size())) {
    self->deferred_.push_back([self, c] { self->Refused(c, "the peer could not prove the cluster token (UCX handshake)"); });
    return UCS_OK;
  }
  ProofHeader p{};
  p.pending = h.pending;
  p.proof_c = ProofOf(self->key_, "client", h.nonce_s, c->nonce_c);
  c->state = Conn::State::kProof;
  self->deferred_.push_back([self, c, p] {
    if (c->state == Conn::State::kProof && c->ep != nullptr) self->SendControl(c->ep, kAmProof, p, true);
  });
  return UCS_OK;
}

ucs_status_t UcxTransport::Impl::OnWelcome(void* arg, const void* header, size_t header_length, void*, size_t,
                                           const ucp_am_recv_param_t*) {
  auto* rail = static_cast<Rail*>(arg);
  Impl* self = rail->impl;
  WelcomeHeader h;
  if (!Parse(header, header_length, &h)) return UCS_OK;
  auto it = self->by_cookie_.find(h.cookie);
  if (it == self->by_cookie_.end() || it->second->state != Conn::State::kProof || it->second->rail != rail) return UCS_OK;
  Conn* c = it->second;
  c->session = h.session;
  self->deferred_.push_back([self, c] {
    if (c->state != Conn::State::kProof) return;
    c->state = Conn::State::kEstablished;
    c->progress = Clock::now();
    self->CountPeer(c->peer);
    self->Dispatch(c->peer);
  });
  return UCS_OK;
}

ucs_status_t UcxTransport::Impl::OnRefused(void* arg, const void* header, size_t header_length, void*, size_t,
                                           const ucp_am_recv_param_t*) {
  auto* rail = static_cast<Rail*>(arg);
  Impl* self = rail->impl;
  RefusedHeader h;
  if (!Parse(header, header_length, &h)) return UCS_OK;
  auto it = self->by_cookie_.find(h.cookie);
  if (it == self->by_cookie_.end() || it->second->rail != rail || it->second->state == Conn::State::kEstablished) return UCS_OK;
  Conn* c = it->second;
  const std::string why = "the peer refused the UCX handshake (" + std::string(CodeName(static_cast<Code>(h.code))) + ")";
  self->deferred_.push_back([self, c, why] { self->Refused(c, why); });
  return UCS_OK;
}

void UcxTransport::Impl::Refused(Conn* c, const std::string& why) {
  if (c->state == Conn::State::kDead) return;
  // Every op to this peer fails with the refusal: not a rail to fail over from.
  std::vector<Op*> mine;
  for (auto& [id, op] : ops_) {
    if (op->peer == c->peer) mine.push_back(op.get());
  }
  for (Op* op : mine) FailOp(op, Code::kPermissionDenied, why);
  ConnDead(c, why);
  for (Op* op : mine) {
    if (ops_.count(op->spec.id) != 0) MaybeFinish(op);
  }
}

ucs_status_t UcxTransport::Impl::OnData(void* arg, const void* header, size_t header_length, void* data, size_t length,
                                        const ucp_am_recv_param_t* param) {
  auto* rail = static_cast<Rail*>(arg);
  Impl* self = rail->impl;
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  DataHeader h;
  if (!Parse(header, header_length, &h)) return Dropped(param);
  auto it = self->reads_.find(h.request);
  // Not (or no longer) waited for, or from another session: nothing of it is written.
  if (it == self->reads_.end() || it->second->conn->rail != rail || it->second->conn->session != h.session ||
      it->second->op->spec.kind != OpKind::kRead) {
    return rndv ? UCS_ERR_CANCELED : UCS_OK;
  }
  Slice* s = it->second;
  if (h.code != 0) {
    if (h.code == kUnknownSession) {
      self->deferred_.push_back([self, s] {
        if (self->slices_.count(s) != 0 && s->awaiting_data) self->LostSession(s);
      });
      return rndv ? UCS_ERR_CANCELED : UCS_OK;
    }
    // A refusal of the handle or range, as the target's HandleTable says; anything else a
    // peer sends is a broken peer.
    const bool known = h.code <= static_cast<uint32_t>(Code::kInternal) && h.code != static_cast<uint32_t>(Code::kCancelled);
    const Code code = known ? static_cast<Code>(h.code) : Code::kUnavailable;
    const std::string why = std::string("peer refused the read: ") + CodeName(code);
    self->deferred_.push_back([self, s, code, why] {
      if (self->slices_.count(s) != 0 && s->awaiting_data) self->SettleSlice(s, code, why);
    });
    return rndv ? UCS_ERR_CANCELED : UCS_OK;
  }
  if (length != s->length) {
    self->deferred_.push_back([self, s] {
      if (self->slices_.count(s) != 0 && s->awaiting_data) self->SettleSlice(s, Code::kUnavailable, "the peer's DATA has the wrong length");
    });
    return rndv ? UCS_ERR_INVALID_PARAM : UCS_OK;
  }
  self->reads_.erase(it);
  s->awaiting_data = false;
  if (!rndv) {
    // Eager (small) data is here already: copied into the op's extents now.
    const auto* from = static_cast<const uint8_t*>(data);
    for (const ucp_dt_iov_t& v : s->iov) {
      std::memcpy(v.buffer, from, v.length);
      from += v.length;
    }
    self->deferred_.push_back([self, s] { self->SettleSlice(s, Code::kOk, ""); });
    return UCS_OK;
  }
  self->deferred_.push_back([self, s, data, rail] {
    ucp_request_param_t p;
    std::memset(&p, 0, sizeof(p));
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_DATATYPE;
    p.cb.recv_am = &Impl::OnReadDataDone;
    p.user_data = s;
    const Buffer buffer = BufferOf(s->iov, &p);
    void* r = ucp_am_recv_data_nbx(rail->worker, data, const_cast<void*>(buffer.at), buffer.count, &p);
    if (r == nullptr) {
      self->SettleSlice(s, Code::kOk, "");
    } else if (UCS_PTR_IS_ERR(r)) {
      self->SettleSlice(s, Code::kUnavailable, std::string("UCX receive: ") + ucs_status_string(UCS_PTR_STATUS(r)));
    } else {
      s->ucp_request = r;
    }
  });
  return UCS_INPROGRESS;
}

void UcxTransport::Impl::SendConfirm(Slice* s) {
  Conn* c = s->conn;
  if (c->state != Conn::State::kEstablished || c->ep == nullptr) return SettleSlice(s, Code::kUnavailable, c->death);
  s->awaiting_data = true;
  reads_[s->request] = s;
  RequestHeader h = s->header;
  SendControl(c->ep, kAmConfirm, h, true);
}

ucs_status_t UcxTransport::Impl::OnConfirmed(void* arg, const void* header, size_t header_length, void*, size_t,
                                             const ucp_am_recv_param_t* param) {
  auto* rail = static_cast<Rail*>(arg);
  Impl* self = rail->impl;
  DataHeader h;
  if (!Parse(header, header_length, &h)) return Dropped(param);
  auto it = self->reads_.find(h.request);
  if (it == self->reads_.end() || it->second->conn->rail != rail || it->second->conn->session != h.session ||
      it->second->op->spec.kind != OpKind::kWrite) {
    return UCS_OK;
  }
  Slice* s = it->second;
  self->reads_.erase(it);
  s->awaiting_data = false;
  const uint32_t code = h.code;
  self->deferred_.push_back([self, s, code] {
    if (self->slices_.count(s) == 0) return;
    if (code == kStillLanding) return self->SendConfirm(s);
    if (code == 0) return self->SettleSlice(s, Code::kOk, "");
    if (code == kUnknownSession) return self->LostSession(s);
    // Its bytes did not all land: another rail (or this one, reconnected) writes them again.
    self->SettleSlice(s, Code::kUnavailable, "the peer did not receive a write's bytes");
  });
  return UCS_OK;
}

// ---- server ---------------------------------------------------------------------------

ucs_status_t UcxTransport::Impl::OnConfirm(void* arg, const void* header, size_t header_length, void*, size_t,
                                           const ucp_am_recv_param_t* param) {
  auto* rail = static_cast<Rail*>(arg);
  Impl* self = rail->impl;
  RequestHeader h;
  if (!Parse(header, header_length, &h) || !HasReplyEp(param)) {
    ++self->context_.counters->frames_refused;
    return Dropped(param);
  }
  Session* session = self->FindSession(h.session);
  DataHeader answer{};
  answer.session = h.session;
  answer.request = h.request;
  if (session == nullptr || session->rail != rail) {
    ++self->context_.counters->frames_refused;
    answer.code = kUnknownSession;
    self->SendControl(param->reply_ep, kAmConfirmed, answer, false);
    return UCS_OK;
  }
  auto landed = session->landed.find(h.request);
  if (landed != session->landed.end()) {
    answer.code = landed->second;
    session->landed.erase(landed);
  } else {
    answer.code = session->landing.count(h.request) != 0 ? kStillLanding : static_cast<uint32_t>(Code::kUnavailable);
  }
  self->SendControl(param->reply_ep, kAmConfirmed, answer, false);
  return UCS_OK;
}

ucs_status_t UcxTransport::Impl::OnHello(void* arg, const void* header, size_t header_length, void*, size_t,
                                         const ucp_am_recv_param_t* param) {
  auto* rail = static_cast<Rail*>(arg);
  Impl* self = rail->impl;
  HelloHeader h;
  if (!Parse(header, header_length, &h) || !HasReplyEp(param)) {
    ++self->context_.counters->handshakes_refused;
    return UCS_OK;
  }
  if (h.version != kWireVersion) {
    ++self->context_.counters->handshakes_refused;
    RefusedHeader r{h.cookie, static_cast<uint32_t>(Code::kNotSupported)};
    self->SendControl(param->reply_ep, kAmRefused, r, false);
    return UCS_OK;
  }
  if (self->pending_.size() >= kMaxPending) {
    ++self->context_.counters->connections_shed;
    auto oldest = std::min_element(self->pending_.begin(), self->pending_.end(),
                                   [](const auto& a, const auto& b) { return a.second.deadline < b.second.deadline; });
    self->pending_.erase(oldest);
  }
  Pending p;
  p.rail = rail;
  p.cookie = h.cookie;
  p.nonce_c = h.nonce_c;
  p.nonce_s = Random<Nonce>();
  p.deadline = Clock::now() + std::chrono::milliseconds(self->options_.handshake_timeout_ms);
  const uint64_t id = Random<uint64_t>();
  ChallengeHeader c{};
  c.cookie = h.cookie;
  c.pending = id;
  c.nonce_s = p.nonce_s;
  c.proof_s = ProofOf(self->key_, "server", p.nonce_c, p.nonce_s);
  self->pending_[id] = p;
  // Answered on the ep UCX made for the sender: this engine opens none to an unproven peer.
  self->SendControl(param->reply_ep, kAmChallenge, c, false);
  return UCS_OK;
}

ucs_status_t UcxTransport::Impl::OnProof(void* arg, const void* header, size_t header_length, void*, size_t,
                                         const ucp_am_recv_param_t* param) {
  auto* rail = static_cast<Rail*>(arg);
  Impl* self = rail->impl;
  ProofHeader h;
  if (!Parse(header, header_length, &h) || !HasReplyEp(param)) {
    ++self->context_.counters->handshakes_refused;
    return Dropped(param);
  }
  auto it = self->pending_.find(h.pending);
  if (it == self->pending_.end() || it->second.rail != rail) {
    ++self->context_.counters->handshakes_refused;
    return UCS_OK;
  }
  const Pending pending = it->second;
  self->pending_.erase(it);
  const Proof expected = ProofOf(self->key_, "client", pending.nonce_s, pending.nonce_c);
  if (!crypto::DigestEquals(expected.data(), h.proof_c.data(), expected.size())) {
    ++self->context_.counters->handshakes_refused;
    return UCS_OK;  // the challenge's nonce is spent; a wrong proof gets nothing back
  }
  if (self->sessions_.size() >= kMaxSessions) {
    // The least recently used idle session goes (its initiator's next request is refused
    // and it fails over, or fails, like a lost rail).
    auto idle = self->sessions_.end();
    for (auto s = self->sessions_.begin(); s != self->sessions_.end(); ++s) {
      if (s->second->serving == 0 && (idle == self->sessions_.end() || s->second->used < idle->second->used)) idle = s;
    }
    if (idle != self->sessions_.end()) self->sessions_.erase(idle);
  }
  auto session = std::make_unique<Session>();
  session->id = Random<SessionId>();
  session->rail = rail;
  session->used = Clock::now();
  WelcomeHeader w{};
  w.cookie = pending.cookie;
  w.session = session->id;
  self->sessions_[session->id] = std::move(session);
  // Answered on the reply ep, from within this callback: this engine keeps no ep to an
  // initiator (it never connects back, so a peer that dies mid-handshake leaves nothing).
  self->SendControl(param->reply_ep, kAmWelcome, w, false);
  return UCS_OK;
}

UcxTransport::Impl::Session* UcxTransport::Impl::FindSession(const SessionId& id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return nullptr;
  it->second->used = Clock::now();
  return it->second.get();
}

Status UcxTransport::Impl::Access(const RequestHeader& h, ::kvferry::Access mode, std::vector<ucp_dt_iov_t>* iov) {
  std::vector<PoolExtent> pieces;
  Status s = context_.handles->Acquire(h.handle, mode, h.offset, h.length, &pieces);
  if (!s.ok()) return s;
  iov->clear();
  for (const PoolExtent& p : pieces) {
    if (p.offset > context_.pool_size || p.size > context_.pool_size - p.offset) {
      context_.handles->ReleaseAccess(h.handle);
      return Status(Code::kInternal, "handle range outside the pool");
    }
    iov->push_back({context_.pool_base + p.offset, static_cast<size_t>(p.size)});
  }
  return s;
}

void UcxTransport::Impl::EndServing(Serving* s) {
  context_.handles->ReleaseAccess(s->handle);
  serving_.erase(s);
  --s->session->serving;
  delete s;
}

ucs_status_t UcxTransport::Impl::OnWrite(void* arg, const void* header, size_t header_length, void* data, size_t length,
                                         const ucp_am_recv_param_t* param) {
  auto* rail = static_cast<Rail*>(arg);
  Impl* self = rail->impl;
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  // Every WRITE is sent rendezvous, so that it can be refused before its bytes move.
  RequestHeader h;
  if (!Parse(header, header_length, &h) || !rndv) {
    ++self->context_.counters->frames_refused;
    return Dropped(param);
  }
  Session* session = self->FindSession(h.session);
  if (session == nullptr || session->rail != rail) {
    ++self->context_.counters->frames_refused;
    return UCS_ERR_NOT_CONNECTED;  // the initiator greets again (wire.h: kUnknownSession)
  }
  if (h.length != length) {
    ++self->context_.counters->frames_refused;
    return UCS_ERR_INVALID_PARAM;
  }
  auto* s = new Serving();
  s->impl = self;
  s->session = session;
  s->handle = h.handle;
  s->rail = rail;
  Status access = self->Access(h, ::kvferry::Access::kWrite, &s->iov);
  if (!access.ok()) {
    delete s;
    ++self->context_.counters->frames_refused;
    return UcsOf(access.code());
  }
  ++session->serving;
  self->serving_.insert(s);
  s->desc = data;
  s->write = true;
  s->write_request = h.request;
  session->landing.insert(h.request);
  self->deferred_.push_back([self, s] {
    ucp_request_param_t p;
    std::memset(&p, 0, sizeof(p));
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_DATATYPE;
    p.cb.recv_am = &Impl::OnWriteReceived;
    p.user_data = s;
    const Buffer buffer = BufferOf(s->iov, &p);
    void* r = ucp_am_recv_data_nbx(s->rail->worker, s->desc, const_cast<void*>(buffer.at), buffer.count, &p);
    s->desc = nullptr;
    if (r == nullptr) self->Served(s, UCS_OK);
    else if (UCS_PTR_IS_ERR(r)) self->Served(s, UCS_PTR_STATUS(r));
    else s->request = r;
  });
  return UCS_INPROGRESS;
}

void UcxTransport::Impl::OnWriteReceived(void* request, ucs_status_t status, size_t, void* user) {
  auto* s = static_cast<Serving*>(user);
  ucp_request_free(request);
  s->request = nullptr;
  if (!s->impl->shut_) s->impl->Served(s, status);
}

ucs_status_t UcxTransport::Impl::OnRead(void* arg, const void* header, size_t header_length, void*, size_t,
                                        const ucp_am_recv_param_t* param) {
  auto* rail = static_cast<Rail*>(arg);
  Impl* self = rail->impl;
  RequestHeader h;
  if (!Parse(header, header_length, &h) || !HasReplyEp(param)) {
    ++self->context_.counters->frames_refused;
    return Dropped(param);
  }
  // The answer goes on the reply ep from within this callback (no ep to an initiator is kept).
  self->ServeRead(rail, param->reply_ep, h);
  return UCS_OK;
}

void UcxTransport::Impl::ServeRead(Rail* rail, ucp_ep_h reply_ep, const RequestHeader& h) {
  Session* session = FindSession(h.session);
  if (session == nullptr || session->rail != rail) {
    ++context_.counters->frames_refused;
    DataHeader d{};
    d.session = h.session;
    d.request = h.request;
    d.code = kUnknownSession;
    SendControl(reply_ep, kAmData, d, false);
    return;
  }
  auto* s = new Serving();
  s->impl = this;
  s->session = session;
  s->handle = h.handle;
  s->rail = rail;
  s->header.session = h.session;
  s->header.request = h.request;
  Status access = Access(h, ::kvferry::Access::kRead, &s->iov);
  if (!access.ok()) {
    ++context_.counters->frames_refused;
    DataHeader d = s->header;
    d.code = static_cast<uint32_t>(access.code());
    delete s;
    SendControl(reply_ep, kAmData, d, false);
    return;
  }
  ++session->serving;
  serving_.insert(s);
  ucp_request_param_t p;
  std::memset(&p, 0, sizeof(p));
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_DATATYPE;
  p.cb.send = &Impl::OnDataSent;
  p.user_data = s;
  p.flags = UCP_AM_SEND_FLAG_RNDV;  // so the initiator can refuse it (cancelled meanwhile) before it lands
  const Buffer buffer = BufferOf(s->iov, &p);
  void* r = ucp_am_send_nbx(reply_ep, kAmData, &s->header, sizeof(s->header), buffer.at, buffer.count, &p);
  if (r == nullptr) Served(s, UCS_OK);
  else if (UCS_PTR_IS_ERR(r)) Served(s, UCS_PTR_STATUS(r));
  else s->request = r;
}

void UcxTransport::Impl::OnDataSent(void* request, ucs_status_t status, void* user) {
  auto* s = static_cast<Serving*>(user);
  ucp_request_free(request);
  s->request = nullptr;
  if (!s->impl->shut_) s->impl->Served(s, status);
}

void UcxTransport::Impl::Served(Serving* s, ucs_status_t status) {
  if (status == UCS_OK) {
    uint64_t n = 0;
    for (const ucp_dt_iov_t& v : s->iov) n += v.length;
    (s->write ? context_.counters->bytes_received : context_.counters->bytes_sent) += n;
  }
  if (s->write) {
    // Kept for the initiator's CONFIRM (bounded: an initiator that never asks loses its oldest).
    s->session->landing.erase(s->write_request);
    s->session->landed[s->write_request] = status == UCS_OK ? 0 : static_cast<uint32_t>(Code::kUnavailable);
    if (s->session->landed.size() > kMaxLanded) s->session->landed.erase(s->session->landed.begin());
  }
  EndServing(s);
}

// ---- the Transport face -----------------------------------------------------------------

UcxTransport::UcxTransport(const TransportContext& context, const UcxTransportOptions& options)
    : impl_(std::make_unique<Impl>(context, options)) {}
UcxTransport::~UcxTransport() { impl_->Shutdown(); }

TransportCapabilities UcxTransport::capabilities() const {
  TransportCapabilities c;
  c.name = "rdma";
  c.supports_write = true;
  c.supports_read = true;
  c.zero_copy = true;
  c.max_slice_bytes = 4 << 20;
  return c;
}

Status UcxTransport::Start() { return impl_->Start(); }
Status UcxTransport::Submit(std::vector<TransferOp> ops) { return impl_->Submit(std::move(ops)); }
void UcxTransport::Cancel(uint64_t op_id) { impl_->Cancel(op_id); }
void UcxTransport::Disconnect(const std::string& peer) { impl_->Disconnect(peer); }
void UcxTransport::Shutdown() { impl_->Shutdown(); }
uint64_t UcxTransport::connected_peers() const { return impl_->connected_peers(); }
std::string UcxTransport::connection_info() const { return impl_->connection_info(); }

std::string UcxTransport::CheckPeer(const std::string& peer) const {
  std::vector<std::string> addresses;
  return ParsePeer(peer, &addresses);
}

}  // namespace ucx
}  // namespace kvferry

// ---- the plugin's entry points (ucx_transport.h) ---------------------------------------

namespace {

int Failed(const kvferry::Status& s, char* message, size_t size) {
  std::snprintf(message, size, "%s", s.message().c_str());
  return static_cast<int>(s.code());
}

}  // namespace

extern "C" int kvferry_ucx_check(const kvferry::EngineOptions* options, char* message, size_t size) {
  kvferry::ucx::UcxTransportOptions unused;
  return Failed(kvferry::ucx::UcxOptionsFrom(*options, &unused), message, size);
}

extern "C" int kvferry_ucx_create(const kvferry::EngineOptions* options, const kvferry::TransportContext* context,
                                  kvferry::Transport** out, char* message, size_t size) {
  kvferry::ucx::UcxTransportOptions ucx_options;
  kvferry::Status s = kvferry::ucx::UcxOptionsFrom(*options, &ucx_options);
  if (s.ok()) *out = new kvferry::ucx::UcxTransport(*context, ucx_options);
  return Failed(s, message, size);
}
