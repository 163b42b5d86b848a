// Where a route's memory goes (issue 13: ~2.5 KB a route once on-demand discovery holds few clusters).
// Builds a RouteConfiguration of N Istio-shaped virtual hosts (two domains, one prefix route to an
// outbound|80||svc cluster), then translates it with RouteTable::create as the xDS thread does, and prints
// per virtual host:
//   - the proto as retained in memory (SpaceUsedLong) and its size on the wire;
//   - the heap create() takes (mallinfo2 before and after), both ways a table is made: from an RDS
//     resource, whose proto the table shares with the xDS sources, and from a route_config inline in an
//     HCM, which the table copies;
//   - the size of the structs a route is made of.
//
//   ninja -C build strait_route_mem && build/tests/strait_route_mem [N]     (default N: 10000)
#include <malloc.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "envoy/config/route/v3/route.pb.h"
#include "proxy/config/snapshot.h"
#include "proxy/http/route_table.h"

using namespace strait;

namespace {
size_t heapInUse() {
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}
}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 10000;
  if (n <= 0) {
    std::fprintf(stderr, "usage: %s [virtual hosts > 0]\n", argv[0]);
    return 2;
  }
  envoy::config::route::v3::RouteConfiguration rc;
  rc.set_name("outbound_80");
  for (int i = 0; i < n; ++i) {
    const std::string host = "svc-" + std::to_string(i) + ".ns.svc.cluster.local";
    auto* vh = rc.add_virtual_hosts();
    vh->set_name(host + ":80");
    vh->add_domains(host);
    vh->add_domains(host + ":80");
    auto* r = vh->add_routes();
    r->set_name("default");
    r->mutable_match()->set_prefix("/");
    r->mutable_route()->set_cluster("outbound|80||" + host);
  }
  const size_t proto_mem = rc.SpaceUsedLong();
  const size_t wire = rc.ByteSizeLong();

  http::RouteTable::Options options;
  options.validate_clusters = false;  // as for an RDS table: the clusters may come later
  const config::ClusterMap clusters;
  // What create() adds to the heap, with everything it made still alive.
  auto measure = [&](auto&& make) -> double {
    malloc_trim(0);
    const size_t before = heapInUse();
    auto table = make();
    if (!table.ok()) {
      std::fprintf(stderr, "%s\n", std::string(table.status().message()).c_str());
      std::exit(1);
    }
    return static_cast<double>(heapInUse() - before) / n;
  };
  auto shared_rc = std::make_shared<const envoy::config::route::v3::RouteConfiguration>(rc);
  const double per_vh_shared = measure([&] { return http::RouteTable::create(shared_rc, "rds", clusters, options); });
  const double per_vh_copy = measure([&] { return http::RouteTable::create(rc, "route_config", clusters, options); });
  const double per_vh_proto = static_cast<double>(proto_mem) / n;

  std::printf("virtual hosts (one route each): %d\n", n);
  std::printf("proto on the wire:            %8.0f B per virtual host\n", static_cast<double>(wire) / n);
  std::printf("proto in memory (SpaceUsed):  %8.0f B per virtual host (held once by the xDS sources)\n", per_vh_proto);
  std::printf("RouteTable::create, RDS:      %8.0f B per virtual host (shares the sources' proto)\n", per_vh_shared);
  std::printf("RouteTable::create, inline:   %8.0f B per virtual host (its own copy of the proto)\n", per_vh_copy);
  std::printf("sizeof RouteEntry %zu, RetryPolicy %zu, RedirectAction %zu, HeaderMutation %zu, std::string %zu\n",
              sizeof(http::RouteEntry), sizeof(http::RetryPolicy), sizeof(http::RedirectAction),
              sizeof(http::HeaderMutation), sizeof(std::string));
  return 0;
}
