#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

// The messages two Strait processes exchange over the hot restart socket (see hot_restart.h): a small
// versioned framing of our own. One message is one SOCK_SEQPACKET packet:
//   magic "STHR" (4 bytes) | version (1) | type (1) | reserved, 0 (2) | payload length (4, LE) | payload
// Payload fields are little-endian integers and strings (u16 length, then the bytes). A frame is
// checked whole before anything is read from it: a wrong magic, version or type, a length that is not
// the packet's, a field that runs past the payload, or bytes left over are errors; the caller logs the
// error and closes the socket.
namespace strait::server::hot_restart {

inline constexpr uint32_t kMagic = 0x52485453;  // "STHR" as little-endian bytes
inline constexpr uint8_t kVersion = 1;
inline constexpr size_t kHeaderSize = 12;
// A packet stays well below the kernel's default socket buffer (a SOCK_SEQPACKET message must fit it);
// counters and sockets that do not fit one message go in several, flagged kMore.
inline constexpr size_t kMaxPayload = 60 * 1024;
inline constexpr size_t kMaxFrame = kHeaderSize + kMaxPayload;
// Descriptors per message: below the kernel's SCM_MAX_FD (253).
inline constexpr uint32_t kMaxFdsPerMessage = 200;

enum class Type : uint8_t {
  Hello = 1,       // child -> parent: epoch
  HelloReply = 2,  // parent -> child: epoch, pid
  GetSockets = 3,  // child -> parent: kind, address (as configured), name (the listener's)
  Sockets = 4,     // parent -> child: flags, count; `count` descriptors ride along (SCM_RIGHTS)
  GetStats = 5,    // child -> parent: nothing
  Stats = 6,       // parent -> child: flags, then counters (name, value) until the payload ends
  Drain = 7,       // child -> parent: the child is ready; stop accepting, drain and exit
  DrainReply = 8,  // parent -> child: nothing
};

// GetSockets kinds: listener sockets (SO_REUSEPORT, one per worker), or the admin's and status ports'
// (one each, not SO_REUSEPORT: the parent stops accepting on it when it hands it over).
enum class SocketKind : uint8_t { Listener = 0, Local = 1 };

// Sockets / Stats flags.
inline constexpr uint8_t kMore = 1;   // another message of the same type follows
inline constexpr uint8_t kFinal = 2;  // Stats: the parent's counters will not change any more (it exits)

struct Message {
  Type type = Type::Hello;
  uint32_t epoch = 0;   // Hello, HelloReply
  uint32_t pid = 0;     // HelloReply
  SocketKind kind = SocketKind::Listener;  // GetSockets
  std::string address;  // GetSockets
  std::string name;     // GetSockets
  uint8_t flags = 0;    // Sockets, Stats
  uint32_t count = 0;   // Sockets: descriptors attached
  std::vector<std::pair<std::string, uint64_t>> counters;  // Stats
};

// The whole frame (header and payload). Fails if the payload would exceed kMaxPayload.
absl::StatusOr<std::string> encode(const Message& m);
// Parses exactly one frame (`frame` is the whole packet).
absl::StatusOr<Message> decode(std::string_view frame);
// Stats messages: counters split so that each message fits kMaxPayload (the last one without kMore).
// `final_flag` is set on every message (kFinal).
std::vector<Message> statsMessages(const std::vector<std::pair<std::string, uint64_t>>& counters, bool final_flag);

}  // namespace strait::server::hot_restart
