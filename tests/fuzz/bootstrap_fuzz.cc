// The bootstrap loader on text from the fuzzer, YAML or JSON (JSON is YAML): the text is parsed as a
// bootstrap file is (config::parseBootstrapText: YAML -> JSON -> the Bootstrap proto, negative durations
// refused), then validated and translated into a snapshot (config::buildSnapshot) as at start-up. Nothing
// is bound or started; a bootstrap that names a file (DataSource.filename and the like) is not translated.

#include "proxy/config/bootstrap.h"
#include "tests/fuzz/fuzz_support.h"

using namespace strait;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  stats::Store& store = fuzz::init();
  const std::string text(reinterpret_cast<const char*>(data), size);
  config::LoadOptions options;
  auto bootstrap = config::parseBootstrapText(text, "fuzz", options);
  if (!bootstrap.ok() || fuzz::namesAFile(**bootstrap)) return 0;
  (void)config::inertBootstrapFields(**bootstrap);
  auto sources = std::make_shared<config::ConfigSources>();
  sources->bootstrap = *bootstrap;
  auto built = config::buildSnapshot(sources, nullptr, store, config::clusterIds());
  (void)built;
  return 0;
}
