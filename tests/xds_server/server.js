#!/usr/bin/env node
'use strict';
// A test xDS management server: ADS over gRPC (state of the world and delta) with resources held in
// memory, and a small HTTP/JSON control API to change them, drop streams and read back every request
// the clients sent. See README.md beside this file for the API.

const fs = require('fs');
const http = require('http');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { ProtoRegistry, JsonError, INCLUDE_DIRS, structToJson, TYPE_PREFIX } = require('./protojson');

const TYPES = {
  cds: TYPE_PREFIX + 'envoy.config.cluster.v3.Cluster',
  eds: TYPE_PREFIX + 'envoy.config.endpoint.v3.ClusterLoadAssignment',
  lds: TYPE_PREFIX + 'envoy.config.listener.v3.Listener',
  rds: TYPE_PREFIX + 'envoy.config.route.v3.RouteConfiguration',
  sds: TYPE_PREFIX + 'envoy.extensions.transport_sockets.tls.v3.Secret',
};
// Push order that never leaves a reference dangling (Envoy's advice): CDS, EDS, LDS, RDS, SDS.
const PUSH_ORDER = [TYPES.cds, TYPES.eds, TYPES.lds, TYPES.rds, TYPES.sds];

// ---- command line ---------------------------------------------------------------------------------

function parseArgs(argv) {
  const opts = { host: '127.0.0.1', port: 0, unix: null, controlPort: 0, portsFile: null, resources: null, protos: [], verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--host': opts.host = next(); break;
      case '--port': opts.port = Number(next()); break;
      case '--unix': opts.unix = next(); break;
      case '--tls-cert': opts.tlsCert = next(); break;
      case '--tls-key': opts.tlsKey = next(); break;
      case '--tls-client-ca': opts.tlsClientCa = next(); break;
      case '--control-port': opts.controlPort = Number(next()); break;
      case '--ports-file': opts.portsFile = next(); break;
      case '--resources': opts.resources = next(); break;
      case '--proto': opts.protos.push(next()); break;
      case '-v': case '--verbose': opts.verbose = true; break;
      case '-h': case '--help': usage(); break;
      default: usage(`unknown argument ${a}`);
    }
  }
  return opts;
}

function usage(msg) {
  if (msg) console.error(`server.js: ${msg}`);
  console.error('usage: node server.js [--host 127.0.0.1] [--port 0] [--unix PATH] [--control-port 0]\n' +
    '                      [--ports-file FILE] [--resources FILE.json] [--proto FILE.proto]... [-v]');
  process.exit(msg ? 2 : 0);
}

const opts = parseArgs(process.argv.slice(2));
const log = (...args) => { if (opts.verbose) console.error('[xds-server]', ...args); };

// ---- protos ---------------------------------------------------------------------------------------

const registry = new ProtoRegistry();
if (opts.protos.length) registry.load(opts.protos);
const packageDefinition = protoLoader.loadSync('envoy/service/discovery/v3/ads.proto', {
  keepCase: true, longs: String, enums: String, defaults: false, oneofs: true, includeDirs: INCLUDE_DIRS,
});
const adsService = grpc.loadPackageDefinition(packageDefinition).envoy.service.discovery.v3.AggregatedDiscoveryService.service;
// SDS on its own stream (Istio's agent serves it on a unix socket): the same messages and semantics as
// ADS, under the SecretDiscoveryService's method names.
const sdsDefinition = protoLoader.loadSync('envoy/service/secret/v3/sds.proto', {
  keepCase: true, longs: String, enums: String, defaults: false, oneofs: true, includeDirs: INCLUDE_DIRS,
});
const sdsService = grpc.loadPackageDefinition(sdsDefinition).envoy.service.secret.v3.SecretDiscoveryService.service;

// ---- state ----------------------------------------------------------------------------------------

let versionCounter = 0;
let nonceCounter = 0;
let streamCounter = 0;
let requestSeq = 0;
let responseSeq = 0;
const store = new Map();        // type_url -> Map(name -> {name, version, any, json})
const typeVersions = new Map(); // type_url -> version_info of the type's latest change
const streams = new Map();      // id -> stream record
const requests = [];            // every request received, in order
const responses = [];           // every response sent, in order
const settings = {
  hold_types: [],        // types the server never answers on its own (it still records requests)
  refuse_streams: false, // close every new stream at once with UNAVAILABLE
  resend_on_nack: false, // answer a NACK by sending the same resources again (a NACK-loop server)
};

function typeStore(type) {
  if (!store.has(type)) store.set(type, new Map());
  return store.get(type);
}

function expandType(t) {
  return TYPES[t] || t;
}

function held(type) {
  return settings.hold_types.map(expandType).includes(type);
}

function nextNonce() {
  return String(++nonceCounter);
}

// ---- request / response records -------------------------------------------------------------------

function recordRequest(stream, req, kind) {
  const entry = {
    seq: ++requestSeq,
    stream: stream.id,
    api: stream.api,
    time_ms: Date.now(),
    kind, // "request" (no nonce), "ack", "nack", or "stale" (a nonce that is not the newest: ignored)
    type_url: req.type_url || '',
    response_nonce: req.response_nonce || '',
    has_node: !!req.node,
    node: req.node ? nodeToJson(req.node) : undefined,
    error_detail: req.error_detail ? { code: req.error_detail.code || 0, message: req.error_detail.message || '' } : undefined,
  };
  if (stream.api === 'sotw') {
    entry.version_info = req.version_info || '';
    entry.resource_names = req.resource_names || [];
  } else {
    entry.resource_names_subscribe = req.resource_names_subscribe || [];
    entry.resource_names_unsubscribe = req.resource_names_unsubscribe || [];
    entry.initial_resource_versions = req.initial_resource_versions || {};
  }
  requests.push(entry);
  log('request', JSON.stringify(entry));
  return entry;
}

function nodeToJson(node) {
  const out = Object.assign({}, node);
  if (node.metadata) out.metadata = structToJson(node.metadata);
  return out;
}

function recordResponse(stream, resp, names, removed) {
  const entry = {
    seq: ++responseSeq,
    stream: stream.id,
    api: stream.api,
    time_ms: Date.now(),
    type_url: resp.type_url,
    version_info: stream.api === 'sotw' ? resp.version_info : resp.system_version_info,
    nonce: resp.nonce,
    resource_names: names,
    removed_resources: removed,
  };
  responses.push(entry);
  log('response', JSON.stringify(entry));
}

// ---- state of the world ---------------------------------------------------------------------------

function sendSotw(stream, type, raw) {
  const st = stream.types.get(type);
  let resources;
  let version;
  if (raw) {
    ({ resources, version } = raw);
  } else {
    const all = [...typeStore(type).values()];
    resources = st.wildcard ? all : all.filter((r) => st.names.has(r.name));
    version = typeVersions.get(type) || '';
  }
  const nonce = (raw && raw.nonce) || nextNonce();
  const resp = {
    version_info: version,
    resources: resources.map((r) => r.any),
    type_url: type,
    nonce,
    control_plane: { identifier: 'strait-xds-test-server' },
  };
  if (st) {
    st.nonce = nonce;
    st.last_sent = resources;
    st.last_version = version;
  }
  stream.call.write(resp);
  recordResponse(stream, resp, resources.map((r) => r.name), []);
}

function onSotwRequest(stream, req) {
  const type = req.type_url || '';
  let st = stream.types.get(type);
  const first = !st;
  if (first) {
    st = { wildcard: false, names: new Set(), nonce: null, acked_version: '', last_sent: [], last_version: '' };
    stream.types.set(type, st);
  }
  let kind = 'request';
  if (req.response_nonce) {
    if (req.response_nonce !== st.nonce) {
      recordRequest(stream, req, 'stale'); // as istiod does: a stale nonce's request is dropped whole
      return;
    }
    kind = req.error_detail ? 'nack' : 'ack';
  }
  recordRequest(stream, req, kind);
  const names = req.resource_names || [];
  // Legacy wildcard: the type's first request lists nothing. "*" is wildcard at any time.
  const wildcard = names.includes('*') || (first ? names.length === 0 : st.wildcard && names.length === 0);
  const newNames = new Set(names.filter((n) => n !== '*'));
  const changed = first || wildcard !== st.wildcard || newNames.size !== st.names.size || [...newNames].some((n) => !st.names.has(n));
  st.wildcard = wildcard;
  st.names = newNames;
  if (kind === 'ack') st.acked_version = req.version_info || '';
  if (held(type)) return;
  if (changed) {
    sendSotw(stream, type);
  } else if (kind === 'nack' && settings.resend_on_nack) {
    sendSotw(stream, type, { resources: st.last_sent, version: st.last_version });
  }
}

// ---- delta ----------------------------------------------------------------------------------------

function deltaInterested(st, name) {
  return st.wildcard || st.names.has(name);
}

// Sends what the client lacks: resources whose version differs from what it has, and removals.
function pushDelta(stream, type, { force = false, newlySubscribed = [], raw = null } = {}) {
  const st = stream.types.get(type);
  let updates;
  let removed;
  if (raw) {
    ({ updates, removed } = raw);
  } else {
    const all = typeStore(type);
    updates = [...all.values()].filter((r) => deltaInterested(st, r.name) && st.known.get(r.name) !== r.version);
    removed = [...st.known.keys()].filter((n) => !all.has(n));
    // A name newly subscribed that does not exist: say so (as istiod does).
    for (const n of newlySubscribed) {
      if (!all.has(n) && !removed.includes(n)) removed.push(n);
    }
    if (!updates.length && !removed.length && !force) return;
  }
  const nonce = (raw && raw.nonce) || nextNonce();
  const resp = {
    system_version_info: (raw && raw.version) || typeVersions.get(type) || '',
    resources: updates.map((r) => ({ name: r.name, version: r.version, resource: r.any })),
    type_url: type,
    nonce,
    removed_resources: removed,
  };
  st.nonce = nonce;
  st.last_updates = updates;
  st.last_removed = removed;
  for (const r of updates) st.known.set(r.name, r.version);
  for (const n of removed) st.known.delete(n);
  stream.call.write(resp);
  recordResponse(stream, resp, updates.map((r) => r.name), removed);
}

function onDeltaRequest(stream, req) {
  const type = req.type_url || '';
  let st = stream.types.get(type);
  const first = !st;
  if (first) {
    st = { wildcard: false, names: new Set(), known: new Map(), nonce: null, last_updates: [], last_removed: [] };
    stream.types.set(type, st);
  }
  let kind = 'request';
  if (req.response_nonce) {
    if (req.response_nonce !== st.nonce) {
      recordRequest(stream, req, 'stale');
      return;
    }
    kind = req.error_detail ? 'nack' : 'ack';
  }
  recordRequest(stream, req, kind);
  if (first) {
    for (const [n, v] of Object.entries(req.initial_resource_versions || {})) st.known.set(n, v);
  }
  const subscribe = req.resource_names_subscribe || [];
  const unsubscribe = req.resource_names_unsubscribe || [];
  const wasWildcard = st.wildcard;
  if (first && subscribe.length === 0) st.wildcard = true; // legacy wildcard
  const added = [];
  for (const n of subscribe) {
    if (n === '*') st.wildcard = true;
    else if (!st.names.has(n)) {
      st.names.add(n);
      added.push(n);
    }
  }
  for (const n of unsubscribe) {
    if (n === '*') st.wildcard = false;
    else {
      st.names.delete(n);
      if (!st.wildcard) st.known.delete(n);
    }
  }
  if (held(type)) return;
  if (first || added.length || (st.wildcard && !wasWildcard)) {
    pushDelta(stream, type, { force: first, newlySubscribed: added });
  } else if (kind === 'nack' && settings.resend_on_nack) {
    pushDelta(stream, type, { raw: { updates: st.last_updates, removed: st.last_removed } });
  }
}

// ---- streams --------------------------------------------------------------------------------------

function openStream(call, api) {
  const stream = {
    id: ++streamCounter, api, call, peer: call.getPeer(), open: true, opened_ms: Date.now(), closed_ms: null,
    types: new Map(), node_id: null,
  };
  streams.set(stream.id, stream);
  log(`stream ${stream.id} (${api}) from ${stream.peer}`);
  const close = () => {
    if (!stream.open) return;
    stream.open = false;
    stream.closed_ms = Date.now();
    log(`stream ${stream.id} closed`);
  };
  call.on('end', () => {
    close();
    call.end();
  });
  call.on('cancelled', close);
  call.on('error', close);
  call.on('close', close);
  if (settings.refuse_streams) {
    killStream(stream, 'refused by the control API (refuse_streams)');
    return;
  }
  call.on('data', (req) => {
    if (!stream.open) return;
    if (req.node && req.node.id) stream.node_id = req.node.id;
    try {
      if (api === 'sotw') onSotwRequest(stream, req);
      else onDeltaRequest(stream, req);
    } catch (e) {
      console.error('[xds-server] request handling failed:', e);
    }
  });
}

function killStream(stream, why) {
  if (!stream.open) return;
  stream.open = false;
  stream.closed_ms = Date.now();
  stream.call.emit('error', { code: grpc.status.UNAVAILABLE, details: why });
}

function openStreams(filter) {
  return [...streams.values()].filter((s) => s.open && (!filter || filter(s)));
}

// Pushes a type's change to every stream that subscribes to it (`changed`: the names that changed).
function pushType(type, changed) {
  if (held(type)) return;
  for (const stream of openStreams()) {
    const st = stream.types.get(type);
    if (!st) continue;
    if (stream.api === 'sotw') {
      if (st.wildcard || changed.some((n) => st.names.has(n))) sendSotw(stream, type);
    } else {
      pushDelta(stream, type);
    }
  }
}

// ---- control operations ---------------------------------------------------------------------------

// Sets (adds or replaces) resources; `replaceTypes`: for these types, every other resource goes.
function setResources(list, { replaceTypes = [], push = true, version } = {}) {
  const v = version !== undefined ? String(version) : String(++versionCounter);
  const changed = new Map(); // type -> names
  const parsed = list.map((json, i) => {
    const any = registry.anyFromJson(json, `resources[${i}]`);
    const name = registry.nameOf(any);
    if (!name) throw new JsonError(`resources[${i}]: the resource has no name (field 1)`);
    return { name, any, json };
  });
  for (const t of replaceTypes.map(expandType)) {
    const s = typeStore(t);
    const keep = new Set(parsed.filter((r) => r.any.type_url === t).map((r) => r.name));
    for (const n of [...s.keys()]) {
      if (!keep.has(n)) {
        s.delete(n);
        addChange(changed, t, n);
      }
    }
    if (!changed.has(t)) changed.set(t, []);
  }
  for (const r of parsed) {
    typeStore(r.any.type_url).set(r.name, { name: r.name, version: v, any: r.any, json: r.json });
    addChange(changed, r.any.type_url, r.name);
  }
  for (const t of changed.keys()) typeVersions.set(t, v);
  if (push) pushChanges(changed);
  return { version: v, changed: Object.fromEntries(changed) };
}

function removeResources(type, names, { push = true, version } = {}) {
  type = expandType(type);
  const v = version !== undefined ? String(version) : String(++versionCounter);
  const s = typeStore(type);
  const gone = names.filter((n) => s.delete(n));
  const changed = new Map([[type, gone]]);
  typeVersions.set(type, v);
  if (push) pushChanges(changed);
  return { version: v, removed: gone };
}

function addChange(changed, type, name) {
  if (!changed.has(type)) changed.set(type, []);
  changed.get(type).push(name);
}

function pushChanges(changed) {
  const types = [...changed.keys()].sort((a, b) => order(a) - order(b));
  for (const t of types) pushType(t, changed.get(t));
}

function order(type) {
  const i = PUSH_ORDER.indexOf(type);
  return i < 0 ? PUSH_ORDER.length : i;
}

// A response exactly as given (for tests of what a client must refuse: duplicates, wrong types).
function pushRaw(body) {
  const type = expandType(body.type_url || '');
  if (!type) throw new JsonError('type_url is required');
  const targets = openStreams((s) => (body.stream ? s.id === Number(body.stream) : true) && (!body.api || s.api === body.api));
  const sent = [];
  for (const stream of targets) {
    if (!stream.types.has(type)) {
      if (!body.force) continue; // "force": true sends it to streams that never asked for the type
      stream.types.set(type, stream.api === 'sotw'
        ? { wildcard: false, names: new Set(), nonce: null, acked_version: '', last_sent: [], last_version: '' }
        : { wildcard: false, names: new Set(), known: new Map(), nonce: null, last_updates: [], last_removed: [] });
    }
    if (stream.api === 'sotw') {
      const resources = (body.resources || []).map((json, i) => {
        const any = registry.anyFromJson(json, `resources[${i}]`);
        return { name: registry.nameOf(any), any };
      });
      sendSotw(stream, type, { resources, version: body.version_info || '', nonce: body.nonce });
    } else {
      const updates = (body.resources || []).map((r, i) => {
        const any = registry.anyFromJson(r.resource, `resources[${i}].resource`);
        return { name: r.name || registry.nameOf(any), version: r.version || '', any };
      });
      pushDelta(stream, type, { raw: { updates, removed: body.removed_resources || [], version: body.system_version_info, nonce: body.nonce } });
    }
    sent.push({ stream: stream.id, nonce: stream.types.get(type).nonce });
  }
  return { sent };
}

function streamToJson(s) {
  const types = {};
  for (const [t, st] of s.types) {
    types[t] = { wildcard: st.wildcard, names: [...st.names], nonce: st.nonce };
    if (s.api === 'sotw') types[t].acked_version = st.acked_version;
    else types[t].known = Object.fromEntries(st.known);
  }
  return { id: s.id, api: s.api, peer: s.peer, open: s.open, node_id: s.node_id, opened_ms: s.opened_ms, closed_ms: s.closed_ms, types };
}

function resourcesToJson(typeFilter) {
  const out = {};
  for (const [t, s] of store) {
    if (typeFilter && t !== typeFilter) continue;
    out[t] = { version: typeVersions.get(t) || '', resources: [...s.values()].map((r) => ({ name: r.name, version: r.version, resource: r.json })) };
  }
  return out;
}

// ---- HTTP control API -----------------------------------------------------------------------------

function since(list, query) {
  const from = Number(query.get('since') || 0);
  return list.filter((e) => e.seq > from &&
    (!query.get('type_url') || e.type_url === expandType(query.get('type_url'))) &&
    (!query.get('stream') || e.stream === Number(query.get('stream'))) &&
    (!query.get('kind') || e.kind === query.get('kind')));
}

const routes = {
  'GET /health': () => ({ ok: true }),
  'GET /requests': (body, q) => ({ requests: since(requests, q), last_seq: requestSeq }),
  'GET /responses': (body, q) => ({ responses: since(responses, q), last_seq: responseSeq }),
  'GET /streams': () => ({ streams: [...streams.values()].map(streamToJson) }),
  'GET /resources': (body, q) => ({ resources: resourcesToJson(q.get('type_url') && expandType(q.get('type_url'))) }),
  'GET /settings': () => settings,
  'POST /resources': (body) => setResources(need(body.resources, 'resources'), { push: body.push !== false, version: body.version }),
  'POST /replace': (body) => setResources(body.resources || [], { replaceTypes: need(body.types, 'types'), push: body.push !== false, version: body.version }),
  'POST /remove': (body) => removeResources(need(body.type_url, 'type_url'), need(body.names, 'names'), { push: body.push !== false, version: body.version }),
  'POST /push': (body) => pushRaw(body),
  'POST /kill': (body) => {
    const killed = openStreams((s) => !body.stream || s.id === Number(body.stream)).map((s) => {
      killStream(s, 'killed by the control API');
      return s.id;
    });
    return { killed };
  },
  'POST /settings': (body) => {
    for (const k of Object.keys(body)) {
      if (!(k in settings)) throw new JsonError(`unknown setting ${k}`);
      settings[k] = body[k];
    }
    return settings;
  },
  'POST /clear': () => {
    requests.length = 0;
    responses.length = 0;
    return { last_request_seq: requestSeq, last_response_seq: responseSeq };
  },
  'POST /quit': () => {
    setImmediate(shutdown);
    return { ok: true };
  },
};

function need(v, name) {
  if (v === undefined || v === null) throw new JsonError(`"${name}" is required`);
  return v;
}

function handleHttp(req, res) {
  const url = new URL(req.url, 'http://control');
  const route = routes[`${req.method} ${url.pathname}`];
  let chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const reply = (code, obj) => {
      const text = JSON.stringify(obj, null, 1) + '\n';
      res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    if (!route) return reply(404, { error: `no route ${req.method} ${url.pathname}`, routes: Object.keys(routes) });
    let body = {};
    const text = Buffer.concat(chunks).toString('utf8');
    chunks = null;
    if (text.trim()) {
      try {
        body = JSON.parse(text);
      } catch (e) {
        return reply(400, { error: `bad JSON: ${e.message}` });
      }
    }
    try {
      reply(200, route(body, url.searchParams));
    } catch (e) {
      if (e instanceof JsonError) return reply(400, { error: e.message });
      console.error('[xds-server] control API failure:', e);
      reply(500, { error: String(e.stack || e) });
    }
  });
}

// ---- start ----------------------------------------------------------------------------------------

const grpcServer = new grpc.Server();
grpcServer.addService(adsService, {
  StreamAggregatedResources: (call) => openStream(call, 'sotw'),
  DeltaAggregatedResources: (call) => openStream(call, 'delta'),
});
grpcServer.addService(sdsService, {
  StreamSecrets: (call) => openStream(call, 'sotw'),
  DeltaSecrets: (call) => openStream(call, 'delta'),
  FetchSecrets: (call, callback) => callback({ code: grpc.status.UNIMPLEMENTED, details: 'FetchSecrets is not served' }),
});
const controlServer = http.createServer(handleHttp);

function bindGrpc(address) {
  return new Promise((resolve, reject) => {
    // --tls-cert/--tls-key: serve over TLS; --tls-client-ca: and require a client certificate from it.
    const creds = opts.tlsCert
      ? grpc.ServerCredentials.createSsl(opts.tlsClientCa ? fs.readFileSync(opts.tlsClientCa) : null,
        [{ cert_chain: fs.readFileSync(opts.tlsCert), private_key: fs.readFileSync(opts.tlsKey) }], !!opts.tlsClientCa)
      : grpc.ServerCredentials.createInsecure();
    grpcServer.bindAsync(address, creds, (err, port) => (err ? reject(err) : resolve(port)));
  });
}

function shutdown() {
  for (const s of openStreams()) killStream(s, 'server shutting down');
  controlServer.close();
  // Let the UNAVAILABLE statuses go out, then stop at once (a test server owes nobody a drain).
  setTimeout(() => {
    grpcServer.forceShutdown();
    process.exit(0);
  }, 100);
}

async function main() {
  if (opts.resources) {
    const data = JSON.parse(fs.readFileSync(opts.resources, 'utf8'));
    setResources(Array.isArray(data) ? data : data.resources || [], { push: false });
  }
  const hostForUri = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  const adsPort = await bindGrpc(`${hostForUri}:${opts.port}`);
  if (opts.unix) {
    try { fs.unlinkSync(opts.unix); } catch (e) { /* not there */ }
    await bindGrpc(`unix:${path.resolve(opts.unix)}`);
  }
  await new Promise((resolve, reject) => {
    controlServer.once('error', reject);
    controlServer.listen(opts.controlPort, opts.host, resolve);
  });
  const controlPort = controlServer.address().port;
  const info = {
    ads: `${hostForUri}:${adsPort}`,
    ads_port: adsPort,
    unix: opts.unix ? path.resolve(opts.unix) : null,
    control: `http://${hostForUri}:${controlPort}`,
    control_port: controlPort,
    pid: process.pid,
  };
  if (opts.portsFile) {
    const tmp = `${opts.portsFile}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(info) + '\n');
    fs.renameSync(tmp, opts.portsFile);
  }
  process.stdout.write(JSON.stringify(info) + '\n');
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
main().catch((e) => {
  console.error('[xds-server] failed to start:', e);
  process.exit(1);
});
