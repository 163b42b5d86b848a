#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "certs/client_hello.h"

using strait::certs::ClientHelloInfo;
using strait::certs::ClientHelloResult;
using strait::certs::kMaxClientHelloBytes;
using strait::certs::parseClientHello;
using strait::certs::serverNameMatches;

namespace {

// The first bytes `openssl s_client -connect 127.0.0.1:PORT -servername foo.example -alpn h2,http/1.1`
// (OpenSSL 3.0.19, Debian 12) sent to a plain socket server: one record of 335 bytes.
constexpr const char* kOpensslHelloHex =
    "160301014a010001460303fbd0280b3de102cee7b7e6694f1d4c67663c79731dfa95953768cc4d7b8c21ca20e1fd111d"
    "22caae65b8ac4e34e53a3112b060419087d6c04dba655c725377f881003e130213031301c02cc030009fcca9cca8ccaa"
    "c02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff010000bf"
    "00000010000e00000b666f6f2e6578616d706c65000b000403000102000a00160014001d0017001e0019001801000101"
    "010201030104002300000010000e000c02683208687474702f312e310016000000170000000d002a0028040305030603"
    "080708080809080a080b080408050806040105010601030303010302040205020602002b000908030403030302030100"
    "2d00020101003300260024001d002004db77ad02f8f62ff66821d670031c83498f392bdfb88ad7c0730160f8ed6853";

// In the capture's ClientHello body: version(2) random(32) session_id(1+32) cipher_suites(2+62)
// compression_methods(1+1); the extensions block starts here.
constexpr size_t kOpensslExtensionsOffset = 133;

std::string fromHex(std::string_view hex) {
  std::string out;
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(nibble(hex[i]) * 16 + nibble(hex[i + 1])));
  return out;
}

std::string u8(size_t v) { return std::string(1, static_cast<char>(v & 0xff)); }
std::string u16(size_t v) { return u8(v >> 8) + u8(v); }
std::string u24(size_t v) { return u8(v >> 16) + u16(v); }

std::string ext(uint16_t type, const std::string& data) { return u16(type) + u16(data.size()) + data; }
std::string sniExt(const std::string& name) { return ext(0, u16(name.size() + 3) + u8(0) + u16(name.size()) + name); }
std::string alpnExt(const std::vector<std::string>& protos) {
  std::string list;
  for (const auto& p : protos) list += u8(p.size()) + p;
  return ext(16, u16(list.size()) + list);
}
std::string versionsExt(const std::vector<uint16_t>& versions) {
  std::string list;
  for (uint16_t v : versions) list += u16(v);
  return ext(43, u8(list.size()) + list);
}

// A ClientHello body; `extensions` is the concatenated extensions, or nullptr for no extensions block.
std::string helloBody(const std::string* extensions, std::string session_id = std::string(32, 's'),
                      std::string suites = "\x13\x01\x13\x02", std::string compression = std::string(1, '\0')) {
  std::string b = "\x03\x03" + std::string(32, 'r');
  b += u8(session_id.size()) + session_id;
  b += u16(suites.size()) + suites;
  b += u8(compression.size()) + compression;
  if (extensions != nullptr) b += u16(extensions->size()) + *extensions;
  return b;
}
std::string helloBody(const std::string& extensions) { return helloBody(&extensions); }

std::string handshake(const std::string& body, uint8_t type = 1) { return u8(type) + u24(body.size()) + body; }

// Frames a handshake message into records of at most `fragment` payload bytes each.
std::string records(const std::string& hs, size_t fragment = 16384) {
  std::string out;
  for (size_t pos = 0; pos < hs.size(); pos += fragment) {
    const std::string part = hs.substr(pos, fragment);
    out += "\x16\x03\x01" + u16(part.size()) + part;
  }
  return out;
}
// Frames a handshake message into two records split at `at`.
std::string twoRecords(const std::string& hs, size_t at) {
  return "\x16\x03\x01" + u16(at) + hs.substr(0, at) + "\x16\x03\x03" + u16(hs.size() - at) + hs.substr(at);
}

ClientHelloResult parse(const std::string& bytes, ClientHelloInfo* info = nullptr) {
  return parseClientHello(bytes, info);
}

const std::string& openssl() {
  static const std::string bytes = fromHex(kOpensslHelloHex);
  return bytes;
}
std::string opensslHandshake() { return openssl().substr(5); }

}  // namespace

TEST_CASE("ClientHello: parses the hello openssl s_client sent", "[client_hello]") {
  REQUIRE(openssl().size() == 335);
  ClientHelloInfo info;
  REQUIRE(parse(openssl(), &info) == ClientHelloResult::Done);
  CHECK(info.server_name == "foo.example");
  CHECK(info.alpn == std::vector<std::string>{"h2", "http/1.1"});
  CHECK(info.tls13_offered);
}

TEST_CASE("ClientHello: every proper prefix needs more, the whole hello is done", "[client_hello]") {
  const std::string& hello = openssl();
  for (size_t n = 0; n < hello.size(); ++n) {
    INFO("prefix of " << n << " bytes");
    ClientHelloInfo info;
    info.server_name = "untouched";
    REQUIRE(parse(hello.substr(0, n), &info) == ClientHelloResult::NeedMore);
    REQUIRE(info.server_name == "untouched");
  }
  REQUIRE(parse(hello) == ClientHelloResult::Done);
  // Whatever follows the hello (the client's next flight) is not looked at.
  REQUIRE(parse(hello + std::string("\x14\x03\x03\x00\x01\x01", 6) + std::string(100, '\xff')) == ClientHelloResult::Done);
}

TEST_CASE("ClientHello: a hello split across two records is reassembled at every split point", "[client_hello]") {
  const std::string hs = opensslHandshake();
  for (size_t at = 1; at < hs.size(); ++at) {
    INFO("split at " << at);
    ClientHelloInfo info;
    REQUIRE(parse(twoRecords(hs, at), &info) == ClientHelloResult::Done);
    REQUIRE(info.server_name == "foo.example");
    REQUIRE(info.alpn == std::vector<std::string>{"h2", "http/1.1"});
  }
  // A handshake header split over the first record boundary, and each prefix of that stream.
  for (size_t at : {1, 2, 3, 4, 100}) {
    const std::string wire = twoRecords(hs, at);
    for (size_t n = 0; n < wire.size(); ++n) {
      INFO("split at " << at << ", prefix of " << n);
      REQUIRE(parse(wire.substr(0, n)) == ClientHelloResult::NeedMore);
    }
  }
}

TEST_CASE("ClientHello: many small records and the 64 KiB cap", "[client_hello]") {
  ClientHelloInfo info;
  REQUIRE(parse(records(opensslHandshake(), 7), &info) == ClientHelloResult::Done);
  REQUIRE(info.server_name == "foo.example");

  // Pad (an unknown extension) the hello to exactly the cap, then one byte over it.
  const std::string base = sniExt("big.example");
  const size_t fixed = 4 + helloBody(base + ext(21, "")).size();
  const std::string at_cap = handshake(helloBody(base + ext(21, std::string(kMaxClientHelloBytes - fixed, '\0'))));
  REQUIRE(at_cap.size() == kMaxClientHelloBytes);
  REQUIRE(parse(records(at_cap), &info) == ClientHelloResult::Done);
  REQUIRE(info.server_name == "big.example");
  const std::string over = handshake(helloBody(base + ext(21, std::string(kMaxClientHelloBytes - fixed + 1, '\0'))));
  // Malformed as soon as the handshake header is seen, without waiting for the rest.
  REQUIRE(parse(records(over).substr(0, 9)) == ClientHelloResult::Malformed);
  REQUIRE(parse(records(over)) == ClientHelloResult::Malformed);
}

TEST_CASE("ClientHello: record layer errors", "[client_hello]") {
  const std::string hs = opensslHandshake();
  // Record longer than 2^14, and an empty handshake record.
  REQUIRE(parse("\x16\x03\x01" + u16(16385) + hs) == ClientHelloResult::Malformed);
  REQUIRE(parse(std::string("\x16\x03\x01\x00\x00", 5) + records(hs)) == ClientHelloResult::Malformed);
  // A second record that is not a handshake record, or has a bad version, before the hello is complete.
  std::string wire = twoRecords(hs, 50);
  std::string alert = wire;
  alert[5 + 50] = '\x15';
  REQUIRE(parse(alert) == ClientHelloResult::Malformed);
  REQUIRE(parse(alert.substr(0, 5 + 50 + 1)) == ClientHelloResult::Malformed);
  std::string bad_version = wire;
  bad_version[5 + 50 + 1] = '\x02';
  REQUIRE(parse(bad_version) == ClientHelloResult::Malformed);
  // Not a client_hello (a ServerHello) and a handshake type known before the body arrives.
  REQUIRE(parse(records(handshake(helloBody(sniExt("a")), 2))) == ClientHelloResult::Malformed);
  REQUIRE(parse(std::string("\x16\x03\x01\x01\x00\x02", 6)) == ClientHelloResult::Malformed);
}

TEST_CASE("ClientHello: not TLS", "[client_hello]") {
  REQUIRE(parse("GET / HTTP/1.1\r\nHost: x\r\n\r\n") == ClientHelloResult::NotTls);
  REQUIRE(parse("G") == ClientHelloResult::NotTls);
  REQUIRE(parse("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == ClientHelloResult::NotTls);
  // An SSLv2-compatible ClientHello (2-byte header with the top bit set, msg_type 1, version 3.1).
  REQUIRE(parse(std::string("\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10", 11)) == ClientHelloResult::NotTls);
  // Content type 22 but not version 3.x.
  REQUIRE(parse(std::string("\x16\x02\x00\x00\x10", 5)) == ClientHelloResult::NotTls);
  REQUIRE(parse(std::string("\x16\xfe\xfd", 3)) == ClientHelloResult::NotTls);  // DTLS 1.2
  // Too little to tell yet.
  REQUIRE(parse("") == ClientHelloResult::NeedMore);
  REQUIRE(parse("\x16") == ClientHelloResult::NeedMore);
  REQUIRE(parse("\x16\x03") == ClientHelloResult::NeedMore);
}

TEST_CASE("ClientHello: a truncated body is malformed, except right before the extensions", "[client_hello]") {
  const std::string body = opensslHandshake().substr(4);
  for (size_t n = 0; n < body.size(); ++n) {
    INFO("body cut to " << n << " bytes");
    ClientHelloInfo info;
    const ClientHelloResult r = parse(records(handshake(body.substr(0, n))), &info);
    if (n == kOpensslExtensionsOffset) {
      REQUIRE(r == ClientHelloResult::Done);
      REQUIRE(info.server_name.empty());
      REQUIRE(info.alpn.empty());
      REQUIRE_FALSE(info.tls13_offered);
    } else {
      REQUIRE(r == ClientHelloResult::Malformed);
    }
  }
  // One byte of trailing garbage after the extensions block.
  REQUIRE(parse(records(handshake(body + "x"))) == ClientHelloResult::Malformed);
}

TEST_CASE("ClientHello: overlong and invalid lengths are malformed", "[client_hello]") {
  const std::string sni = sniExt("a.example");
  const auto hello = [](const std::string& body) { return parse(records(handshake(body))); };
  REQUIRE(hello(helloBody(sni)) == ClientHelloResult::Done);
  REQUIRE(hello(helloBody(&sni, std::string(33, 's'))) == ClientHelloResult::Malformed);  // session_id > 32
  REQUIRE(hello(helloBody(&sni, "")) == ClientHelloResult::Done);                         // empty session_id
  REQUIRE(hello(helloBody(&sni, "s", "\x13\x01\x13")) == ClientHelloResult::Malformed);   // odd suites
  REQUIRE(hello(helloBody(&sni, "s", "")) == ClientHelloResult::Malformed);               // no suites
  REQUIRE(hello(helloBody(&sni, "s", "\x13\x01", "")) == ClientHelloResult::Malformed);   // no compression
  {
    std::string body = helloBody(sni);
    body[0] = '\x02';  // legacy_version 2.3
    REQUIRE(hello(body) == ClientHelloResult::Malformed);
  }
  // The extensions block claims one byte more or less than there is.
  std::string body = helloBody(sni);
  const size_t ext_len_at = body.size() - sni.size() - 2;
  for (int delta : {-1, 1}) {
    std::string b = body;
    b.replace(ext_len_at, 2, u16(sni.size() + delta));
    REQUIRE(hello(b) == ClientHelloResult::Malformed);
  }
  // An extension whose length runs past the block; a block too short for an extension header.
  REQUIRE(hello(helloBody(u16(99) + u16(10) + "abc")) == ClientHelloResult::Malformed);
  REQUIRE(hello(helloBody(std::string("\x00", 1))) == ClientHelloResult::Malformed);
  REQUIRE(hello(helloBody(std::string("\x00\x63\x00", 3))) == ClientHelloResult::Malformed);
  // The handshake length claims more than the records carry: the record is complete, the hello is not.
  const std::string hs = handshake(helloBody(sni));
  std::string longer = hs;
  longer.replace(1, 3, u24(hs.size() - 4 + 1));
  REQUIRE(parse(records(longer)) == ClientHelloResult::NeedMore);
}

TEST_CASE("ClientHello: server_name extension", "[client_hello]") {
  const auto hello = [](const std::string& exts, ClientHelloInfo* info = nullptr) {
    return parse(records(handshake(helloBody(exts))), info);
  };
  ClientHelloInfo info;
  REQUIRE(hello(sniExt("Foo.EXAMPLE.com"), &info) == ClientHelloResult::Done);
  REQUIRE(info.server_name == "foo.example.com");

  // No SNI at all (but ALPN and versions): empty name.
  REQUIRE(hello(alpnExt({"h2"}) + versionsExt({0x0303}), &info) == ClientHelloResult::Done);
  REQUIRE(info.server_name.empty());
  REQUIRE(info.alpn == std::vector<std::string>{"h2"});
  REQUIRE_FALSE(info.tls13_offered);

  // An empty server_name extension body, an empty list, a list length that does not match.
  REQUIRE(hello(ext(0, "")) == ClientHelloResult::Malformed);
  REQUIRE(hello(ext(0, u16(0))) == ClientHelloResult::Malformed);
  REQUIRE(hello(ext(0, u16(7) + u8(0) + u16(3) + "abc")) == ClientHelloResult::Malformed);
  REQUIRE(hello(ext(0, u16(5) + u8(0) + u16(3) + "abc")) == ClientHelloResult::Malformed);
  REQUIRE(hello(ext(0, u16(6) + u8(0) + u16(4) + "abc")) == ClientHelloResult::Malformed);
  // An empty host name, a NUL, a space or an 8-bit byte in it.
  REQUIRE(hello(sniExt("")) == ClientHelloResult::Malformed);
  REQUIRE(hello(sniExt(std::string("a\0b", 3))) == ClientHelloResult::Malformed);
  REQUIRE(hello(sniExt("a b")) == ClientHelloResult::Malformed);
  REQUIRE(hello(sniExt("caf\xc3\xa9.example")) == ClientHelloResult::Malformed);
  // Two host_name entries in one list; an entry of another name type is skipped.
  REQUIRE(hello(ext(0, u16(12) + u8(0) + u16(3) + "abc" + u8(0) + u16(3) + "def")) == ClientHelloResult::Malformed);
  REQUIRE(hello(ext(0, u16(12) + u8(7) + u16(3) + "xyz" + u8(0) + u16(3) + "def"), &info) == ClientHelloResult::Done);
  REQUIRE(info.server_name == "def");
}

TEST_CASE("ClientHello: ALPN and supported_versions extensions", "[client_hello]") {
  const auto hello = [](const std::string& exts, ClientHelloInfo* info = nullptr) {
    return parse(records(handshake(helloBody(exts))), info);
  };
  ClientHelloInfo info;
  REQUIRE(hello(alpnExt({"http/1.1", "h2", "x"}) + versionsExt({0x0303, 0x0304}), &info) == ClientHelloResult::Done);
  REQUIRE(info.alpn == std::vector<std::string>{"http/1.1", "h2", "x"});
  REQUIRE(info.tls13_offered);

  REQUIRE(hello(alpnExt({})) == ClientHelloResult::Malformed);               // empty list
  REQUIRE(hello(alpnExt({"h2", ""})) == ClientHelloResult::Malformed);       // empty name
  REQUIRE(hello(ext(16, u16(4) + u8(2) + "h2")) == ClientHelloResult::Malformed);  // list overlong
  REQUIRE(hello(ext(16, u16(4) + u8(3) + "h2x")) == ClientHelloResult::Done);
  REQUIRE(hello(ext(16, u16(3) + u8(4) + "h2x")) == ClientHelloResult::Malformed);  // name past the list
  REQUIRE(hello(ext(16, u16(3) + u8(2) + "h2" + "z")) == ClientHelloResult::Malformed);  // trailing byte

  REQUIRE(hello(versionsExt({})) == ClientHelloResult::Malformed);
  REQUIRE(hello(ext(43, u8(3) + "\x03\x04\x03")) == ClientHelloResult::Malformed);  // odd length
  REQUIRE(hello(ext(43, u8(4) + "\x03\x04")) == ClientHelloResult::Malformed);      // past the extension
  REQUIRE(hello(versionsExt({0x7f1c, 0x0303}), &info) == ClientHelloResult::Done);
  REQUIRE_FALSE(info.tls13_offered);
}

TEST_CASE("ClientHello: duplicate extensions are malformed", "[client_hello]") {
  const auto hello = [](const std::string& exts) { return parse(records(handshake(helloBody(exts)))); };
  REQUIRE(hello(sniExt("a.example") + alpnExt({"h2"}) + sniExt("b.example")) == ClientHelloResult::Malformed);
  REQUIRE(hello(alpnExt({"h2"}) + alpnExt({"h2"})) == ClientHelloResult::Malformed);
  REQUIRE(hello(ext(0x1234, "x") + ext(23, "") + ext(0x1234, "")) == ClientHelloResult::Malformed);
  REQUIRE(hello(ext(0x1234, "x") + ext(0x1235, "")) == ClientHelloResult::Done);
}

TEST_CASE("ClientHello: corrupting any byte never reads out of bounds", "[client_hello]") {
  // A crash test (run it under -DSTRAIT_ASAN=ON): every byte of the capture replaced by a few values.
  const std::string& hello = openssl();
  size_t done = 0;
  for (size_t i = 0; i < hello.size(); ++i) {
    for (char v : {'\x00', '\x01', '\x7f', '\xff', static_cast<char>(hello[i] ^ 0x01)}) {
      std::string b = hello;
      b[i] = v;
      ClientHelloInfo info;
      if (parseClientHello(b, &info) == ClientHelloResult::Done) ++done;
    }
  }
  REQUIRE(done > 0);  // bytes of the random, cipher list, key share... do not matter
}

TEST_CASE("ClientHello: serverNameMatches exact and wildcard rules", "[client_hello]") {
  CHECK(serverNameMatches("foo.example.com", "foo.example.com"));
  CHECK(serverNameMatches("Foo.Example.COM", "foo.example.com"));
  CHECK(serverNameMatches("foo.example.com", "FOO.EXAMPLE.COM"));
  CHECK_FALSE(serverNameMatches("foo.example.com", "bar.example.com"));
  CHECK_FALSE(serverNameMatches("foo.example.com", "foo.example.com.evil"));

  CHECK(serverNameMatches("*.example.com", "a.example.com"));
  CHECK(serverNameMatches("*.example.com", "a.b.example.com"));
  CHECK(serverNameMatches("*.Example.com", "WWW.EXAMPLE.com"));
  CHECK_FALSE(serverNameMatches("*.example.com", "example.com"));
  CHECK_FALSE(serverNameMatches("*.example.com", ".example.com"));
  CHECK_FALSE(serverNameMatches("*.example.com", "a..example.com"));
  CHECK_FALSE(serverNameMatches("*.example.com", "aexample.com"));
  CHECK_FALSE(serverNameMatches("*.example.com", "a.example.org"));
  CHECK_FALSE(serverNameMatches("*.example.com", "a.example.com.org"));

  // Only a leading "*." is a wildcard; anything else is compared literally.
  CHECK_FALSE(serverNameMatches("*", "example.com"));
  CHECK(serverNameMatches("*", "*"));
  CHECK_FALSE(serverNameMatches("foo.*.com", "foo.bar.com"));
  CHECK_FALSE(serverNameMatches("*example.com", "aexample.com"));
  CHECK(serverNameMatches("*.example.com", "*.example.com"));  // "*" is a label like any other here
  CHECK_FALSE(serverNameMatches("", ""));
  CHECK_FALSE(serverNameMatches("", "a"));
  CHECK_FALSE(serverNameMatches("a", ""));
}
