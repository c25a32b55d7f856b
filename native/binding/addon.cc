// N-API face of the native engine: the only file that includes napi.h.
//
// JavaScript gets: the pool as one external ArrayBuffer (zero-copy views), extent
// allocation, handles, op submission, and completions delivered in batches through one
// thread-safe function per engine (one JS call per drained batch, never per op).
//
// Lifetime: the Engine lives in a shared_ptr held by the JS object and by the pool's
// ArrayBuffer, so the pool stays mapped while any JS view of it can still be reached.
#include <napi.h>

#include <atomic>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/transport_factory.h"
#include "engine/local/local_socket.h"

#include <sys/mman.h>
#include <unistd.h>

namespace {

using kvferry::Code;
using kvferry::Completion;
using kvferry::CompletionKind;
using kvferry::Engine;
using kvferry::EngineOptions;
using kvferry::OpKind;
using kvferry::Status;
using kvferry::TransferOp;

/** Throws a JS Error carrying the engine's code name in `.code`. */
void ThrowStatus(Napi::Env env, const Status& status) {
  Napi::Error err = Napi::Error::New(env, status.message());
  err.Set("code", Napi::String::New(env, kvferry::CodeName(status.code())));
  throw err;
}

uint64_t ToU64(const Napi::Value& v, const char* field) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t out = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(v.Env(), std::string(field) + " does not fit in 64 bits");
    return out;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d > 9007199254740991.0 || d != static_cast<double>(static_cast<uint64_t>(d))) {
      throw Napi::RangeError::New(v.Env(), std::string(field) + " must be a non-negative safe integer");
    }
    return static_cast<uint64_t>(d);
  }
  throw Napi::TypeError::New(v.Env(), std::string(field) + " must be a number or a bigint");
}

/**
 * One drained batch as columns: { ids, codes, bytes, micros } typed arrays for the ops,
 * `messages` ({ index: text }) for the failed ones only, and `released` (BigUint64Array)
 * for the handles whose last access ended. Thousands of completions cost a handful of
 * JS allocations, not one object each.
 */
Napi::Object CompletionBatch(Napi::Env env, const std::vector<Completion>& batch) {
  size_t ops = 0;
  for (const Completion& c : batch) ops += c.kind == CompletionKind::kOp ? 1 : 0;
  Napi::Float64Array ids = Napi::Float64Array::New(env, ops);
  Napi::Int32Array codes = Napi::Int32Array::New(env, ops);
  Napi::Float64Array bytes = Napi::Float64Array::New(env, ops);
  Napi::Float64Array micros = Napi::Float64Array::New(env, ops);
  Napi::Object messages = Napi::Object::New(env);
  Napi::BigUint64Array released = Napi::BigUint64Array::New(env, batch.size() - ops);
  size_t i = 0, r = 0;
  for (const Completion& c : batch) {
    if (c.kind != CompletionKind::kOp) {
      released[r++] = c.id;
      continue;
    }
    ids[i] = static_cast<double>(c.id);
    codes[i] = static_cast<int32_t>(c.code);
    bytes[i] = static_cast<double>(c.bytes);
    micros[i] = static_cast<double>(c.micros);
    if (c.code != Code::kOk) messages.Set(static_cast<uint32_t>(i), c.message);
    i++;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("ids", ids);
  out.Set("codes", codes);
  out.Set("bytes", bytes);
  out.Set("micros", micros);
  out.Set("messages", messages);
  out.Set("released", released);
  return out;
}

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {
                           InstanceMethod<&EngineWrap::PoolBuffer>("poolBuffer"),
                           InstanceMethod<&EngineWrap::Allocate>("allocate"),
                           InstanceMethod<&EngineWrap::AllocateScattered>("allocateScattered"),
                           InstanceMethod<&EngineWrap::Free>("free"),
                           InstanceMethod<&EngineWrap::PoolStats>("poolStats"),
                           InstanceMethod<&EngineWrap::ExposeExtents>("exposeExtents"),
                           InstanceMethod<&EngineWrap::RevokeAll>("revokeAll"),
                           InstanceMethod<&EngineWrap::Ref>("ref"),
                           InstanceMethod<&EngineWrap::Unref>("unref"),
                           InstanceMethod<&EngineWrap::DataPort>("dataPort"),
                           InstanceMethod<&EngineWrap::ConnectionInfo>("connectionInfo"),
                           InstanceMethod<&EngineWrap::Submit>("submit"),
                           InstanceMethod<&EngineWrap::Cancel>("cancel"),
                           InstanceMethod<&EngineWrap::Disconnect>("disconnect"),
                           InstanceMethod<&EngineWrap::Stats>("stats"),
                           InstanceMethod<&EngineWrap::Shutdown>("shutdown"),
                           InstanceMethod<&EngineWrap::ServeLocal>("serveLocal"),
                           InstanceMethod<&EngineWrap::LocalStats>("localStats"),
                       });
  }

  // new Engine({ poolSize, protocol, devices, token, listenHost, listenPort, connectionsPerPeer, sliceBytes, ioTimeoutMs, handshakeTimeoutMs, ioThreads }, onCompletions)
  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject() || !info[1].IsFunction()) {
      throw Napi::TypeError::New(env, "new Engine(options, onCompletions)");
    }
    Napi::Object o = info[0].As<Napi::Object>();
    EngineOptions options;
    options.pool_size = ToU64(o.Get("poolSize"), "poolSize");
    if (o.Has("protocol")) options.protocol = o.Get("protocol").ToString().Utf8Value();
    if (o.Has("devices")) options.devices = o.Get("devices").ToString().Utf8Value();
    if (o.Has("token")) options.token = o.Get("token").ToString().Utf8Value();
    if (o.Has("listenHost")) options.listen_host = o.Get("listenHost").ToString().Utf8Value();
    if (o.Has("listenPort")) options.listen_port = static_cast<uint16_t>(ToU64(o.Get("listenPort"), "listenPort"));
    if (o.Has("connectionsPerPeer")) {
      options.connections_per_peer = static_cast<int>(ToU64(o.Get("connectionsPerPeer"), "connectionsPerPeer"));
    }
    if (o.Has("sliceBytes")) options.slice_bytes = ToU64(o.Get("sliceBytes"), "sliceBytes");
    if (o.Has("ioTimeoutMs")) options.io_timeout_ms = static_cast<int>(ToU64(o.Get("ioTimeoutMs"), "ioTimeoutMs"));
    if (o.Has("handshakeTimeoutMs")) {
      options.handshake_timeout_ms = static_cast<int>(ToU64(o.Get("handshakeTimeoutMs"), "handshakeTimeoutMs"));
    }
    if (o.Has("ioThreads")) options.io_threads = static_cast<int>(ToU64(o.Get("ioThreads"), "ioThreads"));

    std::unique_ptr<Engine> engine;
    Status status = Engine::Create(options, &engine);
    if (!status.ok()) ThrowStatus(env, status);
    engine_ = std::shared_ptr<Engine>(std::move(engine));

    // One thread-safe function per engine; engine threads only poke it when the
    // completion queue goes from empty to non-empty.
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "kvferry-completions", 0, 1);
    tsfn_.Unref(env);
    // The environment may end (worker exit, process teardown) before the GC finalizes us.
    // Raw N-API on purpose: Napi::Env::CleanupHook frees its data both when the hook
    // runs and on Remove, so removing a hook that already ran is a double free.
    env_ = env;
    napi_add_env_cleanup_hook(env, &EngineWrap::OnEnvCleanup, this);
    std::weak_ptr<Engine> weak = engine_;
    Napi::ThreadSafeFunction tsfn = tsfn_;
    engine_->SetNotifier([tsfn, weak]() mutable {
      tsfn.NonBlockingCall([weak](Napi::Env env, Napi::Function callback) {
        std::shared_ptr<Engine> engine = weak.lock();
        if (!engine) return;
        std::vector<Completion> batch;
        engine->DrainCompletions(&batch);
        if (batch.empty()) return;
        // A JS exception must not unwind through N-API's callback machinery (it would
        // terminate the process, e.g. during environment teardown): report and go on.
        try {
          callback.Call({CompletionBatch(env, batch)});
        } catch (const Napi::Error& err) {
          fprintf(stderr, "kvferry: completion callback threw: %s\n", err.Message().c_str());
        }
      });
    });
  }

  ~EngineWrap() override {
    if (!env_cleaned_) napi_remove_env_cleanup_hook(env_, &EngineWrap::OnEnvCleanup, this);
    Close();
  }

 private:
  static void OnEnvCleanup(void* self) {
    auto* wrap = static_cast<EngineWrap*>(self);
    wrap->env_cleaned_ = true;
    wrap->Close();
  }

  void Close() {
    if (closed_.exchange(true)) return;
    local_.reset();
    if (engine_) {
      engine_->SetNotifier(nullptr);
      engine_->Shutdown();
    }
    tsfn_.Release();
  }

  Engine& engine(Napi::Env env) {
    if (closed_ || !engine_) throw Napi::Error::New(env, "the engine is shut down");
    return *engine_;
  }

  Napi::Value PoolBuffer(const Napi::CallbackInfo& info) {
    Engine& e = engine(info.Env());
    // The finalizer's hint keeps the engine (and so the mapping) alive with the buffer.
    auto* keep = new std::shared_ptr<Engine>(engine_);
    return Napi::ArrayBuffer::New(
        info.Env(), e.pool_base(), e.pool_size(),
        [](Napi::Env, void*, std::shared_ptr<Engine>* hint) { delete hint; }, keep);
  }

  // allocate(size) → offset, or -1 when no extent fits now.
  Napi::Value Allocate(const Napi::CallbackInfo& info) {
    uint64_t offset = 0;
    Status s = engine(info.Env()).Allocate(ToU64(info[0], "size"), &offset);
    if (s.code() == Code::kResourceExhausted) return Napi::Number::New(info.Env(), -1);
    if (!s.ok()) ThrowStatus(info.Env(), s);
    return Napi::Number::New(info.Env(), static_cast<double>(offset));
  }

  // allocateScattered(size, maxExtents) → Float64Array [offset0, size0, offset1, size1, …]
  // (sizes rounded), or null when the bytes are not free in at most maxExtents extents.
  Napi::Value AllocateScattered(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::vector<kvferry::PoolExtent> extents;
    Status s = engine(env).AllocateScattered(ToU64(info[0], "size"), ToU64(info[1], "maxExtents"), &extents);
    if (s.code() == Code::kResourceExhausted) return env.Null();
    if (!s.ok()) ThrowStatus(env, s);
    Napi::Float64Array out = Napi::Float64Array::New(env, extents.size() * 2);
    for (size_t i = 0; i < extents.size(); ++i) {
      out[2 * i] = static_cast<double>(extents[i].offset);
      out[2 * i + 1] = static_cast<double>(extents[i].size);
    }
    return out;
  }

  Napi::Value Free(const Napi::CallbackInfo& info) {
    Status s = engine(info.Env()).Free(ToU64(info[0], "offset"));
    if (!s.ok()) ThrowStatus(info.Env(), s);
    return info.Env().Undefined();
  }

  Napi::Value PoolStats(const Napi::CallbackInfo& info) {
    kvferry::PoolStats p = engine(info.Env()).pool_stats();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("capacity", static_cast<double>(p.capacity));
    o.Set("used", static_cast<double>(p.used));
    o.Set("freeExtents", static_cast<double>(p.free_extents));
    o.Set("largestFree", static_cast<double>(p.largest_free));
    o.Set("allocations", static_cast<double>(p.allocations));
    return o;
  }

  // exposeExtents(Float64Array [offset, size, offset, size, ...], access): one handle
  // over the extents' concatenation (see Engine::ExposeExtents).
  Napi::Value ExposeExtents(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
      throw Napi::TypeError::New(env, "exposeExtents(Float64Array, access)");
    }
    std::vector<kvferry::PoolExtent> extents = ExtentPairs(env, info[0].As<Napi::Float64Array>(), 0,
                                                           info[0].As<Napi::Float64Array>().ElementLength() / 2);
    uint64_t handle = 0;
    Status s = engine(env).ExposeExtents(std::move(extents), AccessOf(env, info[1]), &handle);
    if (!s.ok()) ThrowStatus(env, s);
    return Napi::BigInt::New(env, handle);
  }

  Napi::Value ConnectionInfo(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), engine(info.Env()).connection_info());
  }

  Napi::Value DataPort(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), engine(info.Env()).data_port());
  }

  static kvferry::Access AccessOf(Napi::Env env, const Napi::Value& v) {
    const std::string mode = v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
    if (mode == "read") return kvferry::Access::kRead;
    if (mode == "write") return kvferry::Access::kWrite;
    throw Napi::TypeError::New(env, "access must be \"read\" or \"write\"");
  }

  // Pairs [first, first + count) of a flat [offset, size, ...] array as extents.
  static std::vector<kvferry::PoolExtent> ExtentPairs(Napi::Env env, const Napi::Float64Array& flat, size_t first,
                                                      size_t count) {
    if (flat.ElementLength() % 2 != 0 || (first + count) * 2 > flat.ElementLength()) {
      throw Napi::RangeError::New(env, "extents: [offset, size] pairs expected");
    }
    std::vector<kvferry::PoolExtent> out(count);
    for (size_t i = 0; i < count; ++i) {
      const double offset = flat[2 * (first + i)], size = flat[2 * (first + i) + 1];
      if (!(offset >= 0 && size >= 0 && offset <= 9007199254740991.0 && size <= 9007199254740991.0)) {
        throw Napi::RangeError::New(env, "extents: offsets and sizes must be non-negative safe integers");
      }
      out[i] = {static_cast<uint64_t>(offset), static_cast<uint64_t>(size)};
    }
    return out;
  }

  // submit(peer, { ids: Float64Array, kinds: Uint8Array (1 write, 2 read), localOffsets,
  //   remoteHandles: BigUint64Array, remoteOffsets, lengths: Float64Array, and optionally
  //   gatherCounts: Uint32Array (extents op i gathers; 0: its localOffset) with gather:
  //   Float64Array ([offset, size] pairs of every gathering op, in op order) }): one peer per call.
  Napi::Value Submit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsString() || !info[1].IsObject()) throw Napi::TypeError::New(env, "submit(peer, columns)");
    std::string peer = info[0].As<Napi::String>().Utf8Value();
    Napi::Object cols = info[1].As<Napi::Object>();
    auto f64 = [&](const char* name) {
      Napi::Value v = cols.Get(name);
      if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
        throw Napi::TypeError::New(env, std::string(name) + " must be a Float64Array");
      }
      return v.As<Napi::Float64Array>();
    };
    Napi::Float64Array ids = f64("ids"), local = f64("localOffsets"), remote = f64("remoteOffsets"), lengths = f64("lengths");
    Napi::Value kindsValue = cols.Get("kinds"), handlesValue = cols.Get("remoteHandles");
    if (!kindsValue.IsTypedArray() || kindsValue.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
        !handlesValue.IsTypedArray() || handlesValue.As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) {
      throw Napi::TypeError::New(env, "kinds must be a Uint8Array and remoteHandles a BigUint64Array");
    }
    Napi::Uint8Array kinds = kindsValue.As<Napi::Uint8Array>();
    Napi::BigUint64Array handles = handlesValue.As<Napi::BigUint64Array>();
    const size_t n = ids.ElementLength();
    if (kinds.ElementLength() != n || local.ElementLength() != n || remote.ElementLength() != n ||
        lengths.ElementLength() != n || handles.ElementLength() != n) {
      throw Napi::RangeError::New(env, "submit: every column must have the same length");
    }
    Napi::Value countsValue = cols.Get("gatherCounts");
    const bool gathers = !countsValue.IsUndefined();
    if (gathers && (!countsValue.IsTypedArray() ||
                    countsValue.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
                    countsValue.As<Napi::Uint32Array>().ElementLength() != n)) {
      throw Napi::TypeError::New(env, "gatherCounts must be a Uint32Array with one count per op");
    }
    Napi::Float64Array gather = gathers ? f64("gather") : Napi::Float64Array();
    size_t gathered = 0;
    std::vector<TransferOp> ops(n);
    for (size_t i = 0; i < n; i++) {
      TransferOp& op = ops[i];
      op.id = static_cast<uint64_t>(ids[i]);
      if (kinds[i] == 1) op.kind = OpKind::kWrite;
      else if (kinds[i] == 2) op.kind = OpKind::kRead;
      else throw Napi::TypeError::New(env, "kinds: 1 (write) or 2 (read)");
      op.peer = peer;
      op.local_offset = static_cast<uint64_t>(local[i]);
      op.remote_handle = handles[i];
      op.remote_offset = static_cast<uint64_t>(remote[i]);
      op.length = static_cast<uint64_t>(lengths[i]);
      const size_t count = gathers ? countsValue.As<Napi::Uint32Array>()[i] : 0;
      if (count > 0) {
        op.gather = ExtentPairs(env, gather, gathered, count);
        gathered += count;
      }
    }
    Status s = engine(env).Submit(std::move(ops));
    if (!s.ok()) ThrowStatus(env, s);
    return env.Undefined();
  }

  // revokeAll(BigUint64Array) → Uint8Array: 1 where the handle was revoked (its release
  // is reported later), 0 where the engine did not know it (nothing can be in flight).
  Napi::Value RevokeAll(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) {
      throw Napi::TypeError::New(env, "revokeAll(BigUint64Array)");
    }
    Napi::BigUint64Array handles = info[0].As<Napi::BigUint64Array>();
    Engine& e = engine(env);
    Napi::Uint8Array revoked = Napi::Uint8Array::New(env, handles.ElementLength());
    for (size_t i = 0; i < handles.ElementLength(); i++) revoked[i] = e.Revoke(handles[i]).ok() ? 1 : 0;
    return revoked;
  }

  // ref() / unref(): keep the event loop alive while completions are awaited (JS
  // counts what is outstanding); an idle engine never holds the process open.
  Napi::Value Ref(const Napi::CallbackInfo& info) {
    if (!closed_) tsfn_.Ref(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value Unref(const Napi::CallbackInfo& info) {
    if (!closed_) tsfn_.Unref(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    engine(info.Env()).Cancel(ToU64(info[0], "id"));
    return info.Env().Undefined();
  }

  Napi::Value Disconnect(const Napi::CallbackInfo& info) {
    engine(info.Env()).Disconnect(info[0].ToString().Utf8Value());
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    kvferry::EngineStats s = engine(info.Env()).stats();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("poolUsed", static_cast<double>(s.pool.used));
    o.Set("poolCapacity", static_cast<double>(s.pool.capacity));
    o.Set("bytesSent", static_cast<double>(s.bytes_sent));
    o.Set("bytesReceived", static_cast<double>(s.bytes_received));
    o.Set("opsCompleted", static_cast<double>(s.ops_completed));
    o.Set("opsFailed", static_cast<double>(s.ops_failed));
    o.Set("handshakesRefused", static_cast<double>(s.handshakes_refused));
    o.Set("framesRefused", static_cast<double>(s.frames_refused));
    o.Set("connectionsShed", static_cast<double>(s.connections_shed));
    o.Set("peersConnected", static_cast<double>(s.peers_connected));
    return o;
  }

  // serveLocal({ path, mode, header, allowedUids, allowedGids }): hands the pool's memfd to
  // the clients of this node that the kernel says may have it (engine/local/local_socket.h).
  Napi::Value ServeLocal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Engine& e = engine(env);
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "serveLocal(options)");
    Napi::Object o = info[0].As<Napi::Object>();
    kvferry::LocalSocketOptions options;
    options.path = o.Get("path").ToString().Utf8Value();
    options.mode = static_cast<uint32_t>(ToU64(o.Get("mode"), "mode"));
    options.header = o.Get("header").ToString().Utf8Value();
    options.fd = e.pool_fd();
    auto ids = [&](const char* key, auto* out) {
      if (!o.Has(key)) return;
      Napi::Array a = o.Get(key).As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); i++) out->push_back(static_cast<typename std::remove_pointer_t<decltype(out)>::value_type>(ToU64(a.Get(i), key)));
    };
    ids("allowedUids", &options.allowed_uids);
    ids("allowedGids", &options.allowed_gids);
    local_.reset();
    Status st = kvferry::LocalSocketServer::Start(std::move(options), &local_);
    if (!st.ok()) ThrowStatus(env, st);
    return env.Undefined();
  }

  Napi::Value LocalStats(const Napi::CallbackInfo& info) {
    Napi::Object o = Napi::Object::New(info.Env());
    kvferry::LocalSocketStats s = local_ ? local_->stats() : kvferry::LocalSocketStats{};
    o.Set("admitted", static_cast<double>(s.admitted));
    o.Set("refused", static_cast<double>(s.refused));
    return o;
  }

  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    Close();
    return info.Env().Undefined();
  }

  std::shared_ptr<Engine> engine_;
  std::unique_ptr<kvferry::LocalSocketServer> local_;
  Napi::ThreadSafeFunction tsfn_;
  std::atomic<bool> closed_{false};
  napi_env env_ = nullptr;
  bool env_cleaned_ = false;
};

// mapLocalPool(path, timeoutMs) → { header, buffer }: the pool of the daemon serving the
// local socket at `path`, mapped shared (an external ArrayBuffer; unmapped when collected).
// Throws with the daemon's reason when it refuses.
Napi::Value MapLocalPool(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].ToString().Utf8Value();
  int timeout_ms = static_cast<int>(ToU64(info[1], "timeoutMs"));
  std::string header;
  int fd = -1;
  Status st = kvferry::ReceiveLocalPool(path, timeout_ms, &header, &fd);
  if (!st.ok()) ThrowStatus(env, st);
  Napi::Object out = Napi::Object::New(env);
  out.Set("header", header);
  if (fd < 0) return out;  // refused: the header says why
  off_t size = lseek(fd, 0, SEEK_END);
  void* base = size > 0 ? mmap(nullptr, static_cast<size_t>(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  close(fd);
  if (base == MAP_FAILED) ThrowStatus(env, Status(kvferry::Code::kInternal, "cannot map the pool passed on " + path));
  auto* length = new size_t(static_cast<size_t>(size));
  out.Set("buffer", Napi::ArrayBuffer::New(
                        env, base, static_cast<size_t>(size),
                        [](Napi::Env, void* data, size_t* len) {
                          munmap(data, *len);
                          delete len;
                        },
                        length));
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Engine", EngineWrap::Init(env));
  // The transports this build has: "rdma" only when it was built with UCX.
  Napi::Array protocols = Napi::Array::New(env);
  for (const char* p : {"tcp", "rdma"}) {
    if (kvferry::TransportBuilt(p)) protocols.Set(protocols.Length(), Napi::String::New(env, p));
  }
  exports.Set("protocols", protocols);
  exports.Set("mapLocalPool", Napi::Function::New(env, MapLocalPool));
  return exports;
}

}  // namespace

NODE_API_MODULE(kvferry_native, Init)
