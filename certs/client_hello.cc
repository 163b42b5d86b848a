#include "certs/client_hello.h"

#include <algorithm>
#include <cstdint>
#include <utility>

namespace strait::certs {
namespace {

constexpr uint8_t kContentTypeHandshake = 22;
constexpr uint8_t kHandshakeClientHello = 1;
constexpr size_t kRecordHeaderBytes = 5;
constexpr size_t kMaxRecordPayload = size_t{1} << 14;  // TLSPlaintext.length <= 2^14
constexpr size_t kHandshakeHeaderBytes = 4;             // msg_type(1) + uint24 length
constexpr size_t kRandomBytes = 32;
constexpr size_t kMaxSessionIdBytes = 32;

constexpr uint16_t kExtServerName = 0;
constexpr uint16_t kExtAlpn = 16;
constexpr uint16_t kExtSupportedVersions = 43;
constexpr uint8_t kNameTypeHostName = 0;
constexpr uint16_t kTls13 = 0x0304;

uint8_t byteAt(std::string_view s, size_t i) { return static_cast<uint8_t>(s[i]); }

char asciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

// A bounds-checked cursor over a byte string: every read either succeeds within the view or fails
// and leaves the cursor where it was.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}

  size_t remaining() const { return data_.size() - pos_; }
  bool empty() const { return remaining() == 0; }

  bool u8(uint8_t& v) {
    if (remaining() < 1) return false;
    v = byteAt(data_, pos_);
    pos_ += 1;
    return true;
  }
  bool u16(uint16_t& v) {
    if (remaining() < 2) return false;
    v = static_cast<uint16_t>((byteAt(data_, pos_) << 8) | byteAt(data_, pos_ + 1));
    pos_ += 2;
    return true;
  }
  bool bytes(size_t n, std::string_view& v) {
    if (remaining() < n) return false;
    v = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  // opaque<..2^8-1> and opaque<..2^16-1>: a length prefix, then that many bytes.
  bool vec8(std::string_view& v) {
    const size_t start = pos_;
    uint8_t n = 0;
    if (!u8(n) || !bytes(n, v)) {
      pos_ = start;
      return false;
    }
    return true;
  }
  bool vec16(std::string_view& v) {
    const size_t start = pos_;
    uint16_t n = 0;
    if (!u16(n) || !bytes(n, v)) {
      pos_ = start;
      return false;
    }
    return true;
  }

 private:
  std::string_view data_;
  size_t pos_ = 0;
};

// Reassembles the handshake message (header included) from consecutive handshake records.
// On Done, `message` views `storage` and holds exactly the ClientHello message.
ClientHelloResult reassemble(std::string_view data, std::string& storage, std::string_view& message) {
  storage.clear();
  size_t pos = 0;
  for (;;) {
    const size_t avail = data.size() - pos;
    // The first record decides "is this TLS at all"; a later record that is not a handshake record
    // (an alert, change_cipher_spec, application data, garbage) cuts the hello short.
    const ClientHelloResult wrong = pos == 0 ? ClientHelloResult::NotTls : ClientHelloResult::Malformed;
    if (avail >= 1 && byteAt(data, pos) != kContentTypeHandshake) return wrong;
    if (avail >= 2 && byteAt(data, pos + 1) != 3) return wrong;
    if (avail < kRecordHeaderBytes) return ClientHelloResult::NeedMore;

    const size_t record_len = (size_t{byteAt(data, pos + 3)} << 8) | byteAt(data, pos + 4);
    // Zero-length handshake fragments are forbidden (RFC 8446 5.1), as are records over 2^14.
    if (record_len == 0 || record_len > kMaxRecordPayload) return ClientHelloResult::Malformed;

    const size_t take = std::min(record_len, avail - kRecordHeaderBytes);
    storage.append(data.substr(pos + kRecordHeaderBytes, take));

    if (!storage.empty() && byteAt(storage, 0) != kHandshakeClientHello) return ClientHelloResult::Malformed;
    if (storage.size() >= kHandshakeHeaderBytes) {
      const size_t body_len = (size_t{byteAt(storage, 1)} << 16) | (size_t{byteAt(storage, 2)} << 8) |
                              byteAt(storage, 3);
      const size_t message_len = kHandshakeHeaderBytes + body_len;
      if (message_len > kMaxClientHelloBytes) return ClientHelloResult::Malformed;
      if (storage.size() >= message_len) {
        message = std::string_view(storage).substr(0, message_len);
        return ClientHelloResult::Done;
      }
    }
    if (take < record_len) return ClientHelloResult::NeedMore;  // this record is still arriving
    pos += kRecordHeaderBytes + record_len;
  }
}

// RFC 6066 3: ServerNameList server_name_list<1..2^16-1>; each ServerName is name_type + opaque.
bool parseServerName(std::string_view ext, ClientHelloInfo& info) {
  Reader r(ext);
  std::string_view list;
  if (!r.vec16(list) || !r.empty() || list.empty()) return false;
  Reader names(list);
  bool have_host_name = false;
  while (!names.empty()) {
    uint8_t name_type = 0;
    std::string_view name;
    if (!names.u8(name_type) || !names.vec16(name) || name.empty()) return false;
    if (name_type != kNameTypeHostName) continue;  // no other type is defined; skip it
    if (have_host_name) return false;               // at most one name per name_type
    have_host_name = true;
    // A DNS host name in ASCII: no NUL, space, control or 8-bit bytes.
    for (char c : name) {
      const auto b = static_cast<unsigned char>(c);
      if (b <= 0x20 || b >= 0x7f) return false;
    }
    info.server_name.resize(name.size());
    std::transform(name.begin(), name.end(), info.server_name.begin(), asciiLower);
  }
  return true;
}

// RFC 7301 3.1: ProtocolName protocol_name_list<2..2^16-1>; ProtocolName is opaque<1..2^8-1>.
bool parseAlpn(std::string_view ext, ClientHelloInfo& info) {
  Reader r(ext);
  std::string_view list;
  if (!r.vec16(list) || !r.empty() || list.empty()) return false;
  Reader protos(list);
  while (!protos.empty()) {
    std::string_view proto;
    if (!protos.vec8(proto) || proto.empty()) return false;
    info.alpn.emplace_back(proto);
  }
  return true;
}

// RFC 8446 4.2.1: ProtocolVersion versions<2..254> in a ClientHello.
bool parseSupportedVersions(std::string_view ext, ClientHelloInfo& info) {
  Reader r(ext);
  std::string_view list;
  if (!r.vec8(list) || !r.empty() || list.empty() || list.size() % 2 != 0) return false;
  Reader versions(list);
  while (!versions.empty()) {
    uint16_t v = 0;
    if (!versions.u16(v)) return false;
    if (v == kTls13) info.tls13_offered = true;
  }
  return true;
}

bool parseExtensions(std::string_view block, ClientHelloInfo& info) {
  Reader r(block);
  std::vector<uint16_t> seen;
  while (!r.empty()) {
    uint16_t type = 0;
    std::string_view ext;
    if (!r.u16(type) || !r.vec16(ext)) return false;
    seen.push_back(type);
    bool ok = true;
    switch (type) {
      case kExtServerName:
        ok = parseServerName(ext, info);
        break;
      case kExtAlpn:
        ok = parseAlpn(ext, info);
        break;
      case kExtSupportedVersions:
        ok = parseSupportedVersions(ext, info);
        break;
      default:
        break;
    }
    if (!ok) return false;
  }
  // RFC 8446 4.2 / RFC 5246 7.4.1.4: no extension type may appear twice.
  std::sort(seen.begin(), seen.end());
  return std::adjacent_find(seen.begin(), seen.end()) == seen.end();
}

// The ClientHello body (after the 4-byte handshake header).
bool parseBody(std::string_view body, ClientHelloInfo& info) {
  Reader r(body);
  uint16_t legacy_version = 0;
  std::string_view random, session_id, cipher_suites, compression_methods;
  if (!r.u16(legacy_version) || (legacy_version >> 8) != 3) return false;
  if (!r.bytes(kRandomBytes, random)) return false;
  if (!r.vec8(session_id) || session_id.size() > kMaxSessionIdBytes) return false;
  if (!r.vec16(cipher_suites) || cipher_suites.size() < 2 || cipher_suites.size() % 2 != 0) return false;
  if (!r.vec8(compression_methods) || compression_methods.empty()) return false;
  if (r.empty()) return true;  // a hello without extensions (allowed before TLS 1.3)
  std::string_view extensions;
  if (!r.vec16(extensions) || !r.empty()) return false;  // the block must end the message exactly
  return parseExtensions(extensions, info);
}

}  // namespace

ClientHelloResult parseClientHello(std::string_view data, ClientHelloInfo* out) {
  std::string storage;
  std::string_view message;
  const ClientHelloResult reassembled = reassemble(data, storage, message);
  if (reassembled != ClientHelloResult::Done) return reassembled;

  ClientHelloInfo info;
  if (!parseBody(message.substr(kHandshakeHeaderBytes), info)) return ClientHelloResult::Malformed;
  if (out != nullptr) *out = std::move(info);
  return ClientHelloResult::Done;
}

bool serverNameMatches(std::string_view pattern, std::string_view name) {
  if (pattern.empty() || name.empty()) return false;
  const auto equalsIgnoreCase = [](std::string_view a, std::string_view b) {
    return a.size() == b.size() &&
           std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return asciiLower(x) == asciiLower(y); });
  };
  if (pattern.size() > 2 && pattern[0] == '*' && pattern[1] == '.') {
    const std::string_view suffix = pattern.substr(1);  // ".example.com"
    if (name.size() <= suffix.size()) return false;
    const std::string_view head = name.substr(0, name.size() - suffix.size());
    if (!equalsIgnoreCase(name.substr(head.size()), suffix)) return false;
    // `head` must be one or more non-empty labels: "a" or "a.b", not "", ".a", "a." or "a..b".
    return head.front() != '.' && head.back() != '.' && head.find("..") == std::string_view::npos;
  }
  return equalsIgnoreCase(pattern, name);
}

}  // namespace strait::certs
