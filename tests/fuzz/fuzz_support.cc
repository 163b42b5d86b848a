#include "tests/fuzz/fuzz_support.h"

#include <memory>
#include <vector>

#include "certs/secret_manager.h"
#include "certs/tls_config.h"
#include "filters/http/cors.h"
#include "filters/http/fault.h"
#include "filters/http/inert.h"
#include "filters/http/istio_alpn.h"
#include "filters/http/rbac.h"
#include "filters/http/router.h"
#include "filters/network/istio_noop.h"
#include "filters/network/rbac.h"
#include "filters/network/tcp_proxy.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/message.h"
#include "proxy/http/conn_manager.h"
#include "proxy/server/extensions.h"

namespace strait::fuzz {

std::string_view Input::take(size_t n, char sep) {
  std::string_view r = rest();
  size_t end = std::min(n, r.size());
  size_t at = r.substr(0, end).find(sep);
  if (at != std::string_view::npos) {
    pos_ += at + 1;
    return r.substr(0, at);
  }
  pos_ += end;
  return r.substr(0, end);
}

size_t Splitter::next(size_t left) {
  // xorshift32; mostly small reads (a byte at a time is the slowloris case), now and then a large one.
  state_ ^= state_ << 13;
  state_ ^= state_ >> 17;
  state_ ^= state_ << 5;
  size_t n;
  switch (state_ & 3) {
    case 0: n = 1; break;
    case 1: n = 1 + ((state_ >> 2) & 15); break;
    case 2: n = 1 + ((state_ >> 2) & 255); break;
    default: n = left; break;
  }
  return n < left ? n : left;
}

event::Dispatcher& dispatcher() {
  static event::Dispatcher* d = new event::Dispatcher("fuzz");
  return *d;
}

void drainLoop() {
  event::Dispatcher& d = dispatcher();
  // Each pass runs what is due (zero-delay timers, posted work) and the deferred deletes of the
  // iteration; a timer's callback may arm another zero-delay timer (the HTTP/1 codec's resume, then
  // its close), hence a few passes.
  for (int i = 0; i < 3; ++i) {
    d.post([&d] { d.exit(); });
    d.run();
  }
}

void FuzzTransport::write(common::Buffer& data, bool end_stream) {
  written += data.length();
  data.drain(data.length());
  if (end_stream) half_closed = true;
}

stats::Store& init() {
  static stats::Store* store = [] {
    common::setLogLevel(common::LogLevel::Off);
    auto* s = new stats::Store(1);
    stats::setThreadShard(&s->shard(0));
    server::registerExtensions();
    certs::SecretManager::get().setStore(s);
    return s;
  }();
  return *store;
}

namespace {

bool namesAFileAt(const google::protobuf::Message& m, int depth) {
  using google::protobuf::FieldDescriptor;
  if (depth > 64) return true;  // deeper than any real config: not worth translating
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  if (d->full_name() == "google.protobuf.Any") {
    const auto& any = static_cast<const google::protobuf::Any&>(m);
    const std::string& url = any.type_url();
    const auto* inner_d =
        google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(url.substr(url.rfind('/') + 1));
    if (inner_d == nullptr) return false;
    std::unique_ptr<google::protobuf::Message> inner(
        google::protobuf::MessageFactory::generated_factory()->GetPrototype(inner_d)->New());
    if (!inner->ParseFromString(any.value())) return false;
    return namesAFileAt(*inner, depth + 1);
  }
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const auto* f : fields) {
    if (f->name() == "filename" || f->name() == "watched_directory") return true;
    if (f->name() == "path" && d->full_name() == "envoy.extensions.access_loggers.file.v3.FileAccessLog") return true;
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(m, f); ++i) {
        if (namesAFileAt(r->GetRepeatedMessage(m, f, i), depth + 1)) return true;
      }
    } else if (namesAFileAt(r->GetMessage(m, f), depth + 1)) {
      return true;
    }
  }
  return false;
}

}  // namespace

bool namesAFile(const google::protobuf::Message& m) { return namesAFileAt(m, 0); }

}  // namespace strait::fuzz
