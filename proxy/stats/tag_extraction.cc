#include "proxy/stats/tag_extraction.h"

#include <algorithm>
#include <cstddef>
#include <initializer_list>

#include "re2/re2.h"

namespace strait::stats {

namespace {

bool isDigit(char c) { return c >= '0' && c <= '9'; }
bool allDigits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!isDigit(c)) return false;
  }
  return true;
}
bool startsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// The name being taken apart: `name` loses each value as it is found, `pattern` (the original name)
// gets "{tag}" in its place; where[i] is the position in `pattern` of name[i].
struct Work {
  Work(std::string_view stat_name, bool with_pattern, const TagRules* tag_rules)
      : name(stat_name), track(with_pattern), rules(tag_rules) {
    if (!track) return;
    pattern = stat_name;
    where.resize(stat_name.size());
    for (size_t i = 0; i < where.size(); ++i) where[i] = i;
  }
  std::string name;
  std::string pattern;
  std::vector<size_t> where;
  bool track;
  const TagRules* rules;
  TaggedName out;

  // Takes name[pos, pos+len) out as `tag`'s value, and `drop` more characters after it (the dot that
  // ended it; the pattern keeps those). False, and nothing taken, for a built-in tag the rules leave out.
  bool take(const char* tag, size_t pos, size_t len, size_t drop) {
    if (rules != nullptr && !rules->builtinAllowed(tag)) return false;
    takeAs(tag, pos, len, drop);
    return true;
  }
  void takeAs(const char* tag, size_t pos, size_t len, size_t drop) {
    out.tags.emplace_back(tag, name.substr(pos, len));
    if (!track) {
      name.erase(pos, len + drop);
      return;
    }
    const size_t ppos = where[pos];
    const std::string repl = std::string("{") + tag + "}";
    pattern.replace(ppos, len, repl);
    for (size_t j = pos + len; j < where.size(); ++j) where[j] = where[j] + repl.size() - len;
    eraseName(pos, len + drop);
  }
  // Removes characters from the name only.
  void eraseName(size_t pos, size_t n) {
    name.erase(pos, n);
    if (track) where.erase(where.begin() + static_cast<std::ptrdiff_t>(pos), where.begin() + static_cast<std::ptrdiff_t>(pos + n));
  }
};

// `<value>.` right after `head` when the value runs to a dot followed by one of `tails` (the stat's
// own sub-scopes), or else to the last dot: the length of the value, 0 if none.
size_t valueBeforeTail(std::string_view rest, std::initializer_list<std::string_view> tails) {
  size_t best = std::string_view::npos;
  for (std::string_view t : tails) {
    // ".<tail>." at a dot boundary, leftmost: a value with such a segment in its own name is rarer than
    // one with dots.
    for (size_t at = rest.find(t); at != std::string_view::npos; at = rest.find(t, at + 1)) {
      if (at > 0 && rest[at - 1] == '.' && at + t.size() < rest.size()) {
        if (at - 1 < best) best = at - 1;
        break;
      }
    }
  }
  if (best != std::string_view::npos) return best;
  const size_t last = rest.rfind('.');
  return last == std::string_view::npos ? 0 : last;
}

// "0.0.0.0_15001" or "[__1]_15001" at the start of `s`: its length, else 0.
size_t addressLength(std::string_view s) {
  size_t i = 0;
  if (!s.empty() && s[0] == '[') {
    const size_t close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != '_') return 0;
    i = close + 2;
  } else {
    for (int part = 0; part < 4; ++part) {
      size_t n = 0;
      while (i < s.size() && isDigit(s[i]) && n < 3) ++i, ++n;
      if (n == 0) return 0;
      if (part < 3) {
        if (i >= s.size() || s[i] != '.') return 0;
        ++i;
      }
    }
    if (i >= s.size() || s[i] != '_') return 0;
    ++i;
  }
  const size_t digits = i;
  while (i < s.size() && isDigit(s[i])) ++i;
  if (i == digits) return 0;
  if (i < s.size() && s[i] != '.') return 0;
  return i;
}

// The token after `head` (up to the next dot, which must exist) as `tag`.
bool takeToken(Work& w, size_t head_len, const char* tag) {
  const size_t dot = w.name.find('.', head_len);
  if (dot == std::string::npos || dot == head_len) return false;
  return w.take(tag, head_len, dot - head_len, 1);
}

void takeWorker(Work& w, size_t at) {
  // "worker_<n>." at `at`: the number goes, "worker_" stays (Envoy's name: server.worker_watchdog_miss).
  if (w.name.compare(at, 7, "worker_") != 0) return;
  const size_t num = at + 7;
  size_t end = num;
  while (end < w.name.size() && isDigit(w.name[end])) ++end;
  if (end == num || end >= w.name.size() || w.name[end] != '.') return;
  w.take("envoy_worker_id", num, end - num, 1);
}

}  // namespace

TaggedName extractTags(std::string_view stat_name, bool with_pattern) { return extractTags(stat_name, nullptr, with_pattern); }

std::string tagLabel(std::string_view tag_name) {
  std::string out(tag_name);
  for (size_t i = 0; i < out.size(); ++i) {
    const char c = out[i];
    const bool ok = c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (i > 0 && isDigit(c));
    if (!ok) out[i] = '_';
  }
  return out;
}

TaggedName extractTags(std::string_view stat_name, const TagRules* rules, bool with_pattern) {
  Work w(stat_name, with_pattern, rules);
  if (rules != nullptr) {
    for (const auto& spec : rules->specifiers) {
      if (spec.fixed) {
        w.out.tags.emplace_back(spec.label.c_str(), spec.fixed_value);
        continue;
      }
      // The first group (what leaves the name) and the value: the second group if there is one that
      // took part in the match, else the first.
      size_t cut_pos = 0, cut_len = 0, val_pos = 0, val_len = 0;
      if (spec.regex) {
        const re2::RE2& re = *spec.regex;
        re2::StringPiece groups[3];
        const int n = std::min(re.NumberOfCapturingGroups() + 1, 3);
        if (!re.Match(w.name, 0, w.name.size(), re2::RE2::UNANCHORED, groups, n)) continue;
        const re2::StringPiece& value = n > 2 && groups[2].data() != nullptr ? groups[2] : groups[1];
        if (groups[1].data() == nullptr) continue;
        cut_pos = static_cast<size_t>(groups[1].data() - w.name.data());
        cut_len = groups[1].size();
        val_pos = static_cast<size_t>(value.data() - w.name.data());
        val_len = value.size();
      } else if (spec.ecma) {
        std::smatch m;
        if (!std::regex_search(w.name, m, *spec.ecma) || m.size() < 2 || !m[1].matched) continue;
        const size_t v = m.size() > 2 && m[2].matched ? 2 : 1;
        cut_pos = static_cast<size_t>(m.position(1));
        cut_len = static_cast<size_t>(m.length(1));
        val_pos = static_cast<size_t>(m.position(v));
        val_len = static_cast<size_t>(m.length(v));
      } else {
        continue;  // a built-in asked for by name
      }
      if (cut_len == 0) continue;
      // The value lies inside the cut (nested group) or is the cut itself; anything else is cut whole
      // and the value copied before the name changes.
      if (val_pos >= cut_pos && val_pos + val_len <= cut_pos + cut_len) {
        const size_t before = val_pos - cut_pos;
        const size_t after = cut_pos + cut_len - (val_pos + val_len);
        w.takeAs(spec.label.c_str(), val_pos, val_len, after);
        w.eraseName(cut_pos, before);
      } else {
        w.out.tags.emplace_back(spec.label.c_str(), w.name.substr(val_pos, val_len));
        w.eraseName(cut_pos, cut_len);
      }
    }
    if (!rules->use_defaults && rules->builtins.empty()) {
      w.out.name = std::move(w.name);
      w.out.pattern = std::move(w.pattern);
      return std::move(w.out);
    }
  }

  // *_rq_200 -> *_rq {envoy_response_code}; *_rq_2xx -> *_rq_xx {envoy_response_code_class}.
  const size_t rq = w.name.rfind("_rq_");
  if (rq != std::string::npos) {
    std::string_view tail(w.name.data() + rq + 4, w.name.size() - rq - 4);
    if (tail.size() == 3 && allDigits(tail)) {
      if (w.take("envoy_response_code", rq + 4, 3, 0)) w.eraseName(rq + 3, 1);  // the '_' before the code
    } else if (tail.size() == 3 && isDigit(tail[0]) && tail.substr(1) == "xx") {
      w.take("envoy_response_code_class", rq + 4, 1, 0);
    }
  }

  const bool listener = startsWith(w.name, "listener.");
  const bool cluster = startsWith(w.name, "cluster.");
  // <listener or cluster>.*.ssl.(ciphers|curves|sigalgs|versions).<value>
  if (listener || cluster) {
    struct SslTag {
      std::string_view seg;
      const char* listener_tag;
      const char* cluster_tag;
    };
    static constexpr SslTag kSsl[] = {{".ssl.ciphers.", "envoy_ssl_cipher", "envoy_ssl_cipher_suite"},
                                      {".ssl.curves.", "envoy_ssl_curve", "envoy_ssl_curve"},
                                      {".ssl.sigalgs.", "envoy_ssl_sigalg", "envoy_ssl_sigalg"},
                                      {".ssl.versions.", "envoy_ssl_version", "envoy_ssl_version"}};
    for (const auto& t : kSsl) {
      const size_t at = w.name.rfind(t.seg);
      if (at == std::string::npos) continue;
      const size_t v = at + t.seg.size();
      const bool version = t.seg == ".ssl.versions.";
      if (v >= w.name.size() || (!version && w.name.find('.', v) != std::string::npos)) continue;
      if (w.take(listener ? t.listener_tag : t.cluster_tag, v, w.name.size() - v, 0)) {
        w.eraseName(v - 1, 1);  // the dot before the value
      }
      break;
    }
  }
  // <scope>.ssl.peer.<identity>.handshake (Strait's per-peer counters): tag ssl_peer.
  if (const size_t at = w.name.find(".ssl.peer."); at != std::string::npos || startsWith(w.name, "ssl.peer.")) {
    const size_t v = at == std::string::npos ? 9 : at + 10;
    const size_t last = w.name.rfind('.');
    if (last > v) w.take("ssl_peer", v, last - v, 1);
  } else if (startsWith(w.name, "ssl.certificate.")) {
    // ssl.certificate.<name>.expiration_unix_time_seconds (Strait's, one per certificate).
    const size_t last = w.name.rfind('.');
    if (last > 16) w.take("ssl_certificate", 16, last - 16, 1);
  }

  if (cluster) {
    const std::string_view rest(w.name.data() + 8, w.name.size() - 8);
    const size_t len = valueBeforeTail(rest, {"circuit_breakers.", "outlier_detection.", "health_check.", "ssl."});
    if (len > 0) w.take("envoy_cluster_name", 8, len, 1);
  } else if (listener) {
    const std::string_view rest(w.name.data() + 9, w.name.size() - 9);
    size_t len = addressLength(rest);
    if (len == 0) {
      const size_t dot = rest.find('.');
      if (dot != std::string_view::npos && rest.substr(0, dot) != "admin") len = dot;
    }
    if (len > 0) {
      w.take("envoy_listener_address", 9, len, 1);
      takeWorker(w, 9);
      // listener.<address>.http.<prefix>.*
      if (startsWith(std::string_view(w.name).substr(9), "http.")) takeToken(w, 14, "envoy_http_conn_manager_prefix");
    }
  } else if (startsWith(w.name, "http.")) {
    const std::string_view rest(w.name.data() + 5, w.name.size() - 5);
    const size_t len = valueBeforeTail(
        rest, {"rbac.", "inert.", "fault.", "cors.", "tracing.", "user_agent.", "rds.", "ext_authz.", "dynamodb."});
    if (len > 0) {
      w.take("envoy_http_conn_manager_prefix", 5, len, 1);
      // http.[<prefix>.]fault.<downstream_cluster>.<stat>, user_agent.<agent>.<stat>, rds.<route_config>.<stat>
      struct Inner {
        std::string_view seg;
        const char* tag;
      };
      static constexpr Inner kInner[] = {{"http.fault.", "envoy_fault_downstream_cluster"},
                                         {"http.user_agent.", "envoy_http_user_agent"},
                                         {"http.rds.", "envoy_rds_route_config"}};
      for (const auto& in : kInner) {
        if (!startsWith(w.name, in.seg)) continue;
        const size_t v = in.seg.size();
        const size_t last = w.name.rfind('.');
        if (last > v) w.take(in.tag, v, last - v, 1);
        break;
      }
    }
  } else if (startsWith(w.name, "tcp.")) {
    const std::string_view rest(w.name.data() + 4, w.name.size() - 4);
    const size_t len = valueBeforeTail(rest, {});
    if (len > 0) w.take("envoy_tcp_prefix", 4, len, 1);
  } else if (startsWith(w.name, "vhost.")) {
    if (takeToken(w, 6, "envoy_virtual_host")) {
      if (startsWith(w.name, "vhost.vcluster.")) takeToken(w, 15, "envoy_virtual_cluster");
      else if (startsWith(w.name, "vhost.route.")) takeToken(w, 12, "envoy_route");
    }
  } else if (startsWith(w.name, "local_rate_limit.")) {
    takeToken(w, 17, "envoy_local_network_ratelimit_prefix");
  } else if (startsWith(w.name, "server.") || startsWith(w.name, "listener_manager.")) {
    takeWorker(w, w.name.find('.') + 1);
  } else if (const size_t at = w.name.find(".http_local_rate_limit."); at != std::string::npos &&
                                                                     w.name.find('.') == at) {
    w.take("envoy_local_http_ratelimit_prefix", 0, at, 1);
  }
  w.out.name = std::move(w.name);
  w.out.pattern = std::move(w.pattern);
  return std::move(w.out);
}

}  // namespace strait::stats
