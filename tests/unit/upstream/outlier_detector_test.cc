#include <catch2/catch.hpp>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "proxy/upstream/outlier_detector.h"

using namespace strait::upstream;

namespace {

// A cluster of `n` hosts under one detector, with a clock and random numbers the test moves by hand.
struct Cluster {
  std::atomic<uint64_t> now{1000};
  uint64_t random_value = 0;
  OutlierStats stats;
  std::atomic<uint64_t> generation{0};
  std::vector<HostSharedPtr> hosts;
  std::unique_ptr<OutlierDetector> od;

  Cluster(const OutlierConfig& config, size_t n) {
    for (size_t i = 0; i < n; ++i) hosts.push_back(std::make_shared<Host>());
    od = std::make_unique<OutlierDetector>(
        config, stats, &generation, [this] { return now.load(); }, [this] { return random_value; });
    od->setHosts(hosts);
  }
  Host& host(size_t i) { return *hosts[i]; }
  void respond(size_t i, uint32_t status, int times = 1) {
    for (int k = 0; k < times; ++k) od->putHttpResponse(host(i), status);
  }
  // `ok` successes and `failed` 500s, interleaved so no run of failures gets long.
  void mix(size_t i, int ok, int failed) {
    while (ok > 0 || failed > 0) {
      if (ok-- > 0) respond(i, 200);
      if (failed-- > 0) respond(i, 500);
    }
  }
  void tick(uint64_t ms) {
    now += ms;
    od->onInterval();
  }
  bool ejected(size_t i) { return OutlierDetector::ejected(host(i)); }
  uint32_t flaggedCount() {
    uint32_t n = 0;
    for (auto& h : hosts) n += OutlierDetector::ejected(*h) ? 1 : 0;
    return n;
  }
};

OutlierConfig roomy() {
  OutlierConfig c;
  c.max_ejection_percent = 100;
  return c;
}

// The rate-based tests switch the consecutive detectors off (0 never matches a run) so that the
// failures they feed cannot eject anyone by themselves.
OutlierConfig ratesOnly() {
  OutlierConfig c;
  c.consecutive_5xx = 0;
  c.consecutive_gateway_failure = 0;
  c.consecutive_local_origin_failure = 0;
  return c;
}

}  // namespace

TEST_CASE("Outlier: defaults are Envoy's", "[outlier]") {
  OutlierConfig c;
  CHECK(c.consecutive_5xx == 5);
  CHECK(c.consecutive_gateway_failure == 5);
  CHECK(c.consecutive_local_origin_failure == 5);
  CHECK(c.interval_ms == 10000);
  CHECK(c.base_ejection_time_ms == 30000);
  CHECK(c.max_ejection_time_ms == 300000);
  CHECK(c.max_ejection_percent == 10);
  CHECK(c.enforcing_consecutive_5xx == 100);
  CHECK(c.enforcing_consecutive_gateway_failure == 0);
  CHECK(c.enforcing_consecutive_local_origin_failure == 100);
  CHECK(c.enforcing_success_rate == 100);
  CHECK(c.enforcing_local_origin_success_rate == 100);
  CHECK(c.success_rate_minimum_hosts == 5);
  CHECK(c.success_rate_request_volume == 100);
  CHECK(c.success_rate_stdev_factor == 1900);
  CHECK(c.failure_percentage_threshold == 85);
  CHECK(c.enforcing_failure_percentage == 0);
  CHECK(c.enforcing_failure_percentage_local_origin == 0);
  CHECK(c.failure_percentage_minimum_hosts == 5);
  CHECK(c.failure_percentage_request_volume == 50);
  CHECK_FALSE(c.split_external_local_origin_errors);
  CHECK(c.max_ejection_time_jitter_ms == 0);
  CHECK_FALSE(c.always_eject_one_host);
  CHECK(c.successful_active_health_check_uneject_host);
  CHECK(outlierConfigError(c).empty());
  c.enforcing_success_rate = 101;
  CHECK(outlierConfigError(c).find("enforcing_success_rate") != std::string::npos);
  c = OutlierConfig{};
  c.interval_ms = 0;
  CHECK_FALSE(outlierConfigError(c).empty());
}

TEST_CASE("Outlier: consecutive 5xx ejects at the threshold, not before", "[outlier]") {
  Cluster cl(roomy(), 1);
  cl.respond(0, 500, 4);
  REQUIRE_FALSE(cl.ejected(0));
  REQUIRE(cl.generation == 0);
  cl.respond(0, 503);  // any 5xx continues the run
  REQUIRE(cl.ejected(0));
  CHECK(cl.od->ejectedCount() == 1);
  CHECK(cl.stats.ejections_active == 1);
  CHECK(cl.stats.ejections_enforced_total == 1);
  CHECK(cl.stats.ejections_enforced_consecutive_5xx == 1);
  CHECK(cl.stats.ejections_detected_consecutive_5xx == 1);
  CHECK(cl.stats.ejections_overflow == 0);
  CHECK(cl.host(0).passive().od_times_ejected == 1);
  CHECK(cl.host(0).passive().od_ejected_at_ms == 1000);
  CHECK(cl.host(0).passive().od_consecutive_5xx == 0);  // runs restart on ejection
  CHECK(cl.generation == 1);
  // More failures while ejected (panic-mode traffic) do not eject again.
  cl.respond(0, 500, 20);
  CHECK(cl.stats.ejections_enforced_total == 1);
  CHECK(cl.stats.ejections_detected_consecutive_5xx == 1);
  CHECK(cl.generation == 1);
}

TEST_CASE("Outlier: a success in between restarts the runs", "[outlier]") {
  Cluster cl(roomy(), 1);
  cl.respond(0, 500, 4);
  cl.respond(0, 200);
  cl.respond(0, 500, 4);
  CHECK_FALSE(cl.ejected(0));
  cl.respond(0, 404);  // any non-5xx is a success for outlier detection
  cl.respond(0, 500, 4);
  CHECK_FALSE(cl.ejected(0));
  cl.respond(0, 500);
  CHECK(cl.ejected(0));
  CHECK(cl.host(0).passive().od_success == 2);
  CHECK(cl.host(0).passive().od_failure == 13);
}

TEST_CASE("Outlier: gateway failures are detected, and enforced only as configured", "[outlier]") {
  SECTION("enforcing 0 counts the detection only") {
    OutlierConfig c = roomy();
    c.consecutive_5xx = 100;
    Cluster cl(c, 1);
    cl.respond(0, 502, 5);
    CHECK_FALSE(cl.ejected(0));
    CHECK(cl.stats.ejections_detected_consecutive_gateway_failure == 1);
    CHECK(cl.stats.ejections_enforced_consecutive_gateway_failure == 0);
    CHECK(cl.host(0).passive().od_consecutive_gateway == 0);  // the run restarts, so a new bout is seen again
    cl.respond(0, 504, 5);
    CHECK(cl.stats.ejections_detected_consecutive_gateway_failure == 2);
    CHECK_FALSE(cl.ejected(0));
  }
  SECTION("enforcing 100 ejects") {
    OutlierConfig c = roomy();
    c.consecutive_5xx = 100;
    c.enforcing_consecutive_gateway_failure = 100;
    Cluster cl(c, 1);
    cl.respond(0, 503, 4);
    cl.respond(0, 500);  // not a gateway error: breaks the gateway run
    cl.respond(0, 503, 4);
    CHECK_FALSE(cl.ejected(0));
    cl.respond(0, 503);
    CHECK(cl.ejected(0));
    CHECK(cl.stats.ejections_enforced_consecutive_gateway_failure == 1);
    CHECK(cl.stats.ejections_detected_consecutive_gateway_failure == 1);
    CHECK(cl.stats.ejections_enforced_total == 1);
  }
  SECTION("with the defaults, an unenforced gateway detection leaves the 5xx run to eject") {
    Cluster cl(roomy(), 1);
    cl.respond(0, 503, 5);
    CHECK(cl.ejected(0));
    CHECK(cl.stats.ejections_detected_consecutive_gateway_failure == 1);
    CHECK(cl.stats.ejections_enforced_consecutive_gateway_failure == 0);
    CHECK(cl.stats.ejections_enforced_consecutive_5xx == 1);
  }
  SECTION("a partial enforcing chance rolls the supplied random numbers") {
    OutlierConfig c = roomy();
    c.enforcing_consecutive_5xx = 50;
    Cluster cl(c, 1);
    cl.random_value = 150;  // 150 % 100 = 50: not below 50
    cl.respond(0, 500, 5);
    CHECK_FALSE(cl.ejected(0));
    CHECK(cl.stats.ejections_detected_consecutive_5xx == 1);
    cl.random_value = 49;
    cl.respond(0, 500, 5);
    CHECK(cl.ejected(0));
  }
}

TEST_CASE("Outlier: max_ejection_percent caps ejections, counting the host about to go", "[outlier]") {
  SECTION("10 hosts at 10%: one") {
    Cluster cl(OutlierConfig{}, 10);
    for (size_t i = 0; i < 10; ++i) cl.respond(i, 500, 5);
    CHECK(cl.flaggedCount() == 1);
    CHECK(cl.od->ejectedCount() == 1);
    CHECK(cl.stats.ejections_detected_consecutive_5xx == 10);
    CHECK(cl.stats.ejections_overflow == 9);
    CHECK(cl.stats.ejections_enforced_total == 1);
    // An overflowed run restarts, so the next bout of failures tries again.
    CHECK(cl.host(5).passive().od_consecutive_5xx == 0);
  }
  SECTION("20 hosts at 10%: two") {
    Cluster cl(OutlierConfig{}, 20);
    for (size_t i = 0; i < 20; ++i) cl.respond(i, 500, 5);
    CHECK(cl.flaggedCount() == 2);
    CHECK(cl.stats.ejections_overflow == 18);
  }
  SECTION("5 hosts at 10%: none, unless always_eject_one_host") {
    OutlierConfig c;
    Cluster none(c, 5);
    for (size_t i = 0; i < 5; ++i) none.respond(i, 500, 5);
    CHECK(none.flaggedCount() == 0);
    CHECK(none.stats.ejections_overflow == 5);
    c.always_eject_one_host = true;
    Cluster one(c, 5);
    for (size_t i = 0; i < 5; ++i) one.respond(i, 500, 5);
    CHECK(one.flaggedCount() == 1);
    CHECK(one.stats.ejections_overflow == 4);
  }
  SECTION("3 hosts at 50%: one (Envoy before 1.27 ejected two)") {
    OutlierConfig c;
    c.max_ejection_percent = 50;
    Cluster cl(c, 3);
    for (size_t i = 0; i < 3; ++i) cl.respond(i, 500, 5);
    CHECK(cl.flaggedCount() == 1);
  }
  SECTION("0% ejects nothing") {
    OutlierConfig c;
    c.max_ejection_percent = 0;
    Cluster cl(c, 1);
    cl.respond(0, 500, 5);
    CHECK_FALSE(cl.ejected(0));
    CHECK(cl.stats.ejections_overflow == 1);
  }
}

TEST_CASE("Outlier: un-ejection waits for the next interval after the ejection time", "[outlier]") {
  Cluster cl(roomy(), 1);
  cl.now = 6000;
  cl.respond(0, 500, 5);
  REQUIRE(cl.ejected(0));
  REQUIRE(cl.generation == 1);
  cl.tick(5000);   // 11000
  cl.tick(10000);  // 21000
  cl.tick(10000);  // 31000: 25 s of 30
  CHECK(cl.ejected(0));
  cl.now = 36000;  // 30 s are over, but nothing looks until the next interval
  CHECK(cl.ejected(0));
  cl.tick(5000);  // 41000
  CHECK_FALSE(cl.ejected(0));
  CHECK(cl.generation == 2);
  CHECK(cl.od->ejectedCount() == 0);
  CHECK(cl.stats.ejections_active == 0);
  CHECK(cl.host(0).passive().od_ejected_at_ms == 0);
  CHECK(cl.host(0).passive().od_times_ejected == 1);  // decays later
}

TEST_CASE("Outlier: ejection time grows with each ejection and is capped", "[outlier]") {
  OutlierConfig c = roomy();
  c.base_ejection_time_ms = 30000;
  c.max_ejection_time_ms = 70000;
  Cluster cl(c, 1);
  // Ejects, then ticks every interval until the host is back; returns how long it was out.
  auto ejectionLasts = [&cl] {
    cl.respond(0, 500, 5);
    REQUIRE(cl.ejected(0));
    uint64_t out = 0;
    while (cl.ejected(0)) {
      cl.tick(10000);
      out += 10000;
      REQUIRE(out <= 1000000);
    }
    return out;
  };
  CHECK(ejectionLasts() == 30000);  // base x 1
  CHECK(cl.host(0).passive().od_times_ejected == 1);
  CHECK(ejectionLasts() == 60000);  // base x 2
  CHECK(cl.host(0).passive().od_times_ejected == 2);
  CHECK(ejectionLasts() == 70000);  // base x 3 = 90 s, capped at 70 s
  CHECK(cl.host(0).passive().od_times_ejected == 3);
  CHECK(ejectionLasts() == 70000);
  CHECK(cl.host(0).passive().od_times_ejected == 4);
  CHECK(ejectionLasts() == 70000);
  // The multiplier stops once base x n reaches max + base: more would only slow the decay.
  CHECK(cl.host(0).passive().od_times_ejected == 4);
  CHECK(cl.stats.ejections_enforced_total == 5);
}

TEST_CASE("Outlier: a max_ejection_time below the base counts as the base", "[outlier]") {
  OutlierConfig c = roomy();
  c.base_ejection_time_ms = 30000;
  c.max_ejection_time_ms = 10000;
  Cluster cl(c, 1);
  cl.respond(0, 500, 5);
  cl.tick(20000);
  CHECK(cl.ejected(0));
  cl.tick(10000);
  CHECK_FALSE(cl.ejected(0));
}

TEST_CASE("Outlier: jitter is added to the ejection time", "[outlier]") {
  OutlierConfig c = roomy();
  c.max_ejection_time_jitter_ms = 1000;
  Cluster cl(c, 1);
  cl.random_value = 2702;  // 2702 % 1001 = 700
  cl.respond(0, 500, 5);
  cl.tick(30000);
  CHECK(cl.ejected(0));
  cl.tick(699);
  CHECK(cl.ejected(0));
  cl.tick(1);
  CHECK_FALSE(cl.ejected(0));
}

TEST_CASE("Outlier: the ejection multiplier decays while the host stays in service", "[outlier]") {
  Cluster cl(roomy(), 1);
  cl.respond(0, 500, 5);
  cl.tick(30000);
  REQUIRE_FALSE(cl.ejected(0));
  cl.respond(0, 500, 5);  // straight back out: the multiplier did not decay in between
  REQUIRE(cl.host(0).passive().od_times_ejected == 2);
  cl.tick(10000);
  cl.tick(10000);
  cl.tick(10000);
  cl.tick(10000);
  cl.tick(10000);
  CHECK(cl.ejected(0));
  CHECK(cl.host(0).passive().od_times_ejected == 2);  // no decay while ejected
  cl.tick(10000);                           // 60 s: back in service
  REQUIRE_FALSE(cl.ejected(0));
  CHECK(cl.host(0).passive().od_times_ejected == 2);  // not a whole interval in service yet
  cl.tick(10000);
  CHECK(cl.host(0).passive().od_times_ejected == 1);
  cl.tick(10000);
  CHECK(cl.host(0).passive().od_times_ejected == 0);
  cl.tick(10000);
  CHECK(cl.host(0).passive().od_times_ejected == 0);
  // Fully decayed: the next ejection lasts the base time again.
  cl.respond(0, 500, 5);
  CHECK(cl.host(0).passive().od_times_ejected == 1);
  cl.tick(30000);
  CHECK_FALSE(cl.ejected(0));
}

TEST_CASE("Outlier: success-rate outliers are ejected", "[outlier]") {
  SECTION("one host at 50% among ten at 100%") {
    Cluster cl(ratesOnly(), 10);
    for (size_t i = 0; i < 10; ++i) {
      if (i == 3) {
        cl.mix(i, 100, 100);
      } else {
        cl.respond(i, 200, 200);
      }
    }
    cl.tick(10000);
    CHECK(cl.ejected(3));
    CHECK(cl.flaggedCount() == 1);
    CHECK(cl.stats.ejections_detected_success_rate == 1);
    CHECK(cl.stats.ejections_enforced_success_rate == 1);
    // mean 95, population stdev 15, threshold 95 - 1.9 x 15
    CHECK(cl.od->successRateAverage(OutlierOrigin::External) == Approx(95.0));
    CHECK(cl.od->successRateEjectionThreshold(OutlierOrigin::External) == Approx(66.5));
    CHECK(cl.od->hostSuccessRate(cl.host(3), OutlierOrigin::External) == Approx(50.0));
    CHECK(cl.od->hostSuccessRate(cl.host(0), OutlierOrigin::External) == Approx(100.0));
    // The tallies start over each interval.
    CHECK(cl.host(0).passive().od_success == 0);
    cl.tick(10000);
    CHECK(cl.od->successRateAverage(OutlierOrigin::External) == -1);
    CHECK(cl.od->hostSuccessRate(cl.host(0), OutlierOrigin::External) == -1);
  }
  SECTION("hosts below the request volume are left out") {
    Cluster cl(ratesOnly(), 10);
    for (size_t i = 0; i < 4; ++i) cl.respond(i, 200, 200);
    cl.mix(4, 100, 100);
    for (size_t i = 5; i < 10; ++i) cl.respond(i, 500, 40);  // terrible, but too few requests
    cl.tick(10000);
    CHECK(cl.ejected(4));
    CHECK(cl.flaggedCount() == 1);
    CHECK(cl.od->successRateAverage(OutlierOrigin::External) == Approx(90.0));  // {100 x4, 50}
    CHECK(cl.od->successRateEjectionThreshold(OutlierOrigin::External) == Approx(52.0));
    CHECK(cl.od->hostSuccessRate(cl.host(5), OutlierOrigin::External) == -1);
  }
  SECTION("fewer hosts with enough volume than success_rate_minimum_hosts: no verdict") {
    Cluster cl(ratesOnly(), 10);
    for (size_t i = 0; i < 3; ++i) cl.respond(i, 200, 200);
    cl.mix(3, 100, 100);
    for (size_t i = 4; i < 10; ++i) cl.respond(i, 200, 99);
    cl.tick(10000);
    CHECK(cl.flaggedCount() == 0);
    CHECK(cl.od->successRateAverage(OutlierOrigin::External) == -1);
    CHECK(cl.stats.ejections_detected_success_rate == 0);
  }
  SECTION("enforcing_success_rate 0: detected only") {
    OutlierConfig c = ratesOnly();
    c.enforcing_success_rate = 0;
    Cluster cl(c, 10);
    for (size_t i = 0; i < 10; ++i) {
      if (i == 3) {
        cl.mix(i, 100, 100);
      } else {
        cl.respond(i, 200, 200);
      }
    }
    cl.tick(10000);
    CHECK(cl.flaggedCount() == 0);
    CHECK(cl.stats.ejections_detected_success_rate == 1);
    CHECK(cl.stats.ejections_enforced_success_rate == 0);
  }
}

TEST_CASE("Outlier: failure-percentage ejection", "[outlier]") {
  OutlierConfig c = ratesOnly();
  c.success_rate_minimum_hosts = 100;  // keep the success-rate detector out of it
  c.max_ejection_percent = 100;
  SECTION("90% failures against a threshold of 85, enforced") {
    c.enforcing_failure_percentage = 100;
    Cluster cl(c, 6);
    cl.mix(0, 10, 90);
    cl.mix(1, 20, 80);  // below the threshold
    for (size_t i = 2; i < 6; ++i) cl.respond(i, 200, 100);
    cl.tick(10000);
    CHECK(cl.ejected(0));
    CHECK_FALSE(cl.ejected(1));
    CHECK(cl.stats.ejections_detected_failure_percentage == 1);
    CHECK(cl.stats.ejections_enforced_failure_percentage == 1);
    CHECK(cl.stats.ejections_enforced_total == 1);
  }
  SECTION("not enforced by default") {
    Cluster cl(c, 6);
    cl.mix(0, 10, 90);
    for (size_t i = 1; i < 6; ++i) cl.respond(i, 200, 100);
    cl.tick(10000);
    CHECK_FALSE(cl.ejected(0));
    CHECK(cl.stats.ejections_detected_failure_percentage == 1);
    CHECK(cl.stats.ejections_enforced_failure_percentage == 0);
  }
  SECTION("too few hosts with volume") {
    c.enforcing_failure_percentage = 100;
    Cluster cl(c, 6);
    cl.mix(0, 10, 90);
    for (size_t i = 1; i < 6; ++i) cl.respond(i, 200, 49);
    cl.tick(10000);
    CHECK_FALSE(cl.ejected(0));
    CHECK(cl.stats.ejections_detected_failure_percentage == 0);
  }
}

TEST_CASE("Outlier: local-origin failures", "[outlier]") {
  SECTION("without split mode they count as 503/504") {
    Cluster cl(roomy(), 1);
    cl.od->putLocalOriginFailure(cl.host(0), LocalOriginFailure::ConnectFailed);
    cl.od->putLocalOriginFailure(cl.host(0), LocalOriginFailure::Reset);
    cl.od->putLocalOriginFailure(cl.host(0), LocalOriginFailure::Timeout);
    cl.od->putLocalOriginSuccess(cl.host(0));  // ignored: the response decides
    cl.od->putLocalOriginFailure(cl.host(0), LocalOriginFailure::ConnectFailed);
    CHECK(cl.host(0).passive().od_consecutive_gateway == 4);
    CHECK_FALSE(cl.ejected(0));
    cl.od->putLocalOriginFailure(cl.host(0), LocalOriginFailure::Timeout);
    CHECK(cl.ejected(0));
    CHECK(cl.stats.ejections_enforced_consecutive_5xx == 1);
    CHECK(cl.stats.ejections_detected_consecutive_gateway_failure == 1);
    CHECK(cl.host(0).passive().od_failure == 5);
    CHECK(cl.host(0).passive().od_success == 0);
    CHECK(cl.host(0).passive().od_local_failure == 0);
    CHECK(cl.stats.ejections_detected_consecutive_local_origin_failure == 0);
  }
  SECTION("without split mode a final connect success counts as a 200") {
    Cluster cl(roomy(), 1);
    cl.respond(0, 500, 4);
    cl.od->putLocalOriginSuccess(cl.host(0), true);
    CHECK(cl.host(0).passive().od_consecutive_5xx == 0);
    CHECK(cl.host(0).passive().od_success == 1);
  }
  SECTION("split mode keeps them apart") {
    OutlierConfig c = roomy();
    c.split_external_local_origin_errors = true;
    Cluster cl(c, 1);
    for (int i = 0; i < 4; ++i) cl.od->putLocalOriginFailure(cl.host(0), LocalOriginFailure::ConnectFailed);
    cl.respond(0, 500, 4);
    CHECK_FALSE(cl.ejected(0));
    CHECK(cl.host(0).passive().od_consecutive_local == 4);
    CHECK(cl.host(0).passive().od_consecutive_5xx == 4);
    CHECK(cl.host(0).passive().od_consecutive_gateway == 0);
    CHECK(cl.host(0).passive().od_local_failure == 4);
    CHECK(cl.host(0).passive().od_failure == 4);
    // A connection that comes up restarts the local run only.
    cl.od->putLocalOriginSuccess(cl.host(0));
    CHECK(cl.host(0).passive().od_consecutive_local == 0);
    CHECK(cl.host(0).passive().od_consecutive_5xx == 4);
    CHECK(cl.host(0).passive().od_local_success == 1);
    for (int i = 0; i < 4; ++i) cl.od->putLocalOriginFailure(cl.host(0), LocalOriginFailure::Timeout);
    CHECK_FALSE(cl.ejected(0));
    cl.od->putLocalOriginFailure(cl.host(0), LocalOriginFailure::Reset);
    CHECK(cl.ejected(0));
    CHECK(cl.stats.ejections_detected_consecutive_local_origin_failure == 1);
    CHECK(cl.stats.ejections_enforced_consecutive_local_origin_failure == 1);
    CHECK(cl.stats.ejections_enforced_consecutive_5xx == 0);
  }
  SECTION("split mode has its own failure-percentage detector") {
    OutlierConfig c = ratesOnly();
    c.split_external_local_origin_errors = true;
    c.success_rate_minimum_hosts = 100;
    c.enforcing_failure_percentage_local_origin = 100;
    c.max_ejection_percent = 100;
    Cluster cl(c, 5);
    for (size_t i = 0; i < 5; ++i) {
      cl.respond(i, 200, 60);  // every response is fine...
      for (int k = 0; k < 60; ++k) {
        if (i == 2) {
          cl.od->putLocalOriginFailure(cl.host(i), LocalOriginFailure::ConnectFailed);  // ...but host 2 is unreachable
        } else {
          cl.od->putLocalOriginSuccess(cl.host(i));
        }
      }
    }
    cl.tick(10000);
    CHECK(cl.ejected(2));
    CHECK(cl.flaggedCount() == 1);
    CHECK(cl.stats.ejections_enforced_local_origin_failure_percentage == 1);
    CHECK(cl.stats.ejections_detected_failure_percentage == 0);
    CHECK(cl.od->hostSuccessRate(cl.host(2), OutlierOrigin::Local) == Approx(0.0));
    CHECK(cl.od->hostSuccessRate(cl.host(2), OutlierOrigin::External) == Approx(100.0));
  }
}

TEST_CASE("Outlier: the health generation moves on ejection and un-ejection", "[outlier]") {
  Cluster cl(roomy(), 2);
  cl.respond(0, 500, 5);
  CHECK(cl.generation == 1);
  cl.respond(1, 500, 5);
  CHECK(cl.generation == 2);
  cl.tick(10000);
  CHECK(cl.generation == 2);
  cl.tick(20000);
  CHECK(cl.generation == 4);  // both back
  cl.tick(10000);
  CHECK(cl.generation == 4);
}

TEST_CASE("Outlier: host set updates", "[outlier]") {
  Cluster cl(roomy(), 3);
  cl.respond(0, 500, 5);
  cl.respond(1, 500, 5);
  REQUIRE(cl.od->ejectedCount() == 2);
  HostSharedPtr gone = cl.hosts[0];
  cl.hosts.erase(cl.hosts.begin());
  cl.od->setHosts(cl.hosts);
  CHECK(cl.od->ejectedCount() == 1);
  CHECK(cl.stats.ejections_active == 1);
  CHECK(cl.ejected(0));  // the old host 1 keeps its ejection
  // A request still in flight to the departed host reports in: ignored.
  gone->health_flags = 0;
  cl.od->putHttpResponse(*gone, 500);
  for (int i = 0; i < 10; ++i) cl.od->putHttpResponse(*gone, 500);
  CHECK_FALSE(OutlierDetector::ejected(*gone));
  // It comes back (same object): clean state.
  gone->health_flags = kFailedOutlierCheck;
  gone->passive().od_times_ejected = 3;
  cl.hosts.push_back(gone);
  const uint64_t before = cl.generation;
  cl.od->setHosts(cl.hosts);
  CHECK_FALSE(OutlierDetector::ejected(*gone));
  CHECK(gone->passive().od_times_ejected == 0);
  CHECK(cl.generation == before + 1);
  CHECK(cl.od->ejectedCount() == 1);
  // Kept hosts keep their state through updates.
  cl.tick(30000);
  CHECK_FALSE(cl.ejected(0));
  CHECK(cl.stats.ejections_active == 0);
}

TEST_CASE("Outlier: config updates", "[outlier]") {
  Cluster cl(roomy(), 1);
  cl.respond(0, 500, 4);
  OutlierConfig c = roomy();
  c.consecutive_5xx = 3;
  c.interval_ms = 5000;
  cl.od->updateConfig(c);
  CHECK(cl.od->intervalMs() == 5000);
  // The run (4, past the new threshold) restarted: three more failures are needed.
  cl.respond(0, 500, 2);
  CHECK_FALSE(cl.ejected(0));
  cl.respond(0, 500);
  CHECK(cl.ejected(0));
}

TEST_CASE("Outlier: a passing active health check returns the host", "[outlier]") {
  Cluster cl(roomy(), 1);
  cl.respond(0, 500, 5);
  cl.host(0).health_flags |= kFailedActiveHc;
  cl.od->onActiveHealthCheckSuccess(cl.host(0));
  CHECK(cl.ejected(0));  // active checking still fails it
  cl.host(0).health_flags &= ~static_cast<uint32_t>(kFailedActiveHc);
  cl.od->onActiveHealthCheckSuccess(cl.host(0));
  CHECK_FALSE(cl.ejected(0));
  CHECK(cl.od->ejectedCount() == 0);
  CHECK(cl.generation == 2);
}

TEST_CASE("Outlier: a detector that goes away returns its hosts", "[outlier]") {
  Cluster cl(roomy(), 2);
  cl.respond(0, 500, 5);
  REQUIRE(cl.ejected(0));
  cl.od.reset();
  CHECK_FALSE(cl.ejected(0));
  CHECK(cl.stats.ejections_active == 0);
  CHECK(cl.generation == 2);
}

TEST_CASE("Outlier: workers reporting concurrently do not double-eject", "[outlier]") {
  OutlierConfig c = roomy();
  c.consecutive_5xx = 3;
  c.enforcing_consecutive_gateway_failure = 100;
  c.base_ejection_time_ms = 20;
  c.interval_ms = 10;
  c.max_ejection_percent = 50;
  Cluster cl(c, 8);
  std::atomic<bool> stop{false};
  // The main thread: intervals (un-ejections, rates) and host updates while the workers report.
  std::thread main_thread([&] {
    for (int i = 0; i < 300 && !stop; ++i) {
      cl.now += 10;
      cl.od->onInterval();
      if (i % 50 == 0) cl.od->setHosts(cl.hosts);
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      uint32_t x = 12345u + static_cast<uint32_t>(w);
      for (int i = 0; i < 50000; ++i) {
        x = x * 1664525u + 1013904223u;
        Host& h = cl.host((x >> 8) % 8);
        const uint32_t roll = (x >> 16) % 10;
        if (roll < 5) {
          cl.od->putHttpResponse(h, 200);
        } else if (roll < 8) {
          cl.od->putHttpResponse(h, roll == 5 ? 500 : 503);
        } else {
          cl.od->putLocalOriginFailure(h, LocalOriginFailure::ConnectFailed);
        }
      }
    });
  }
  for (auto& t : workers) t.join();
  stop = true;
  main_thread.join();
  CHECK(cl.od->ejectedCount() == cl.flaggedCount());
  CHECK(cl.stats.ejections_active == cl.flaggedCount());
  CHECK(cl.flaggedCount() <= 4);  // 50% of 8
  CHECK(cl.stats.ejections_enforced_total >= cl.flaggedCount());
  // Each ejection and each un-ejection moved the generation once.
  const uint64_t unejections = cl.stats.ejections_enforced_total - cl.flaggedCount();
  CHECK(cl.generation == cl.stats.ejections_enforced_total + unejections);
}
