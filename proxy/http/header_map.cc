#include "proxy/http/header_map.h"

namespace strait::http {

std::string toLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lowerAscii(c);
  return out;
}

void HeaderMap::add(std::string_view name, std::string_view value) {
  entries_.push_back(Entry{std::string(name), std::string(value)});
}

void HeaderMap::set(std::string_view name, std::string_view value) {
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (headerNameEquals(it->name, name)) {
      it->value.assign(value);
      // Drop any later duplicates.
      for (auto jt = it + 1; jt != entries_.end();) {
        if (headerNameEquals(jt->name, name)) {
          jt = entries_.erase(jt);
        } else {
          ++jt;
        }
      }
      return;
    }
  }
  add(name, value);
}

const std::string* HeaderMap::get(std::string_view name) const {
  for (const auto& e : entries_) {
    if (headerNameEquals(e.name, name)) return &e.value;
  }
  return nullptr;
}

std::string HeaderMap::getJoined(std::string_view name) const {
  std::string out;
  for (const auto& e : entries_) {
    if (!headerNameEquals(e.name, name)) continue;
    if (!out.empty()) out += ", ";
    out += e.value;
  }
  return out;
}

size_t HeaderMap::count(std::string_view name) const {
  size_t n = 0;
  for (const auto& e : entries_) n += headerNameEquals(e.name, name) ? 1 : 0;
  return n;
}

size_t HeaderMap::remove(std::string_view name) {
  size_t before = entries_.size();
  std::erase_if(entries_, [&](const Entry& e) { return headerNameEquals(e.name, name); });
  return before - entries_.size();
}

size_t HeaderMap::byteSize() const {
  size_t n = 0;
  for (const auto& e : entries_) n += e.name.size() + e.value.size();
  return n;
}

const char* statusReason(uint32_t status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

}  // namespace strait::http
