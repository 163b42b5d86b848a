#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace strait::certs {

// What the tls_inspector listener filter learns from a peeked TLS ClientHello (RFC 8446 4.1.2,
// RFC 5246 7.4.1.2), without OpenSSL and without consuming the bytes.
struct ClientHelloInfo {
  std::string server_name;        // SNI host_name (ext 0, RFC 6066), lower-cased; empty if absent
  std::vector<std::string> alpn;  // ALPN protocol list (ext 16, RFC 7301) in the client's order
  bool tls13_offered = false;     // supported_versions (ext 43) lists 0x0304
};

enum class ClientHelloResult {
  NeedMore,   // `data` is a valid prefix of a ClientHello: peek again with more bytes
  Done,       // a complete, valid ClientHello: `out` is filled
  NotTls,     // the bytes are not a TLS handshake record (plaintext, SSLv2-compatible hello, ...)
  Malformed,  // a TLS handshake record, but not a valid ClientHello (or one over the size cap)
};

// The largest ClientHello handshake message accepted (4-byte handshake header + body); a larger one is
// Malformed. Record headers are not counted: a hello split into many small records takes 5 more bytes
// per record on the wire.
inline constexpr size_t kMaxClientHelloBytes = 64 * 1024;

// Peeks at the first bytes of a connection (always from its first byte; the parser keeps no state,
// so call it again on the whole, longer prefix after NeedMore).
//  - Records: content type 22 (handshake), version 0x03xx, length 1..2^14. The ClientHello may span
//    several consecutive handshake records; its bytes are reassembled across them. A record of any
//    other type before the hello is complete is Malformed.
//  - The first byte alone decides NotTls (anything but 22, which includes every SSLv2-compatible hello
//    since those start with a byte >= 0x80); a second byte other than 3 is NotTls too.
//  - Handshake type must be 1 (client_hello). Body: legacy_version 0x03xx, random, session_id (<= 32),
//    cipher_suites (even length >= 2), compression_methods (>= 1), then optionally an extensions block
//    that must fill the rest of the message exactly. A duplicate extension type is Malformed.
//    server_name: a non-empty list; at most one host_name (name_type 0) entry, 1..65535 printable ASCII
//    bytes (no NUL, space or control bytes); entries of other name types are skipped.
//    ALPN: a non-empty list of non-empty names. supported_versions: an even, non-empty list.
//  - Every length is checked against the bytes it claims; nothing past `data` is ever read. Bytes after
//    the ClientHello message (in its last record or after it) are not looked at.
// NeedMore: the record and handshake headers seen so far are valid and the hello is not complete yet
// (its body is checked once all of it is there). The caller gives up at its own peek limit (a few
// records' overhead above kMaxClientHelloBytes is enough for any hello this parser accepts).
// `out` is overwritten only on Done; it may be null (then the hello is only validated).
ClientHelloResult parseClientHello(std::string_view data, ClientHelloInfo* out);

// Envoy's filter_chain_match `server_names` rule for one pattern:
//  - an exact match, ASCII case-insensitive ("Foo.Example.com" matches "foo.example.COM");
//  - a leading-wildcard pattern "*.example.com" matches a name that ends in ".example.com" (any case)
//    and has at least one more non-empty label before it: "a.example.com" and "a.b.example.com" match,
//    "example.com" and ".example.com" do not.
// No other wildcard form exists: "*" and "foo.*.com" are compared literally. An empty pattern or name
// matches nothing.
bool serverNameMatches(std::string_view pattern, std::string_view name);

}  // namespace strait::certs
