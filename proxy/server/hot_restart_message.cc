#include "proxy/server/hot_restart_message.h"

#include "absl/strings/str_cat.h"

namespace strait::server::hot_restart {

namespace {

void putU8(std::string& out, uint8_t v) { out.push_back(static_cast<char>(v)); }
void putU16(std::string& out, uint16_t v) {
  for (int i = 0; i < 2; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void putU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void putU64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
bool putString(std::string& out, std::string_view s) {
  if (s.size() > 0xffff) return false;
  putU16(out, static_cast<uint16_t>(s.size()));
  out.append(s);
  return true;
}

// Reads fields from a payload; every read checks what is left first.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool u8(uint8_t& v) {
    if (in_.size() < 1) return false;
    v = static_cast<uint8_t>(in_[0]);
    in_.remove_prefix(1);
    return true;
  }
  bool u16(uint16_t& v) {
    uint64_t x = 0;
    if (!le(2, x)) return false;
    v = static_cast<uint16_t>(x);
    return true;
  }
  bool u32(uint32_t& v) {
    uint64_t x = 0;
    if (!le(4, x)) return false;
    v = static_cast<uint32_t>(x);
    return true;
  }
  bool u64(uint64_t& v) { return le(8, v); }
  bool str(std::string& s) {
    uint16_t n = 0;
    if (!u16(n) || in_.size() < n) return false;
    s.assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  bool empty() const { return in_.empty(); }

 private:
  bool le(size_t n, uint64_t& v) {
    if (in_.size() < n) return false;
    v = 0;
    for (size_t i = 0; i < n; ++i) v |= uint64_t(static_cast<uint8_t>(in_[i])) << (8 * i);
    in_.remove_prefix(n);
    return true;
  }
  std::string_view in_;
};

const char* typeName(Type t) {
  switch (t) {
    case Type::Hello: return "Hello";
    case Type::HelloReply: return "HelloReply";
    case Type::GetSockets: return "GetSockets";
    case Type::Sockets: return "Sockets";
    case Type::GetStats: return "GetStats";
    case Type::Stats: return "Stats";
    case Type::Drain: return "Drain";
    case Type::DrainReply: return "DrainReply";
  }
  return "?";
}

size_t counterSize(const std::pair<std::string, uint64_t>& c) { return 2 + c.first.size() + 8; }

}  // namespace

absl::StatusOr<std::string> encode(const Message& m) {
  std::string payload;
  switch (m.type) {
    case Type::Hello:
      putU32(payload, m.epoch);
      break;
    case Type::HelloReply:
      putU32(payload, m.epoch);
      putU32(payload, m.pid);
      break;
    case Type::GetSockets:
      putU8(payload, static_cast<uint8_t>(m.kind));
      if (!putString(payload, m.address) || !putString(payload, m.name)) {
        return absl::InvalidArgumentError("GetSockets: address or name longer than 65535 bytes");
      }
      break;
    case Type::Sockets:
      if (m.count > kMaxFdsPerMessage) return absl::InvalidArgumentError("Sockets: too many descriptors");
      putU8(payload, m.flags);
      putU32(payload, m.count);
      break;
    case Type::Stats:
      putU8(payload, m.flags);
      for (const auto& [name, value] : m.counters) {
        if (!putString(payload, name)) return absl::InvalidArgumentError("Stats: a name longer than 65535 bytes");
        putU64(payload, value);
      }
      break;
    case Type::GetStats:
    case Type::Drain:
    case Type::DrainReply:
      break;
  }
  if (payload.size() > kMaxPayload) {
    return absl::InvalidArgumentError(absl::StrCat(typeName(m.type), ": payload of ", payload.size(), " bytes exceeds ",
                                                   kMaxPayload));
  }
  std::string out;
  out.reserve(kHeaderSize + payload.size());
  putU32(out, kMagic);
  putU8(out, kVersion);
  putU8(out, static_cast<uint8_t>(m.type));
  putU16(out, 0);
  putU32(out, static_cast<uint32_t>(payload.size()));
  out += payload;
  return out;
}

absl::StatusOr<Message> decode(std::string_view frame) {
  if (frame.size() < kHeaderSize) {
    return absl::InvalidArgumentError(absl::StrCat("truncated header (", frame.size(), " bytes)"));
  }
  Reader h(frame.substr(0, kHeaderSize));
  uint32_t magic = 0, length = 0;
  uint8_t version = 0, type = 0;
  uint16_t reserved = 0;
  h.u32(magic);
  h.u8(version);
  h.u8(type);
  h.u16(reserved);
  h.u32(length);
  if (magic != kMagic) return absl::InvalidArgumentError("bad magic (not a Strait hot restart message)");
  if (version != kVersion) {
    return absl::InvalidArgumentError(absl::StrCat("version ", version, " (this Strait speaks ", kVersion, ")"));
  }
  if (type < static_cast<uint8_t>(Type::Hello) || type > static_cast<uint8_t>(Type::DrainReply)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown message type ", type));
  }
  if (reserved != 0) return absl::InvalidArgumentError("reserved header bytes are not zero");
  if (length > kMaxPayload) return absl::InvalidArgumentError(absl::StrCat("payload length ", length, " too large"));
  if (frame.size() != kHeaderSize + length) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload length ", length, " but ", frame.size() - kHeaderSize, " bytes follow the header"));
  }
  Message m;
  m.type = static_cast<Type>(type);
  Reader r(frame.substr(kHeaderSize));
  bool ok = true;
  switch (m.type) {
    case Type::Hello:
      ok = r.u32(m.epoch);
      break;
    case Type::HelloReply:
      ok = r.u32(m.epoch) && r.u32(m.pid);
      break;
    case Type::GetSockets: {
      uint8_t kind = 0;
      ok = r.u8(kind) && r.str(m.address) && r.str(m.name);
      if (ok && kind > static_cast<uint8_t>(SocketKind::Local)) {
        return absl::InvalidArgumentError(absl::StrCat("GetSockets: unknown socket kind ", kind));
      }
      m.kind = static_cast<SocketKind>(kind);
      break;
    }
    case Type::Sockets:
      ok = r.u8(m.flags) && r.u32(m.count);
      if (ok && m.count > kMaxFdsPerMessage) {
        return absl::InvalidArgumentError(absl::StrCat("Sockets: ", m.count, " descriptors is too many"));
      }
      break;
    case Type::Stats:
      ok = r.u8(m.flags);
      while (ok && !r.empty()) {
        std::pair<std::string, uint64_t> c;
        ok = r.str(c.first) && r.u64(c.second);
        if (ok) m.counters.push_back(std::move(c));
      }
      break;
    case Type::GetStats:
    case Type::Drain:
    case Type::DrainReply:
      break;
  }
  if (!ok) return absl::InvalidArgumentError(absl::StrCat(typeName(m.type), ": a field runs past the payload"));
  if (!r.empty()) return absl::InvalidArgumentError(absl::StrCat(typeName(m.type), ": bytes left after the last field"));
  return m;
}

std::vector<Message> statsMessages(const std::vector<std::pair<std::string, uint64_t>>& counters, bool final_flag) {
  std::vector<Message> out;
  Message cur;
  cur.type = Type::Stats;
  size_t size = 1;  // the flags byte
  for (const auto& c : counters) {
    if (counterSize(c) + 1 > kMaxPayload) continue;  // a name no message can carry (65 KB): left out
    if (size + counterSize(c) > kMaxPayload) {
      out.push_back(std::move(cur));
      cur = Message{};
      cur.type = Type::Stats;
      size = 1;
    }
    size += counterSize(c);
    cur.counters.push_back(c);
  }
  out.push_back(std::move(cur));
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].flags = static_cast<uint8_t>((i + 1 < out.size() ? kMore : 0) | (final_flag ? kFinal : 0));
  }
  return out;
}

}  // namespace strait::server::hot_restart
