// Linked into the static build only (STRAIT_STATIC, proxy/CMakeLists.txt), with -Wl,--wrap for each
// function below.
//
// A static glibc still reaches the Name Service Switch for host, service and user look-ups: it dlopen()s
// libnss_*.so.2 of the machine it runs on, which must then be the very glibc version the binary was
// linked with (in a distroless or scratch image there is none at all). Strait's own names go through
// c-ares (DNS clusters), the xDS target is an IP literal (ipv4:/ipv6:) or a unix socket, and gRPC's
// DNS resolver is c-ares by default, so none of these should run. The wrappers make sure: numeric
// look-ups are served with AI_NUMERICHOST / AI_NUMERICSERV / NI_NUMERIC* (which never touch NSS) and
// anything that would need NSS fails at once with an error on stderr, instead of loading a libnss.
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pwd.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>

extern "C" {
int __real_getaddrinfo(const char* node, const char* service, const struct addrinfo* hints, struct addrinfo** res);
int __real_getnameinfo(const struct sockaddr* sa, socklen_t salen, char* host, socklen_t hostlen, char* serv,
                       socklen_t servlen, int flags);
}

namespace {

void refuse(const char* fn, const char* what) {
  static std::atomic<int> told{0};
  if (told.fetch_add(1) >= 8) return;  // a few lines, not a flood
  std::string line = std::string("strait (static build): ") + fn + "(" + (what ? what : "") +
                     ") refused: it would need glibc's NSS (libnss) at run time; use an IP literal, a unix "
                     "socket or a DNS cluster (c-ares)\n";
  ssize_t n = write(2, line.data(), line.size());
  (void)n;
}

bool numericHost(const char* node) {
  std::string s(node);
  if (auto pct = s.find('%'); pct != std::string::npos) s.resize(pct);  // IPv6 scope: if_nametoindex, no NSS
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

bool numericService(const char* service) {
  if (*service == '\0') return false;
  for (const char* p = service; *p; ++p) {
    if (*p < '0' || *p > '9') return false;
  }
  return true;
}

}  // namespace

extern "C" {

int __wrap_getaddrinfo(const char* node, const char* service, const struct addrinfo* hints, struct addrinfo** res) {
  struct addrinfo h;
  memset(&h, 0, sizeof h);
  if (hints != nullptr) {
    h = *hints;
  } else {
    h.ai_family = AF_UNSPEC;
    h.ai_flags = AI_V4MAPPED | AI_ADDRCONFIG;  // glibc's defaults for no hints
  }
  if (node != nullptr && !numericHost(node)) {
    refuse("getaddrinfo", node);
    return EAI_NONAME;
  }
  if (service != nullptr && !numericService(service)) {
    refuse("getaddrinfo service", service);
    return EAI_SERVICE;
  }
  h.ai_flags |= AI_NUMERICHOST;
  if (service != nullptr) h.ai_flags |= AI_NUMERICSERV;
  return __real_getaddrinfo(node, service, &h, res);
}

int __wrap_getnameinfo(const struct sockaddr* sa, socklen_t salen, char* host, socklen_t hostlen, char* serv,
                       socklen_t servlen, int flags) {
  return __real_getnameinfo(sa, salen, host, hostlen, serv, servlen, flags | NI_NUMERICHOST | NI_NUMERICSERV);
}

struct hostent* __wrap_gethostbyname(const char* name) {
  refuse("gethostbyname", name);
  h_errno = HOST_NOT_FOUND;
  return nullptr;
}

int __wrap_gethostbyname_r(const char* name, struct hostent*, char*, size_t, struct hostent** result, int* h_errnop) {
  refuse("gethostbyname_r", name);
  *result = nullptr;
  if (h_errnop != nullptr) *h_errnop = HOST_NOT_FOUND;
  return ENOENT;
}

struct servent* __wrap_getservbyname(const char* name, const char*) {
  refuse("getservbyname", name);
  return nullptr;
}

int __wrap_getservbyname_r(const char* name, const char*, struct servent*, char*, size_t, struct servent** result) {
  refuse("getservbyname_r", name);
  *result = nullptr;
  return ENOENT;
}

int __wrap_getservbyport_r(int, const char*, struct servent*, char*, size_t, struct servent** result) {
  refuse("getservbyport_r", "");
  *result = nullptr;
  return ENOENT;
}

int __wrap_getpwuid_r(uid_t, struct passwd*, char*, size_t, struct passwd** result) {
  refuse("getpwuid_r", "");
  *result = nullptr;
  return ENOENT;
}

int __wrap_getpwnam_r(const char* name, struct passwd*, char*, size_t, struct passwd** result) {
  refuse("getpwnam_r", name);
  *result = nullptr;
  return ENOENT;
}

}  // extern "C"
