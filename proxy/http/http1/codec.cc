#include "proxy/http/http1/codec.h"
#include "proxy/common/pooled.h"

#include <llhttp.h>
#include <sys/uio.h>

#include <charconv>
#include <cstring>
#include <string>
#include <string_view>

#include "proxy/event/dispatcher.h"

// How this codec uses llhttp (Debian's 8.1, built without LLHTTP_STRICT_MODE):
// - Every lenient flag stays off.
// - Callbacks never call user code. Span callbacks (URL, header names/values, chunk extensions) only copy and
//   check bytes; on_headers_complete, on_body and on_message_complete return HPE_PAUSED, and the parse loop acts
//   outside llhttp at the exact position llhttp paused at (llhttp_get_error_pos). That gives:
//   * a framing scan of the non-body bytes before anything built from them is delivered: each CR must be
//     followed by LF, each LF preceded by CR, and a line may not start with SP/HTAB (obs-fold). The gaps between
//     spans are scanned byte by byte, spans only at their edges (their insides are checked per kind). llhttp 8.1
//     accepts a bare LF ending the header block or before the request line, and a bare CR inside a chunk
//     extension (it then swallows the next byte as if it were the LF), and it joins obs-fold lines silently;
//   * zero-copy bodies: a body span that covers the rest of an input slice moves that slice to the decoder;
//   * control over the body: for a response we may set F_SKIPBODY before resuming (HEAD, 1xx, 204, 304, 101 and
//     CONNECT 2xx), which is what returning 1 from on_headers_complete would do.
// - Our own checks on header names/values, Content-Length, Transfer-Encoding, Host and versions (see below).

namespace strait::http::http1 {
namespace {

using common::Buffer;

// ---------------------------------------------------------------------------------------------------------------
// Character classes and small helpers.

struct CharTables {
  bool tchar[256] = {};
  uint8_t bad_value[256] = {};  // CTLs but HTAB, and DEL: never in a field value
  constexpr CharTables() {
    for (int c = 0; c < 0x20; ++c) bad_value[c] = c == '\t' ? 0 : 1;
    bad_value[0x7f] = 1;
    for (int c = '0'; c <= '9'; ++c) tchar[c] = true;
    for (int c = 'a'; c <= 'z'; ++c) tchar[c] = true;
    for (int c = 'A'; c <= 'Z'; ++c) tchar[c] = true;
    for (char c : std::string_view("!#$%&'*+-.^_`|~")) tchar[static_cast<unsigned char>(c)] = true;
  }
};
constexpr CharTables kChars;

inline bool isOws(char c) { return c == ' ' || c == '\t'; }

std::string_view trimTrailingOws(std::string_view s) {
  while (!s.empty() && isOws(s.back())) s.remove_suffix(1);
  return s;
}

std::string_view trimOws(std::string_view s) {
  while (!s.empty() && isOws(s.front())) s.remove_prefix(1);
  while (!s.empty() && isOws(s.back())) s.remove_suffix(1);
  return s;
}

// Calls f(token) for each non-empty element of a comma-separated list, OWS trimmed.
template <typename F>
void forEachToken(std::string_view list, F&& f) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view token = trimOws(list.substr(0, comma));
    if (!token.empty()) f(token);
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
}

// Strict Content-Length: 1 to 19 digits, nothing else.
bool parseContentLength(std::string_view v, uint64_t& out) {
  if (v.empty() || v.size() > 19) return false;
  uint64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return false;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  out = n;
  return true;
}

enum class HeaderKind : uint8_t {
  Other,
  ContentLength,
  TransferEncoding,
  Host,
  Connection,
  KeepAlive,
  ProxyConnection,
  Te,
  Upgrade,
};

// One look at the length and the first byte rules out almost every name before a full comparison.
HeaderKind classify(std::string_view name) {
  if (name.size() < 2) return HeaderKind::Other;
  const char first = lowerAscii(name[0]);
  switch (name.size()) {
    case 2: return first == 't' && headerNameEquals(name, "te") ? HeaderKind::Te : HeaderKind::Other;
    case 4: return first == 'h' && headerNameEquals(name, "host") ? HeaderKind::Host : HeaderKind::Other;
    case 7: return first == 'u' && headerNameEquals(name, "upgrade") ? HeaderKind::Upgrade : HeaderKind::Other;
    case 10:
      if (first == 'c') return headerNameEquals(name, "connection") ? HeaderKind::Connection : HeaderKind::Other;
      if (first == 'k') return headerNameEquals(name, "keep-alive") ? HeaderKind::KeepAlive : HeaderKind::Other;
      return HeaderKind::Other;
    case 14:
      return first == 'c' && headerNameEquals(name, "content-length") ? HeaderKind::ContentLength
                                                                     : HeaderKind::Other;
    case 16:
      return first == 'p' && headerNameEquals(name, "proxy-connection") ? HeaderKind::ProxyConnection
                                                                       : HeaderKind::Other;
    case 17:
      return first == 't' && headerNameEquals(name, "transfer-encoding") ? HeaderKind::TransferEncoding
                                                                        : HeaderKind::Other;
    default: return HeaderKind::Other;
  }
}

// Removes hop-by-hop headers: Connection and every header it names, Keep-Alive, Proxy-Connection,
// Transfer-Encoding, TE unless it lists `trailers` (kept as `te: trailers`), and Upgrade unless `keep_upgrade`.
// Host and Content-Length cannot be removed by naming them in Connection.
void stripHopByHop(HeaderMap& map, bool keep_upgrade) {
  auto& entries = map.entries();
  // Headers named by Connection get an empty name (a name that cannot occur otherwise) and go in the sweep.
  for (size_t i = 0; i < entries.size(); ++i) {
    if (classify(entries[i].name) != HeaderKind::Connection) continue;
    forEachToken(entries[i].value, [&](std::string_view token) {
      if (headerNameEquals(token, "close") || headerNameEquals(token, "keep-alive") ||
          headerNameEquals(token, "upgrade")) {
        return;
      }
      HeaderKind k = classify(token);
      if (k == HeaderKind::Host || k == HeaderKind::ContentLength || k == HeaderKind::Te) return;
      for (auto& e : entries) {
        if (!e.name.empty() && classify(e.name) == HeaderKind::Other && headerNameEquals(e.name, token)) e.name.clear();
      }
    });
  }
  std::erase_if(entries, [&](HeaderMap::Entry& e) {
    if (e.name.empty()) return true;
    switch (classify(e.name)) {
      case HeaderKind::Connection:
      case HeaderKind::KeepAlive:
      case HeaderKind::ProxyConnection:
      case HeaderKind::TransferEncoding: return true;
      case HeaderKind::Upgrade: return !keep_upgrade;
      case HeaderKind::Te: {
        bool trailers = false;
        forEachToken(e.value, [&](std::string_view t) {
          // A token may carry parameters (`trailers;q=1` is not valid, but be tolerant of OWS).
          if (headerNameEquals(trimOws(t.substr(0, t.find(';'))), "trailers")) trailers = true;
        });
        if (!trailers) return true;
        e.value.assign("trailers");
        return false;
      }
      default: return false;
    }
  });
}

bool bodyCapableMethod(std::string_view m) { return m == "POST" || m == "PUT" || m == "PATCH"; }

void addHeaderLine(Buffer& out, std::string_view name, std::string_view value) {
  out.add(name);
  out.add(": ", 2);
  out.add(value);
  out.add("\r\n", 2);
}

void addStatusLine(Buffer& out, uint32_t status) {
  char digits[16];
  auto r = std::to_chars(digits, digits + sizeof(digits), status);
  out.add("HTTP/1.1 ", 9);
  out.add(digits, static_cast<size_t>(r.ptr - digits));
  out.add(" ", 1);
  out.add(statusReason(status));
  out.add("\r\n", 2);
}

// How an outgoing body is framed.
enum class BodyMode : uint8_t {
  None,            // no body may follow (HEAD response, 1xx/204/304, or a request that ended with its headers)
  ContentLength,   // exactly `remaining` bytes
  Chunked,         // chunked transfer coding
  CloseDelimited,  // response to an HTTP/1.0 client with no length: ends with the connection
  Raw,             // tunnel bytes (after 101 / CONNECT 2xx, or an upgrade/CONNECT request's optimistic bytes)
};

struct BodyEncoder {
  BodyMode mode = BodyMode::None;
  uint64_t remaining = 0;
  bool overflow = false;  // the sender broke its own Content-Length (too many or too few bytes)

  // Frames `data` (moved out, or dropped when no body may be sent) into `out`.
  void encode(Buffer& out, Buffer& data, bool end_stream) {
    switch (mode) {
      case BodyMode::None: data.drain(data.length()); return;
      case BodyMode::ContentLength:
        if (data.length() > remaining) {
          // Never let extra bytes reach the peer: they would be read as the next message.
          out.move(data, static_cast<size_t>(remaining));
          data.drain(data.length());
          overflow = true;
          remaining = 0;
        } else {
          remaining -= data.length();
          out.move(data);
        }
        if (end_stream && remaining != 0) overflow = true;
        return;
      case BodyMode::Chunked:
        if (!data.empty()) {
          char hex[24];
          auto r = std::to_chars(hex, hex + 16, static_cast<uint64_t>(data.length()), 16);
          out.add(hex, static_cast<size_t>(r.ptr - hex));
          out.add("\r\n", 2);
          out.move(data);
          out.add("\r\n", 2);
        }
        if (end_stream) out.add("0\r\n\r\n", 5);
        return;
      case BodyMode::CloseDelimited:
      case BodyMode::Raw: out.move(data); return;
    }
  }

  // Ends the body with trailers (chunked only; trailers of any other framing are dropped).
  void encodeTrailers(Buffer& out, const TrailerMap& trailers) {
    if (mode != BodyMode::Chunked) {
      if (mode == BodyMode::ContentLength && remaining != 0) overflow = true;
      return;
    }
    out.add("0\r\n", 3);
    for (const auto& e : trailers.entries()) {
      switch (classify(e.name)) {
        case HeaderKind::Other:
        case HeaderKind::Te: addHeaderLine(out, e.name, e.value); break;
        default: break;  // framing / hop-by-hop fields have no business in trailers
      }
    }
    out.add("\r\n", 2);
  }
};

// ---------------------------------------------------------------------------------------------------------------
// The llhttp-driven parser shared by both directions.

// What both kinds of stream share with their connection's flow-control helpers.
struct StreamFlow {
  StreamCallbacks* callbacks_ = nullptr;
  uint32_t read_disable_count_ = 0;
};

class ParserConnection {
 public:
  ParserConnection(CodecTransport& transport, const CodecSettings& settings, bool client)
      : transport_(transport), dispatcher_(transport.dispatcher()), settings_(settings), client_(client) {
    llhttp_init(&parser_, client ? HTTP_RESPONSE : HTTP_REQUEST, &llhttpSettings());
    parser_.data = this;
    header_limit_ = settings_.max_request_headers_kb * 1024u;
  }
  virtual ~ParserConnection() = default;
  ParserConnection(const ParserConnection&) = delete;
  ParserConnection& operator=(const ParserConnection&) = delete;

 protected:
  enum class Pause : uint8_t { None, HeadersComplete, Body, MessageComplete };

  // Hooks called by parse() outside llhttp, at the pause points. They return false after fail().
  virtual void onMessageBeginHook() = 0;       // set cur_map_
  virtual bool onHeadersCompleteHook() = 0;
  virtual bool onBodyHook(Buffer& data, bool end_stream) = 0;
  virtual bool onMessageCompleteHook() = 0;
  // Whether parse() must stop before the next byte (waiting for a response, tunnel, closing...).
  virtual bool parsingBlocked() const = 0;

  // Records a protocol error (the first one wins). Upstream errors are always 502.
  bool fail(uint32_t status, std::string_view detail) {
    if (!failed_) {
      failed_ = true;
      error_.status = client_ ? 502 : status;
      error_.detail.assign(detail);
    }
    return false;
  }
  int failCb(uint32_t status, std::string_view detail) {
    fail(status, detail);
    return HPE_USER;
  }

  // Feeds `in` to llhttp until it is empty, parsing is blocked, or an error (returns false). Consumed bytes are
  // drained; what is left stays in `in`.
  bool parse(Buffer& in) {
    static const char kNothing = 0;
    // After a pause llhttp may still owe us transitions that need no input (message complete right after the
    // last body byte or after a bodyless header block): a zero-length execute lets it make them.
    bool flush = false;
    while (!parsingBlocked() && !stop_parsing_) {
      const char* begin = &kNothing;
      size_t len = 0;
      if (!in.empty()) {
        iovec iov;
        in.fillIovecs(&iov, 1);
        begin = static_cast<const char*>(iov.iov_base);
        len = iov.iov_len;
      } else if (!flush) {
        break;
      }
      flush = false;
      scan_from_ = begin;
      pause_ = Pause::None;
      llhttp_errno_t rc = llhttp_execute(&parser_, begin, len);
      if (rc == HPE_OK) {
        if (!scanFraming(scan_from_, begin + len)) return false;
        in.drain(len);
        continue;
      }
      if (rc != HPE_PAUSED) return failFromParser(rc);
      const char* pos = llhttp_get_error_pos(&parser_);
      llhttp_resume(&parser_);
      flush = true;
      switch (pause_) {
        case Pause::Body: {
          in.drain(static_cast<size_t>(body_at_ - begin));
          body_.move(in, body_len_);
          // A Content-Length body ends with its last byte: say so with the data rather than an empty call.
          const bool end = (parser_.flags & F_CHUNKED) == 0 && (parser_.flags & F_CONTENT_LENGTH) != 0 &&
                           parser_.content_length == 0;
          bool ok = onBodyHook(body_, end);
          body_.clear();
          if (!ok) return false;
          break;
        }
        case Pause::HeadersComplete:
          if (!scanFraming(scan_from_, pos)) return false;
          in.drain(static_cast<size_t>(pos - begin));
          if (!onHeadersCompleteHook()) return false;
          break;
        case Pause::MessageComplete:
          if (!scanFraming(scan_from_, pos)) return false;
          in.drain(static_cast<size_t>(pos - begin));
          if (!onMessageCompleteHook()) return false;
          break;
        case Pause::None: return fail(400, "http1.unexpected_pause");
      }
    }
    return true;
  }

  bool failFromParser(llhttp_errno_t rc) {
    if (failed_) return false;  // one of our own checks stopped llhttp
    switch (rc) {
      case HPE_INVALID_VERSION: return fail(505, "http1.invalid_version");
      case HPE_PAUSED_H2_UPGRADE: return fail(505, "http1.http2_preface");
      case HPE_PAUSED_UPGRADE: return fail(400, "http1.unexpected_upgrade");
      default: break;
    }
    std::string detail = "http1.";
    detail += llhttp_errno_name(rc);
    if (const char* reason = llhttp_get_error_reason(&parser_); reason != nullptr && *reason != '\0') {
      detail += ": ";
      detail += reason;
    }
    return fail(400, detail);
  }

  // Every byte that is not body goes through here before anything built from it is delivered.
  bool scanFraming(const char* from, const char* to) {
    char prev = scan_prev_;
    for (const char* p = from; p < to; ++p) {
      const char c = *p;
      if (chunk_crlf_due_ != 0) {
        // llhttp 8.1 without LLHTTP_STRICT_MODE skips the two bytes after a chunk's data unread: `3\r\nabcXY0`
        // would frame like `3\r\nabc\r\n0` (a chunk boundary a strict peer reads differently).
        if (c != (chunk_crlf_due_ == 2 ? '\r' : '\n')) return fail(400, "http1.chunk_data_without_crlf");
        --chunk_crlf_due_;
      }
      if (prev == '\r') {
        if (c != '\n') return fail(400, "http1.bare_cr");
      } else if (c == '\n') {
        return fail(400, "http1.bare_lf");
      } else if (prev == '\n' && isOws(c)) {
        return fail(400, "http1.obs_fold");
      }
      prev = c;
    }
    scan_prev_ = prev;
    return true;
  }

  // For a span llhttp hands us (URL, header name or value, reason, chunk extension): the gap before it is
  // scanned, the span itself only at its edges. Its inside cannot hold CR or LF (llhttp ends spans there, and
  // the per-span checks refuse them anyway), but a line that starts with its first byte may be an obs-fold.
  bool scanSpan(const char* at, size_t len) {
    if (!scanFraming(scan_from_, at)) return false;
    scan_from_ = at + len;
    if (len == 0) return true;
    if (scan_prev_ == '\r') return fail(400, "http1.bare_cr");
    if (scan_prev_ == '\n' && isOws(at[0])) return fail(400, "http1.obs_fold");
    scan_prev_ = at[len - 1];
    return true;
  }

  // ---- llhttp callbacks ----

  static const llhttp_settings_t& llhttpSettings() {
    static const llhttp_settings_t s = [] {
      llhttp_settings_t st;
      llhttp_settings_init(&st);
      st.on_message_begin = [](llhttp_t* p) { return self(p)->cbMessageBegin(); };
      st.on_url = [](llhttp_t* p, const char* at, size_t len) { return self(p)->cbUrl(at, len); };
      st.on_url_complete = [](llhttp_t* p) { return self(p)->cbUrlComplete(); };
      st.on_status = [](llhttp_t* p, const char* at, size_t len) { return self(p)->cbScanSpan(at, len); };
      st.on_version_complete = [](llhttp_t* p) { return self(p)->cbVersionComplete(); };
      st.on_header_field = [](llhttp_t* p, const char* at, size_t len) { return self(p)->cbHeaderField(at, len); };
      st.on_header_field_complete = [](llhttp_t* p) { return self(p)->cbHeaderFieldComplete(); };
      st.on_header_value = [](llhttp_t* p, const char* at, size_t len) { return self(p)->cbHeaderValue(at, len); };
      st.on_header_value_complete = [](llhttp_t* p) { return self(p)->cbHeaderValueComplete(); };
      st.on_headers_complete = [](llhttp_t* p) { return self(p)->cbPause(Pause::HeadersComplete); };
      st.on_body = [](llhttp_t* p, const char* at, size_t len) { return self(p)->cbBody(at, len); };
      st.on_message_complete = [](llhttp_t* p) { return self(p)->cbPause(Pause::MessageComplete); };
      st.on_chunk_extension_name = [](llhttp_t* p, const char* at, size_t len) { return self(p)->cbScanSpan(at, len); };
      st.on_chunk_extension_value = [](llhttp_t* p, const char* at, size_t len) {
        return self(p)->cbScanSpan(at, len);
      };
      return st;
    }();
    return s;
  }
  static ParserConnection* self(llhttp_t* p) { return static_cast<ParserConnection*>(p->data); }

  int cbMessageBegin() {
    cur_map_ = nullptr;
    trailers_.reset();
    header_bytes_ = 0;
    header_count_ = 0;
    in_field_ = false;
    in_value_ = false;
    headers_done_ = false;
    end_delivered_ = false;
    cl_count_ = 0;
    te_count_ = 0;
    host_count_ = 0;
    hop_by_hop_seen_ = false;
    chunk_crlf_due_ = 0;
    onMessageBeginHook();
    return 0;
  }

  int cbUrl(const char* at, size_t len) {
    if (!scanSpan(at, len)) return HPE_USER;
    for (size_t i = 0; i < len; ++i) {
      const unsigned char c = static_cast<unsigned char>(at[i]);
      if (c <= 0x20 || c == 0x7f) return failCb(400, "http1.invalid_url_character");
    }
    if (!countHeaderBytes(len)) return HPE_USER;
    url_->append(at, len);
    return 0;
  }

  int cbUrlComplete() {
    // llhttp takes `GET /\r\n` as HTTP/0.9 and says so right here.
    if (parser_.http_major == 0 && parser_.http_minor == 9) return failCb(505, "http1.http09_not_supported");
    return 0;
  }

  int cbVersionComplete() {
    if (parser_.http_major != 1 || parser_.http_minor > 1) return failCb(505, "http1.unsupported_version");
    return 0;
  }

  int cbScanSpan(const char* at, size_t len) { return scanSpan(at, len) ? 0 : HPE_USER; }

  bool countHeaderBytes(size_t len) {
    header_bytes_ += len;
    if (header_bytes_ > header_limit_) return fail(431, "http1.headers_too_large");
    return true;
  }

  int cbHeaderField(const char* at, size_t len) {
    if (!scanSpan(at, len)) return HPE_USER;
    if (!in_field_) {
      in_field_ = true;
      if (headers_done_ && trailers_ == nullptr) {
        // Trailers: their own map and their own budget.
        trailers_ = std::make_unique<TrailerMap>();
        cur_map_ = trailers_.get();
        header_bytes_ = 0;
        header_count_ = 0;
      }
      if (++header_count_ > settings_.max_headers_count) return failCb(431, "http1.too_many_headers");
      cur_map_->entries().emplace_back();
    }
    if (!countHeaderBytes(len)) return HPE_USER;
    cur_map_->entries().back().name.append(at, len);
    return 0;
  }

  int cbHeaderFieldComplete() {
    if (!in_field_) return failCb(400, "http1.empty_header_name");
    in_field_ = false;
    in_value_ = true;
    const std::string& name = cur_map_->entries().back().name;
    if (name.empty()) return failCb(400, "http1.empty_header_name");
    for (char c : name) {
      // Catches what llhttp 8.1 lets through: a space before the colon ends up inside the name.
      if (!kChars.tchar[static_cast<unsigned char>(c)]) return failCb(400, "http1.invalid_header_name");
    }
    return 0;
  }

  int cbHeaderValue(const char* at, size_t len) {
    if (!scanSpan(at, len)) return HPE_USER;
    if (!in_value_) return failCb(400, "http1.header_value_without_name");
    // llhttp checks value bytes too; this is the backstop (branch-free: values are most of the header bytes).
    uint8_t bad = 0;
    for (size_t i = 0; i < len; ++i) bad |= kChars.bad_value[static_cast<unsigned char>(at[i])];
    if (bad != 0) return failCb(400, "http1.invalid_header_value");
    if (!countHeaderBytes(len)) return HPE_USER;
    cur_map_->entries().back().value.append(at, len);
    return 0;
  }

  int cbHeaderValueComplete() {
    if (!in_value_) return failCb(400, "http1.header_value_without_name");
    in_value_ = false;
    auto& entries = cur_map_->entries();
    HeaderMap::Entry& e = entries.back();
    const HeaderKind kind = classify(e.name);
    // llhttp skips leading OWS; trailing OWS is still there.
    const std::string_view raw = e.value;
    const std::string_view value = trimTrailingOws(raw);
    if (headers_done_) {
      // Trailers never carry framing, routing or connection fields; drop them rather than forward them.
      if (kind != HeaderKind::Other) {
        entries.pop_back();
      } else {
        e.value.resize(value.size());
      }
      return 0;
    }
    switch (kind) {
      case HeaderKind::TransferEncoding:
        // Only a single, exact `chunked` (any case) is accepted: no lists, no other codings, no whitespace or
        // control bytes around it.
        if (++te_count_ > 1) return failCb(400, "http1.multiple_transfer_encoding");
        if (!headerNameEquals(raw, "chunked")) return failCb(400, "http1.invalid_transfer_encoding");
        if (cl_count_ != 0) return failCb(400, "http1.content_length_and_transfer_encoding");
        hop_by_hop_seen_ = true;
        break;
      case HeaderKind::ContentLength: {
        uint64_t n = 0;
        if (!parseContentLength(value, n)) return failCb(400, "http1.invalid_content_length");
        if (cl_count_ != 0 && n != content_length_) return failCb(400, "http1.conflicting_content_length");
        content_length_ = n;
        ++cl_count_;
        if (te_count_ != 0) return failCb(400, "http1.content_length_and_transfer_encoding");
        break;
      }
      case HeaderKind::Host: ++host_count_; break;
      case HeaderKind::Connection:
      case HeaderKind::KeepAlive:
      case HeaderKind::ProxyConnection:
      case HeaderKind::Te:
      case HeaderKind::Upgrade: hop_by_hop_seen_ = true; break;
      case HeaderKind::Other: break;
    }
    e.value.resize(value.size());
    return 0;
  }

  int cbBody(const char* at, size_t len) {
    if (len == 0) return 0;  // llhttp reports an open span at the end of every execute, even an empty one
    if (!scanFraming(scan_from_, at)) return HPE_USER;
    scan_prev_ = 0;  // body bytes are not framing
    if ((parser_.flags & F_CHUNKED) != 0) chunk_crlf_due_ = 2;  // the chunk's data ends with CRLF
    scan_from_ = at + len;
    body_at_ = at;
    body_len_ = len;
    pause_ = Pause::Body;
    return HPE_PAUSED;
  }

  int cbPause(Pause p) {
    pause_ = p;
    return HPE_PAUSED;
  }

  // Common checks once the header block is complete (it has been framing-scanned by then).
  bool checkFramingAtHeadersComplete() {
    headers_done_ = true;
    if (in_field_ || in_value_) return fail(400, "http1.incomplete_header");
    if (te_count_ != 0 && parser_.http_minor == 0) {
      // RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means the framing is faulty.
      return fail(400, "http1.transfer_encoding_in_http10");
    }
    return true;
  }

  // Closes the transport from a zero-delay timer rather than under the caller: a reset often comes from deep
  // inside the owner's own stream teardown, and a synchronous close would re-enter it (LocalClose ->
  // onTransportClosed) before that teardown finished. Callers stop reading and writing at once.
  void closeTransportSoon() {
    if (close_timer_ == nullptr) close_timer_ = dispatcher_.createTimer([this] { transport_.closeAfterFlush(); });
    close_timer_->enable(0);
  }

  bool keepAliveRequested() const {
    if (parser_.http_minor >= 1) return (parser_.flags & F_CONNECTION_CLOSE) == 0;
    return (parser_.flags & F_CONNECTION_KEEP_ALIVE) != 0 && (parser_.flags & F_CONNECTION_CLOSE) == 0;
  }

  // Stream flow control, the same for requests and responses: reference-counted read disabling of
  // the transport, and a late-arriving callback hearing at once that the connection is backed up.
  void flowReadDisable(StreamFlow& s, bool disable) {
    if (disable) {
      ++s.read_disable_count_;
      transport_.readDisable(true);
    } else if (s.read_disable_count_ > 0) {
      --s.read_disable_count_;
      transport_.readDisable(false);
    }
  }
  // Ends the connection's active stream (server or client kind): it gives back the reads it disabled,
  // forgets its connection and is freed once the current callback stack unwinds.
  template <class S>
  void detachStream(S*& active) {
    S* s = active;
    active = nullptr;
    s->conn_ = nullptr;
    while (s->read_disable_count_ > 0) {
      --s->read_disable_count_;
      transport_.readDisable(false);
    }
    dispatcher_.deferredDelete(event::DeferredDeletablePtr(s));
  }
  // The same, telling the stream's owner it was reset.
  template <class S>
  void resetStreamOf(S*& active, StreamResetReason reason) {
    if (active == nullptr) return;
    StreamCallbacks* cb = active->callbacks_;
    detachStream(active);
    if (cb != nullptr) cb->onResetStream(reason);
  }
  static void flowSetCallbacks(StreamFlow& s, StreamCallbacks* callbacks, bool above_high) {
    s.callbacks_ = callbacks;
    if (above_high && callbacks != nullptr) callbacks->onAboveWriteBufferHighWatermark();
  }

  CodecTransport& transport_;
  event::Dispatcher& dispatcher_;  // cached: streams are deferred-deleted on it even after the transport is gone
  const CodecSettings settings_;
  const bool client_;
  llhttp_t parser_;
  uint32_t header_limit_ = 0;

  event::TimerPtr close_timer_;
  CodecError error_;
  bool failed_ = false;
  bool stop_parsing_ = false;  // one-shot: parse() returns at the next loop turn (client, after a response)

  // Parse-loop state.
  Pause pause_ = Pause::None;
  const char* scan_from_ = nullptr;
  char scan_prev_ = 0;
  int chunk_crlf_due_ = 0;  // bytes of the CRLF after a chunk's data not scanned yet (2, 1, 0)
  const char* body_at_ = nullptr;
  size_t body_len_ = 0;
  Buffer body_;  // reused for every decodeData

  // Per-message state.
  HeaderMap* cur_map_ = nullptr;
  std::string* url_ = nullptr;  // where the request target accumulates (the request's path field)
  TrailerMapPtr trailers_;
  uint32_t header_bytes_ = 0;
  uint32_t header_count_ = 0;
  uint64_t content_length_ = 0;
  uint8_t cl_count_ = 0;
  uint8_t te_count_ = 0;
  uint8_t host_count_ = 0;
  bool in_field_ = false;
  bool in_value_ = false;
  bool headers_done_ = false;
  bool end_delivered_ = false;
  bool hop_by_hop_seen_ = false;
};

constexpr size_t kReservedHeaders = 16;

// ---------------------------------------------------------------------------------------------------------------
// Server.

class ServerConnectionImpl;

class ServerStream : public ResponseEncoder,
                     public Stream,
                     public event::DeferredDeletable,
                     public StreamFlow,
                     public common::Pooled<ServerStream> {
 public:
  explicit ServerStream(ServerConnectionImpl& conn) : conn_(&conn) {}

  void encode1xxHeaders(const ResponseHeaders& headers) override;
  void encodeHeaders(const ResponseHeaders& headers, bool end_stream) override;
  void encodeData(Buffer& data, bool end_stream) override;
  void encodeTrailers(const TrailerMap& trailers) override;
  Stream& stream() override { return *this; }

  void setCallbacks(StreamCallbacks* callbacks) override;
  void resetStream(StreamResetReason reason) override;
  void readDisable(bool disable) override;

  ServerConnectionImpl* conn_;  // null once the stream is over
  RequestDecoder* decoder_ = nullptr;
  BodyEncoder body_;
  bool response_started_ = false;
  bool response_complete_ = false;
  bool request_complete_ = false;
};

class ServerConnectionImpl final : public Http1ServerConnection, public ParserConnection {
 public:
  ServerConnectionImpl(CodecTransport& transport, ServerConnectionCallbacks& callbacks, const CodecSettings& settings)
      : ParserConnection(transport, settings, false), callbacks_(callbacks) {}

  ~ServerConnectionImpl() override {
    if (active_ != nullptr) detachActive();
  }

  // Connection
  bool dispatch(Buffer& data, CodecError& error) override {
    if (failed_) {
      data.drain(data.length());
      error = error_;
      return false;
    }
    if (closed_ || discard_input_) {
      data.drain(data.length());
      return true;
    }
    if (tunnel_) {
      if (!pending_.empty()) deliverTunnel(pending_);
      deliverTunnel(data);
      return true;
    }
    if (!pending_.empty()) {
      // Earlier bytes are still waiting: keep the order.
      pending_.move(data);
      if (waiting_) return true;
      return processInput(pending_, error);
    }
    return processInput(data, error);
  }

  Protocol protocol() const override { return http10_ ? Protocol::Http10 : Protocol::Http11; }

  void goAway() override {
    if (active_ != nullptr && active_->response_started_ && !close_after_response_) {
      // The response in progress already went out without Connection: close; closing after it would
      // race the client's next request on a connection it believes is kept alive. The next response
      // says Connection: close instead (its request is read as usual).
      go_away_next_ = true;
      return;
    }
    go_away_ = true;
    if (active_ == nullptr && !closed_) {
      closed_ = true;
      pending_.clear();
      transport_.closeAfterFlush();
    }
  }

  void onUnderlyingConnectionAboveWriteBufferHighWatermark() override {
    above_high_ = true;
    if (active_ != nullptr && active_->callbacks_ != nullptr) active_->callbacks_->onAboveWriteBufferHighWatermark();
  }
  void onUnderlyingConnectionBelowWriteBufferLowWatermark() override {
    above_high_ = false;
    if (active_ != nullptr && active_->callbacks_ != nullptr) active_->callbacks_->onBelowWriteBufferLowWatermark();
  }

  void onTransportClosed() override {
    closed_ = true;
    pending_.clear();
    if (active_ != nullptr) resetActive(StreamResetReason::ConnectionTermination);
  }

  size_t activeStreams() const override { return active_ != nullptr ? 1 : 0; }

  // Http1ServerConnection
  void setDeferredErrorHandler(std::function<void(const CodecError&)> handler) override {
    deferred_error_handler_ = std::move(handler);
  }

  void sendErrorResponse(const CodecError& error) override {
    if (closed_) return;
    if (active_ == nullptr || !active_->response_started_) {
      addStatusLine(out_, error.status);
      out_.add("content-length: 0\r\nconnection: close\r\n\r\n");
      transport_.write(out_, false);
    }
    closed_ = true;
    pending_.clear();
    transport_.closeAfterFlush();
  }

  void onRemoteHalfClose() override {
    remote_half_closed_ = true;
    if (active_ == nullptr || active_->request_complete_) return;
    if (!tunnel_) {
      if (waiting_) return;  // a tunnel request waiting for its response: replayed once the tunnel opens
      // The request can never be completed now: give up on it.
      closed_ = true;
      pending_.clear();
      resetActive(StreamResetReason::ConnectionTermination);
      closeTransportSoon();
      return;
    }
    if (!pending_.empty()) deliverTunnel(pending_);
    if (active_ == nullptr) return;
    active_->request_complete_ = true;
    body_.clear();
    ServerStream* s = active_;
    s->decoder_->decodeData(body_, true);
    body_.clear();
    if (active_ == s && s->response_complete_) finishStream();
  }

  // ---- called by ServerStream ----

  void encode1xx(ServerStream& s, const ResponseHeaders& headers) {
    if (closed_ || s.response_started_ || http10_) return;  // HTTP/1.0 clients do not know 1xx
    if (headers.status == 100) {
      out_.add("HTTP/1.1 100 Continue\r\n\r\n");
    } else {
      if (headers.status < 100 || headers.status > 199 || headers.status == 101) return;
      addStatusLine(out_, headers.status);
      for (const auto& e : headers.entries()) {
        if (classify(e.name) == HeaderKind::Other) addHeaderLine(out_, e.name, e.value);
      }
      out_.add("\r\n", 2);
    }
    transport_.write(out_, false);
  }

  void encodeHeaders(ServerStream& s, const ResponseHeaders& h, bool end_stream) {
    if (closed_ || s.response_started_) return;
    s.response_started_ = true;
    const uint32_t status = h.status;
    const bool tunnel =
        (req_upgrade_ && status == 101) || (req_connect_ && status >= 200 && status < 300 && !failed_);
    const bool no_body = !tunnel && (req_head_ || status < 200 || status == 204 || status == 304);

    addStatusLine(out_, status);
    bool have_cl = false;
    uint64_t cl = 0;
    for (const auto& e : h.entries()) {
      switch (classify(e.name)) {
        case HeaderKind::Connection:
        case HeaderKind::KeepAlive:
        case HeaderKind::ProxyConnection:
        case HeaderKind::TransferEncoding: continue;
        case HeaderKind::ContentLength:
          // Never in 1xx/204 or a tunnel; an invalid or second one is dropped (we frame the body ourselves).
          if (tunnel || status < 200 || status == 204 || have_cl || !parseContentLength(trimOws(e.value), cl)) {
            continue;
          }
          have_cl = true;
          break;
        default: break;
      }
      addHeaderLine(out_, e.name, e.value);
    }

    // The connection closes after this response when the client asked, an HTTP/1.0 client did not ask for
    // keep-alive, we are draining, the request is not fully read yet, an upgrade/CONNECT was refused, or a
    // protocol error was found.
    bool close = !req_keep_alive_ || go_away_ || failed_ || (!tunnel && !s.request_complete_) ||
                 (!tunnel && (req_upgrade_ || req_connect_));
    if (tunnel) {
      s.body_.mode = BodyMode::Raw;
    } else if (no_body) {
      s.body_.mode = BodyMode::None;
    } else if (have_cl) {
      s.body_.mode = BodyMode::ContentLength;
      s.body_.remaining = cl;
    } else if (end_stream) {
      out_.add("content-length: 0\r\n");
      s.body_.mode = BodyMode::ContentLength;
      s.body_.remaining = 0;
    } else if (!http10_) {
      out_.add("transfer-encoding: chunked\r\n");
      s.body_.mode = BodyMode::Chunked;
    } else {
      s.body_.mode = BodyMode::CloseDelimited;
      close = true;
    }
    if (tunnel && status == 101) {
      out_.add("connection: upgrade\r\n");
    } else if (close) {
      out_.add("connection: close\r\n");
    } else if (http10_) {
      out_.add("connection: keep-alive\r\n");
    }
    out_.add("\r\n", 2);
    close_after_response_ = close;
    transport_.write(out_, tunnel && end_stream);

    if (tunnel) {
      tunnel_ = true;
      waiting_ = false;
      releaseInput();
      if (!pending_.empty() || remote_half_closed_) scheduleResume();
    }
    if (end_stream) responseComplete(s);
  }

  void encodeData(ServerStream& s, Buffer& data, bool end_stream) {
    if (closed_ || !s.response_started_ || s.response_complete_) {
      data.drain(data.length());
      return;
    }
    s.body_.encode(out_, data, end_stream);
    if (s.body_.overflow) close_after_response_ = true;
    if (!out_.empty() || (end_stream && s.body_.mode == BodyMode::Raw)) {
      transport_.write(out_, end_stream && s.body_.mode == BodyMode::Raw);
    }
    if (end_stream) responseComplete(s);
  }

  void encodeTrailers(ServerStream& s, const TrailerMap& trailers) {
    if (closed_ || !s.response_started_ || s.response_complete_) return;
    if (s.body_.mode == BodyMode::Raw) {
      transport_.write(out_, true);  // a tunnel has no trailers: just the end
    } else {
      s.body_.encodeTrailers(out_, trailers);
      if (s.body_.overflow) close_after_response_ = true;
      if (!out_.empty()) transport_.write(out_, false);
    }
    responseComplete(s);
  }

  void resetStream(ServerStream& s, StreamResetReason reason) {
    (void)s;
    closed_ = true;
    pending_.clear();
    resetActive(reason);
    closeTransportSoon();
  }

  void streamReadDisable(StreamFlow& s, bool disable) { flowReadDisable(s, disable); }
  void setStreamCallbacks(StreamFlow& s, StreamCallbacks* callbacks) { flowSetCallbacks(s, callbacks, above_high_); }

 private:
  // ---- parser hooks ----

  void onMessageBeginHook() override {
    callbacks_.onRequestBegin();
    req_ = std::make_unique<RequestHeaders>();
    req_->entries().reserve(kReservedHeaders);
    cur_map_ = req_.get();
    url_ = &req_->path;
  }

  bool onHeadersCompleteHook() override {
    if (!checkFramingAtHeadersComplete()) return false;
    RequestHeaders& h = *req_;
    http10_ = parser_.http_minor == 0;
    req_connect_ = parser_.method == HTTP_CONNECT;
    req_head_ = parser_.method == HTTP_HEAD;
    req_upgrade_ = !req_connect_ && parser_.upgrade != 0;
    req_keep_alive_ = keepAliveRequested();
    h.method = llhttp_method_name(static_cast<llhttp_method_t>(parser_.method));
    h.scheme = "http";

    if (host_count_ > 1) return fail(400, "http1.multiple_host");
    if (host_count_ == 0 && !http10_) return fail(400, "http1.missing_host");
    if (!splitRequestTarget(h)) return false;
    if (req_upgrade_) {
      h.protocol = h.getJoined("upgrade");
      if (h.protocol.empty()) return fail(400, "http1.invalid_upgrade");
      if (headerNameEquals(h.protocol, "h2c")) {
        // An h2c upgrade offer (RFC 7540 3.2) is declined by ignoring it, as Envoy does: no tunnel, a plain
        // request that ends with its body. llhttp reads `upgrade` again after this hook, so clearing it
        // makes it parse the body and the next request as usual. Upgrade and Connection go with the
        // hop-by-hop headers below; HTTP2-Settings too, named in Connection or not.
        req_upgrade_ = false;
        parser_.upgrade = 0;
        h.protocol.clear();
        h.remove("http2-settings");
      }
    }
    if (host_count_ != 0 || hop_by_hop_seen_) {
      // Host becomes the authority (unless the target was absolute-form, which wins per RFC 9112 3.2.2).
      auto& entries = h.entries();
      for (auto it = entries.begin(); it != entries.end(); ++it) {
        if (classify(it->name) == HeaderKind::Host) {
          if (h.authority.empty()) h.authority = std::move(it->value);
          entries.erase(it);
          break;
        }
      }
      if (hop_by_hop_seen_) stripHopByHop(h, req_upgrade_);
    }
    if (h.authority.empty() && !http10_) return fail(400, "http1.empty_host");

    // A tunnel request (Upgrade, CONNECT) never ends with its headers: the tunnel bytes follow.
    const bool end_stream =
        !req_upgrade_ && !req_connect_ && (parser_.flags & F_CHUNKED) == 0 && parser_.content_length == 0;
    auto* s = new ServerStream(*this);
    active_ = s;
    if (go_away_next_) go_away_ = true;  // a drain began during the previous response
    s->request_complete_ = end_stream;
    end_delivered_ = end_stream;
    RequestDecoder& decoder = callbacks_.newStream(*s);
    if (active_ != s) return true;  // reset from inside newStream
    s->decoder_ = &decoder;
    decoder.decodeHeaders(std::move(req_), end_stream);
    return true;
  }

  bool onBodyHook(Buffer& data, bool end_stream) override {
    if (active_ == nullptr || active_->request_complete_) return true;  // stream gone: drop
    if (req_upgrade_ || req_connect_) end_stream = false;  // a tunnel request goes on after its body
    if (end_stream) {
      active_->request_complete_ = true;
      end_delivered_ = true;
    }
    active_->decoder_->decodeData(data, end_stream);
    return true;
  }

  bool onMessageCompleteHook() override {
    ServerStream* s = active_;
    const bool tunnel_request = req_upgrade_ || req_connect_;
    if (s != nullptr && !end_delivered_ && !tunnel_request) {
      end_delivered_ = true;
      s->request_complete_ = true;
      if (trailers_ != nullptr) {
        s->decoder_->decodeTrailers(std::move(trailers_));
      } else {
        body_.clear();
        s->decoder_->decodeData(body_, true);
      }
    }
    if (tunnel_request) {
      // Whatever follows belongs to the tunnel, if the response opens one.
      if (active_ != nullptr && !tunnel_) waiting_ = true;
      return true;
    }
    if (!req_keep_alive_) discard_input_ = true;
    if (active_ != nullptr) {
      if (active_->response_complete_) {
        finishStream();
      } else {
        waiting_ = true;
      }
    }
    return true;
  }

  bool parsingBlocked() const override { return waiting_ || closed_ || discard_input_ || tunnel_; }

  // Splits the request target into path / authority. Origin-form stays in `path`.
  bool splitRequestTarget(RequestHeaders& h) {
    std::string& url = h.path;
    if (url.empty()) return fail(400, "http1.invalid_url");
    if (req_connect_) {
      // authority-form: host:port
      if (url[0] == '/' || url.find_first_of("/?#@") != std::string::npos) return fail(400, "http1.invalid_connect_target");
      h.authority = std::move(url);
      url.clear();
      return true;
    }
    if (url[0] == '/') return true;
    if (url == "*") {
      if (parser_.method != HTTP_OPTIONS) return fail(400, "http1.invalid_url");
      return true;
    }
    // absolute-form: http(s)://authority[/path][?query]
    const size_t sep = url.find("://");
    if (sep == std::string::npos) return fail(400, "http1.invalid_url");
    const std::string_view scheme(url.data(), sep);
    if (!headerNameEquals(scheme, "http") && !headerNameEquals(scheme, "https")) {
      return fail(400, "http1.invalid_url_scheme");
    }
    const size_t auth_begin = sep + 3;
    size_t auth_end = url.find_first_of("/?#", auth_begin);
    if (auth_end == std::string::npos) auth_end = url.size();
    std::string_view authority(url.data() + auth_begin, auth_end - auth_begin);
    if (authority.empty() || authority.find('@') != std::string_view::npos) return fail(400, "http1.invalid_url");
    h.authority.assign(authority);
    if (auth_end == url.size()) {
      url.assign("/");
    } else if (url[auth_end] == '/') {
      url.erase(0, auth_end);
    } else {
      url.erase(0, auth_end);
      url.insert(0, "/");
    }
    return true;
  }

  bool processInput(Buffer& in, CodecError& error) {
    if (!parse(in)) {
      in.drain(in.length());
      pending_.clear();
      error = error_;
      return false;
    }
    if (in.empty()) return true;
    if (closed_ || discard_input_) {
      in.drain(in.length());
      return true;
    }
    if (tunnel_) {
      deliverTunnel(in);
      return true;
    }
    // Waiting for the response: hold the rest and stop reading until it completes.
    if (&in != &pending_) pending_.move(in);
    holdInput();
    return true;
  }

  void deliverTunnel(Buffer& data) {
    if (data.empty()) return;
    if (active_ == nullptr || active_->request_complete_) {
      data.drain(data.length());
      return;
    }
    body_.move(data);
    active_->decoder_->decodeData(body_, false);
    body_.clear();
  }

  void holdInput() {
    if (!input_held_) {
      input_held_ = true;
      transport_.readDisable(true);
    }
  }
  void releaseInput() {
    if (input_held_) {
      input_held_ = false;
      transport_.readDisable(false);
    }
  }

  void scheduleResume() {
    if (resume_timer_ == nullptr) resume_timer_ = dispatcher_.createTimer([this] { onResume(); });
    resume_timer_->enable(0);
  }

  void onResume() {
    if (closed_ || failed_) return;
    if (tunnel_) {
      deliverTunnel(pending_);
      if (remote_half_closed_) onRemoteHalfClose();
      return;
    }
    if (pending_.empty()) return;
    if (waiting_) return;
    CodecError error;
    if (!processInput(pending_, error)) {
      if (deferred_error_handler_) {
        deferred_error_handler_(error);
      } else {
        sendErrorResponse(error);
      }
    }
  }

  void responseComplete(ServerStream& s) {
    s.response_complete_ = true;
    if (close_after_response_ || (go_away_ && !tunnel_)) {
      // The stream completed: it leaves before the close, which comes after the caller's stack unwinds.
      closed_ = true;
      pending_.clear();
      finishStream();
      closeTransportSoon();
      return;
    }
    if (tunnel_) {
      if (s.request_complete_) finishStream();
      return;
    }
    if (!s.request_complete_) return;  // cannot happen: such a response closes (close_after_response_)
    if (waiting_) {
      // The request is complete at the llhttp level too: parsing may go on.
      waiting_ = false;
      finishStream();
      releaseInput();
      if (!pending_.empty()) scheduleResume();
    }
    // Otherwise the response completed inside a decode callback; onMessageCompleteHook finishes the stream.
  }

  void finishStream() {
    if (active_ == nullptr) return;
    detachActive();
    close_after_response_ = false;
  }

  void detachActive() { detachStream(active_); }
  void resetActive(StreamResetReason reason) { resetStreamOf(active_, reason); }

  ServerConnectionCallbacks& callbacks_;
  std::function<void(const CodecError&)> deferred_error_handler_;
  RequestHeadersPtr req_;
  ServerStream* active_ = nullptr;
  Buffer pending_;  // bytes after a complete request, held until its response completes
  Buffer out_;      // reused for every write
  event::TimerPtr resume_timer_;

  // Facts about the current request.
  bool http10_ = false;
  bool req_head_ = false;
  bool req_connect_ = false;
  bool req_upgrade_ = false;
  bool req_keep_alive_ = true;

  bool waiting_ = false;         // request complete, response not: parsing is on hold
  bool tunnel_ = false;          // after 101 / CONNECT 2xx: bytes are stream data
  bool closed_ = false;          // closing or closed: nothing more is read or written
  bool discard_input_ = false;   // the client said this was its last request
  bool close_after_response_ = false;
  bool go_away_ = false;
  bool go_away_next_ = false;  // a goAway() came while a response was already out: the next one closes
  bool input_held_ = false;      // we readDisable(true)d the transport for pipelining
  bool remote_half_closed_ = false;
  bool above_high_ = false;
};

void ServerStream::encode1xxHeaders(const ResponseHeaders& headers) {
  if (conn_ != nullptr) conn_->encode1xx(*this, headers);
}
void ServerStream::encodeHeaders(const ResponseHeaders& headers, bool end_stream) {
  if (conn_ != nullptr) conn_->encodeHeaders(*this, headers, end_stream);
}
void ServerStream::encodeData(Buffer& data, bool end_stream) {
  if (conn_ != nullptr) {
    conn_->encodeData(*this, data, end_stream);
  } else {
    data.drain(data.length());
  }
}
void ServerStream::encodeTrailers(const TrailerMap& trailers) {
  if (conn_ != nullptr) conn_->encodeTrailers(*this, trailers);
}
void ServerStream::setCallbacks(StreamCallbacks* callbacks) {
  if (conn_ != nullptr) {
    conn_->setStreamCallbacks(*this, callbacks);
  } else {
    callbacks_ = callbacks;
  }
}
void ServerStream::resetStream(StreamResetReason reason) {
  if (conn_ != nullptr) conn_->resetStream(*this, reason);
}
void ServerStream::readDisable(bool disable) {
  if (conn_ != nullptr) conn_->streamReadDisable(*this, disable);
}

// ---------------------------------------------------------------------------------------------------------------
// Client.

class ClientConnectionImpl;

class ClientStream : public RequestEncoder,
                     public Stream,
                     public event::DeferredDeletable,
                     public StreamFlow,
                     public common::Pooled<ClientStream> {
 public:
  ClientStream(ClientConnectionImpl& conn, ResponseDecoder& decoder) : conn_(&conn), decoder_(&decoder) {}

  void encodeHeaders(const RequestHeaders& headers, bool end_stream) override;
  void encodeData(Buffer& data, bool end_stream) override;
  void encodeTrailers(const TrailerMap& trailers) override;
  Stream& stream() override { return *this; }

  void setCallbacks(StreamCallbacks* callbacks) override;
  void resetStream(StreamResetReason reason) override;
  void readDisable(bool disable) override;

  ClientConnectionImpl* conn_;
  ResponseDecoder* decoder_;
  BodyEncoder body_;
  bool request_started_ = false;
  bool request_complete_ = false;
  bool response_complete_ = false;
};

class ClientConnectionImpl final : public Http1ClientConnection, public ParserConnection {
 public:
  ClientConnectionImpl(CodecTransport& transport, ClientConnectionCallbacks& callbacks, const CodecSettings& settings)
      : ParserConnection(transport, settings, true), callbacks_(callbacks) {}

  ~ClientConnectionImpl() override {
    if (active_ != nullptr) detachActive();
  }

  // Connection
  bool dispatch(Buffer& data, CodecError& error) override {
    if (failed_) {
      data.drain(data.length());
      error = error_;
      return false;
    }
    if (closed_ || data.empty()) {
      data.drain(data.length());
      return true;
    }
    if (active_ != nullptr) response_started_ = true;
    if (tunnel_) {
      deliverTunnel(data);
      return true;
    }
    if (active_ == nullptr) return protocolError(data, error, "http1.unexpected_response_data");
    stop_parsing_ = false;
    if (!parse(data)) {
      data.drain(data.length());
      reusable_ = false;
      error = error_;
      if (active_ != nullptr) resetActive(StreamResetReason::ProtocolError);
      return false;
    }
    if (!data.empty()) {
      if (tunnel_) {
        deliverTunnel(data);
      } else if (!closed_) {
        // Bytes after a complete response, before any new request was sent: the peer is out of step.
        return protocolError(data, error, "http1.unexpected_response_data");
      } else {
        data.drain(data.length());
      }
    }
    return true;
  }

  Protocol protocol() const override { return Protocol::Http11; }
  void goAway() override { reusable_ = false; }

  void onUnderlyingConnectionAboveWriteBufferHighWatermark() override {
    above_high_ = true;
    if (active_ != nullptr && active_->callbacks_ != nullptr) active_->callbacks_->onAboveWriteBufferHighWatermark();
  }
  void onUnderlyingConnectionBelowWriteBufferLowWatermark() override {
    above_high_ = false;
    if (active_ != nullptr && active_->callbacks_ != nullptr) active_->callbacks_->onBelowWriteBufferLowWatermark();
  }

  void onTransportClosed() override {
    closed_ = true;
    reusable_ = false;
    if (active_ == nullptr) return;
    if (endCloseDelimitedResponse()) return;
    resetActive(StreamResetReason::ConnectionTermination);
  }

  size_t activeStreams() const override { return active_ != nullptr ? 1 : 0; }

  // ClientConnection
  RequestEncoder& newStream(ResponseDecoder& decoder) override {
    // canOpenStream() is the caller's check; a second stream on a busy connection would corrupt both.
    if (active_ != nullptr) {
      reusable_ = false;
      resetActive(StreamResetReason::LocalReset);
    }
    auto* s = new ClientStream(*this, decoder);
    active_ = s;
    response_started_ = false;
    headers_delivered_ = false;
    close_delimited_ = false;
    informational_ = false;
    req_head_ = req_connect_ = req_upgrade_ = false;
    return *s;
  }

  bool canOpenStream() const override { return active_ == nullptr && reusable_ && !closed_ && !failed_; }

  // Http1ClientConnection
  bool responseStarted() const override { return response_started_; }

  void onRemoteHalfClose() override {
    if (active_ == nullptr) return;
    reusable_ = false;
    if (tunnel_) {
      if (active_->response_complete_) return;
      ClientStream* s = active_;
      s->response_complete_ = true;
      body_.clear();
      s->decoder_->decodeData(body_, true);
      body_.clear();
      if (active_ == s && s->request_complete_) finishStream();
      return;
    }
    if (endCloseDelimitedResponse()) return;
    // No more response bytes can come: an unfinished response is lost. responseStarted() tells the pool
    // whether the request may be retried (the keep-alive race: the upstream closed an idle connection as we
    // reused it).
    closed_ = true;
    resetActive(StreamResetReason::ConnectionTermination);
  }

  // ---- called by ClientStream ----

  void encodeHeaders(ClientStream& s, const RequestHeaders& h, bool end_stream) {
    if (s.request_started_ || s.request_complete_) return;
    s.request_started_ = true;
    req_head_ = h.method == "HEAD";
    req_connect_ = h.method == "CONNECT";

    out_.add(h.method);
    out_.add(" ", 1);
    if (req_connect_) {
      out_.add(h.authority);
    } else if (h.path.empty()) {
      out_.add("/", 1);
    } else {
      out_.add(h.path);
    }
    out_.add(" HTTP/1.1\r\n", 11);
    if (!h.authority.empty()) addHeaderLine(out_, "host", h.authority);
    bool have_cl = false;
    uint64_t cl = 0;
    for (const auto& e : h.entries()) {
      switch (classify(e.name)) {
        case HeaderKind::Host:
          if (!h.authority.empty()) continue;
          break;
        case HeaderKind::Connection:
        case HeaderKind::KeepAlive:
        case HeaderKind::ProxyConnection:
        case HeaderKind::TransferEncoding: continue;
        case HeaderKind::ContentLength:
          if (have_cl || !parseContentLength(trimOws(e.value), cl)) continue;
          have_cl = true;
          break;
        case HeaderKind::Upgrade:
          if (req_connect_) continue;
          req_upgrade_ = true;
          break;
        default: break;
      }
      addHeaderLine(out_, e.name, e.value);
    }
    if (have_cl) {
      s.body_.mode = BodyMode::ContentLength;
      s.body_.remaining = cl;
    } else if (req_connect_ || req_upgrade_) {
      s.body_.mode = BodyMode::Raw;  // optimistic tunnel bytes, unframed
    } else if (end_stream) {
      if (bodyCapableMethod(h.method)) out_.add("content-length: 0\r\n");
      s.body_.mode = BodyMode::None;
    } else {
      out_.add("transfer-encoding: chunked\r\n");
      s.body_.mode = BodyMode::Chunked;
    }
    if (req_upgrade_) out_.add("connection: upgrade\r\n");
    out_.add("\r\n", 2);
    transport_.write(out_, false);
    if (end_stream) requestComplete(s);
  }

  void encodeData(ClientStream& s, Buffer& data, bool end_stream) {
    if (!s.request_started_ || s.request_complete_ || closed_) {
      data.drain(data.length());
      return;
    }
    s.body_.encode(out_, data, end_stream);
    if (s.body_.overflow) reusable_ = false;
    const bool half_close = end_stream && tunnel_;
    if (!out_.empty() || half_close) transport_.write(out_, half_close);
    if (end_stream) requestComplete(s);
  }

  void encodeTrailers(ClientStream& s, const TrailerMap& trailers) {
    if (!s.request_started_ || s.request_complete_ || closed_) return;
    if (s.body_.mode == BodyMode::Raw) {
      if (tunnel_) transport_.write(out_, true);
    } else {
      s.body_.encodeTrailers(out_, trailers);
      if (s.body_.overflow) reusable_ = false;
      if (!out_.empty()) transport_.write(out_, false);
    }
    requestComplete(s);
  }

  void resetStream(ClientStream& s, StreamResetReason reason) {
    (void)s;
    closed_ = true;
    reusable_ = false;
    resetActive(reason);
    closeTransportSoon();
  }

  void streamReadDisable(StreamFlow& s, bool disable) { flowReadDisable(s, disable); }
  void setStreamCallbacks(StreamFlow& s, StreamCallbacks* callbacks) { flowSetCallbacks(s, callbacks, above_high_); }

 private:
  void onMessageBeginHook() override {
    resp_ = std::make_unique<ResponseHeaders>();
    resp_->entries().reserve(kReservedHeaders);
    cur_map_ = resp_.get();
    url_ = nullptr;
  }

  bool onHeadersCompleteHook() override {
    if (!checkFramingAtHeadersComplete()) return false;
    ClientStream* s = active_;
    const uint32_t status = parser_.status_code;
    if (status < 100 || status > 599) return fail(502, "http1.invalid_status");
    if (status == 101 && !req_upgrade_) return fail(502, "http1.unexpected_101");
    ResponseHeaders& h = *resp_;
    h.status = status;
    if (hop_by_hop_seen_) stripHopByHop(h, status == 101);

    if (status < 200 && status != 101) {
      // 100 Continue, 103 Early Hints...: no body; the final response follows.
      parser_.flags |= F_SKIPBODY;
      informational_ = true;
      s->decoder_->decode1xxHeaders(std::move(resp_));
      return true;
    }
    bool end_stream;
    if (status == 101 || (req_connect_ && status >= 200 && status < 300)) {
      tunnel_pending_ = true;
      parser_.flags |= F_SKIPBODY;
      end_stream = false;
      reusable_ = false;
    } else if (req_head_ || status == 204 || status == 304) {
      parser_.flags |= F_SKIPBODY;
      end_stream = true;
    } else if ((parser_.flags & F_CHUNKED) != 0) {
      end_stream = false;
    } else if ((parser_.flags & F_CONTENT_LENGTH) != 0) {
      end_stream = parser_.content_length == 0;
    } else {
      close_delimited_ = true;  // the body runs until the upstream closes
      end_stream = false;
      reusable_ = false;
    }
    if (!keepAliveRequested()) reusable_ = false;
    if (req_upgrade_ || req_connect_) reusable_ = false;  // refused tunnels may have sent optimistic bytes
    headers_delivered_ = true;
    end_delivered_ = end_stream;
    if (end_stream) s->response_complete_ = true;
    s->decoder_->decodeHeaders(std::move(resp_), end_stream);
    return true;
  }

  bool onBodyHook(Buffer& data, bool end_stream) override {
    ClientStream* s = active_;
    if (s == nullptr || s->response_complete_) return true;
    if (end_stream) {
      end_delivered_ = true;
      s->response_complete_ = true;
    }
    s->decoder_->decodeData(data, end_stream);
    return true;
  }

  bool onMessageCompleteHook() override {
    if (informational_) {
      informational_ = false;
      return true;  // keep parsing: the final response follows
    }
    stop_parsing_ = true;  // a response never shares a read with what follows it (except tunnel bytes)
    if (tunnel_pending_) {
      tunnel_pending_ = false;
      tunnel_ = true;
      return true;
    }
    ClientStream* s = active_;
    if (s == nullptr) return true;
    if (!end_delivered_) {
      end_delivered_ = true;
      s->response_complete_ = true;
      if (trailers_ != nullptr) {
        s->decoder_->decodeTrailers(std::move(trailers_));
      } else {
        body_.clear();
        s->decoder_->decodeData(body_, true);
      }
    }
    if (active_ == s) {
      if (!s->request_complete_) reusable_ = false;  // early response: the rest of the request is not sent
      finishStream();
    }
    return true;
  }

  bool parsingBlocked() const override { return active_ == nullptr || closed_ || tunnel_; }

  bool protocolError(Buffer& data, CodecError& error, std::string_view detail) {
    data.drain(data.length());
    reusable_ = false;
    fail(502, detail);
    error = error_;
    if (active_ != nullptr) resetActive(StreamResetReason::ProtocolError);
    return false;
  }

  bool endCloseDelimitedResponse() {
    ClientStream* s = active_;
    if (s == nullptr || !close_delimited_ || s->response_complete_ || tunnel_) return false;
    s->response_complete_ = true;
    end_delivered_ = true;
    body_.clear();
    s->decoder_->decodeData(body_, true);
    body_.clear();
    if (active_ == s) finishStream();
    return true;
  }

  void deliverTunnel(Buffer& data) {
    if (active_ == nullptr || active_->response_complete_) {
      data.drain(data.length());
      return;
    }
    body_.move(data);
    active_->decoder_->decodeData(body_, false);
    body_.clear();
  }

  void requestComplete(ClientStream& s) {
    s.request_complete_ = true;
    if (s.response_complete_ && active_ == &s && !tunnel_) finishStream();
  }

  void finishStream() {
    if (active_ == nullptr) return;
    detachActive();
    // The next response needs a fresh llhttp message; llhttp has already restarted after message complete.
    tunnel_ = false;
  }

  void detachActive() { detachStream(active_); }
  void resetActive(StreamResetReason reason) { resetStreamOf(active_, reason); }

  // HTTP/1 has no GOAWAY and no peer stream limit: nothing to tell the pool yet (clang: unused).
  [[maybe_unused]] ClientConnectionCallbacks& callbacks_;
  ResponseHeadersPtr resp_;
  ClientStream* active_ = nullptr;
  Buffer out_;

  bool req_head_ = false;
  bool req_connect_ = false;
  bool req_upgrade_ = false;

  bool response_started_ = false;
  bool headers_delivered_ = false;
  bool close_delimited_ = false;
  bool informational_ = false;
  bool tunnel_pending_ = false;
  bool tunnel_ = false;
  bool reusable_ = true;
  bool closed_ = false;
  bool above_high_ = false;
};

void ClientStream::encodeHeaders(const RequestHeaders& headers, bool end_stream) {
  if (conn_ != nullptr) conn_->encodeHeaders(*this, headers, end_stream);
}
void ClientStream::encodeData(Buffer& data, bool end_stream) {
  if (conn_ != nullptr) {
    conn_->encodeData(*this, data, end_stream);
  } else {
    data.drain(data.length());
  }
}
void ClientStream::encodeTrailers(const TrailerMap& trailers) {
  if (conn_ != nullptr) conn_->encodeTrailers(*this, trailers);
}
void ClientStream::setCallbacks(StreamCallbacks* callbacks) {
  if (conn_ != nullptr) {
    conn_->setStreamCallbacks(*this, callbacks);
  } else {
    callbacks_ = callbacks;
  }
}
void ClientStream::resetStream(StreamResetReason reason) {
  if (conn_ != nullptr) conn_->resetStream(*this, reason);
}
void ClientStream::readDisable(bool disable) {
  if (conn_ != nullptr) conn_->streamReadDisable(*this, disable);
}

}  // namespace

std::unique_ptr<ServerConnection> createServerConnection(CodecTransport& transport, ServerConnectionCallbacks& callbacks,
                                                         const CodecSettings& settings) {
  return std::make_unique<ServerConnectionImpl>(transport, callbacks, settings);
}

std::unique_ptr<ClientConnection> createClientConnection(CodecTransport& transport, ClientConnectionCallbacks& callbacks,
                                                         const CodecSettings& settings) {
  return std::make_unique<ClientConnectionImpl>(transport, callbacks, settings);
}

}  // namespace strait::http::http1
