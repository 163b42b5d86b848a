// Access log config (protos to AccessLog objects), filters and the per-request entry point.
#include "proxy/accesslog/access_log.h"

#include "absl/strings/str_cat.h"
#include "envoy/config/accesslog/v3/accesslog.pb.h"
#include "envoy/config/core/v3/substitution_format_string.pb.h"
#include "envoy/extensions/access_loggers/file/v3/file.pb.h"
#include "envoy/extensions/access_loggers/stream/v3/stream.pb.h"
#include "proxy/accesslog/log_file.h"
#include "proxy/common/response_flags.h"
#include "proxy/http/matchers.h"

namespace strait::accesslog {

namespace {

namespace al_v3 = envoy::config::accesslog::v3;
namespace core_v3 = envoy::config::core::v3;

constexpr std::string_view kFileType = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
constexpr std::string_view kStdoutType = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
constexpr std::string_view kStderrType = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

absl::Status err(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

// A per-thread generator for runtime_filter sampling (no shared state, no lock).
uint64_t nextRandom() {
  thread_local uint64_t x = 0x9e3779b97f4a7c15ULL ^ reinterpret_cast<uintptr_t>(&x);
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return x;
}

absl::Status translateComparison(const al_v3::ComparisonFilter& c, const std::string& path, LogFilter& out) {
  switch (c.op()) {
    case al_v3::ComparisonFilter::EQ: out.op = LogFilter::Op::Eq; break;
    case al_v3::ComparisonFilter::GE: out.op = LogFilter::Op::Ge; break;
    case al_v3::ComparisonFilter::LE: out.op = LogFilter::Op::Le; break;
    default: return err(path + ".op", "must be EQ, GE or LE");
  }
  if (!c.has_value()) return err(path + ".value", "is required");
  out.value = c.value().default_value();
  return absl::OkStatus();
}

absl::Status translateFilter(const al_v3::AccessLogFilter& f, const std::string& path, LogFilter& out, int depth) {
  if (depth > 16) return err(path, "nested too deeply");
  using F = al_v3::AccessLogFilter;
  switch (f.filter_specifier_case()) {
    case F::kStatusCodeFilter:
      out.kind = LogFilter::Kind::StatusCode;
      return translateComparison(f.status_code_filter().comparison(), path + ".status_code_filter.comparison", out);
    case F::kDurationFilter:
      out.kind = LogFilter::Kind::Duration;
      return translateComparison(f.duration_filter().comparison(), path + ".duration_filter.comparison", out);
    case F::kNotHealthCheckFilter: out.kind = LogFilter::Kind::NotHealthCheck; return absl::OkStatus();
    case F::kRuntimeFilter: {
      out.kind = LogFilter::Kind::Runtime;
      const auto& p = f.runtime_filter().percent_sampled();
      const uint64_t scale = p.denominator() == envoy::type::v3::FractionalPercent::HUNDRED        ? 10000
                             : p.denominator() == envoy::type::v3::FractionalPercent::TEN_THOUSAND ? 100
                                                                                                   : 1;
      // Unset percent_sampled: Envoy's default is 0% unless the runtime key says otherwise; with no
      // runtime here the default stands.
      out.per_million = static_cast<uint32_t>(std::min<uint64_t>(uint64_t{p.numerator()} * scale, 1000000));
      return absl::OkStatus();
    }
    case F::kAndFilter:
    case F::kOrFilter: {
      const bool is_and = f.filter_specifier_case() == F::kAndFilter;
      out.kind = is_and ? LogFilter::Kind::And : LogFilter::Kind::Or;
      const auto& list = is_and ? f.and_filter().filters() : f.or_filter().filters();
      const std::string lp = path + (is_and ? ".and_filter.filters" : ".or_filter.filters");
      if (list.size() < 2) return err(lp, "needs at least two filters");
      for (int i = 0; i < list.size(); ++i) {
        LogFilter child;
        if (auto st = translateFilter(list[i], absl::StrCat(lp, "[", i, "]"), child, depth + 1); !st.ok()) return st;
        out.children.push_back(std::move(child));
      }
      return absl::OkStatus();
    }
    case F::kHeaderFilter: {
      out.kind = LogFilter::Kind::Header;
      auto m = std::make_shared<http::HeaderMatch>();
      if (auto st = http::buildHeaderMatch(f.header_filter().header(), path + ".header_filter.header", *m); !st.ok()) return st;
      out.header = std::move(m);
      return absl::OkStatus();
    }
    case F::kResponseFlagFilter: {
      out.kind = LogFilter::Kind::ResponseFlag;
      const auto& flags = f.response_flag_filter().flags();
      if (flags.empty()) out.flag_mask = ~0u;
      for (int i = 0; i < flags.size(); ++i) {
        const uint32_t bit = common::responseFlagByName(flags[i]);
        if (bit == 0) return err(absl::StrCat(path, ".response_flag_filter.flags[", i, "]"), absl::StrCat("unknown response flag '", flags[i], "'"));
        out.flag_mask |= bit;
      }
      return absl::OkStatus();
    }
    case F::kTraceableFilter: return err(path + ".traceable_filter", "is not supported (no tracing)");
    default: return err(path, "a filter kind is required");
  }
}

absl::StatusOr<std::unique_ptr<Formatter>> translateFormat(const core_v3::SubstitutionFormatString& f, const std::string& path) {
  using S = core_v3::SubstitutionFormatString;
  switch (f.format_case()) {
    case S::kTextFormat: return Formatter::text(f.text_format(), f.omit_empty_values(), path + ".text_format");
    case S::kJsonFormat: return Formatter::json(f.json_format(), f.omit_empty_values(), path + ".json_format");
    case S::kTextFormatSource: {
      if (!f.text_format_source().has_inline_string()) {
        return err(path + ".text_format_source", "only inline_string is supported");
      }
      return Formatter::text(f.text_format_source().inline_string(), f.omit_empty_values(),
                             path + ".text_format_source.inline_string");
    }
    default: return Formatter::envoyDefault();
  }
}

}  // namespace

bool LogFilter::evaluate(const LogContext& c) const {
  auto compare = [this](uint64_t v) {
    switch (op) {
      case Op::Eq: return v == value;
      case Op::Ge: return v >= value;
      case Op::Le: return v <= value;
    }
    return false;
  };
  switch (kind) {
    case Kind::StatusCode: return compare(c.response_code);
    case Kind::Duration:
      return compare(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(c.end - c.start).count()));
    case Kind::NotHealthCheck: {
      // Strait has no health_check HTTP filter: a health check is what active health checkers send,
      // Envoy's "Envoy/HC" user agent (Strait's own checker sends it too).
      if (c.request == nullptr) return true;
      const std::string* ua = c.request->get("user-agent");
      return ua == nullptr || *ua != "Envoy/HC";
    }
    case Kind::Runtime: return nextRandom() % 1000000 < per_million;
    case Kind::And:
      for (const auto& f : children) {
        if (!f.evaluate(c)) return false;
      }
      return true;
    case Kind::Or:
      for (const auto& f : children) {
        if (f.evaluate(c)) return true;
      }
      return false;
    case Kind::Header: return c.request != nullptr && header->match(*c.request);
    case Kind::ResponseFlag: return (c.response_flags & flag_mask) != 0;
  }
  return true;
}

void logAll(const AccessLogList& logs, const LogContext& ctx, event::Dispatcher& dispatcher) {
  LogFiles& files = LogFiles::get();
  for (const auto& l : logs) {
    if (l->filter && !l->filter->evaluate(ctx)) continue;
    l->formatter->format(ctx, files.buffer(l->file_id, dispatcher));
    files.commit(l->file_id);
  }
}

absl::StatusOr<AccessLogList> translateAccessLogs(
    const google::protobuf::RepeatedPtrField<envoy::config::accesslog::v3::AccessLog>& logs, const std::string& path,
    stats::Store& store) {
  AccessLogList out;
  for (int i = 0; i < logs.size(); ++i) {
    const auto& l = logs[i];
    const std::string lp = absl::StrCat(path, "[", i, "]");
    auto log = std::make_shared<AccessLog>();
    if (l.has_filter()) {
      log->filter = std::make_unique<LogFilter>();
      if (auto st = translateFilter(l.filter(), lp + ".filter", *log->filter, 0); !st.ok()) return st;
    }
    if (!l.has_typed_config()) return err(lp + ".typed_config", "is required (access loggers are chosen by type URL)");
    const auto& any = l.typed_config();
    const std::string tp = lp + ".typed_config";
    std::string file_path;
    if (any.type_url() == kFileType) {
      envoy::extensions::access_loggers::file::v3::FileAccessLog f;
      if (!any.UnpackTo(&f)) return err(tp, "cannot decode FileAccessLog");
      if (f.path().empty()) return err(tp + ".path", "is required");
      file_path = f.path();
      using F = envoy::extensions::access_loggers::file::v3::FileAccessLog;
      absl::StatusOr<std::unique_ptr<Formatter>> fmt;
      switch (f.access_log_format_case()) {
        case F::kFormat: fmt = Formatter::text(f.format(), false, tp + ".format"); break;
        case F::kJsonFormat: fmt = Formatter::json(f.json_format(), false, tp + ".json_format"); break;
        case F::kTypedJsonFormat: fmt = Formatter::json(f.typed_json_format(), false, tp + ".typed_json_format"); break;
        case F::kLogFormat: fmt = translateFormat(f.log_format(), tp + ".log_format"); break;
        default: fmt = Formatter::envoyDefault(); break;
      }
      if (!fmt.ok()) return fmt.status();
      log->formatter = std::move(*fmt);
    } else if (any.type_url() == kStdoutType || any.type_url() == kStderrType) {
      const bool out_stream = any.type_url() == kStdoutType;
      envoy::extensions::access_loggers::stream::v3::StdoutAccessLog s;  // same shape as StderrAccessLog
      envoy::extensions::access_loggers::stream::v3::StderrAccessLog e;
      if (out_stream ? !any.UnpackTo(&s) : !any.UnpackTo(&e)) return err(tp, "cannot decode the stream access log");
      const bool has = out_stream ? s.has_log_format() : e.has_log_format();
      auto fmt = has ? translateFormat(out_stream ? s.log_format() : e.log_format(), tp + ".log_format")
                     : absl::StatusOr<std::unique_ptr<Formatter>>(Formatter::envoyDefault());
      if (!fmt.ok()) return fmt.status();
      log->formatter = std::move(*fmt);
      file_path = out_stream ? "/dev/stdout" : "/dev/stderr";
    } else {
      return err(tp, absl::StrCat("unsupported access logger type '", any.type_url(), "'"));
    }
    auto id = LogFiles::get().open(file_path, store);
    if (!id.ok()) return err(tp + ".path", std::string(id.status().message()));
    log->file_id = *id;
    out.push_back(std::move(log));
  }
  return out;
}

}  // namespace strait::accesslog
