#!/usr/bin/env node
// Checks that Strait's .proto subset (xds/api) is wire-compatible with Envoy's real v3 API.
//
// usage: node check_field_compat.js DEPS_DIR [OUR_API_DIR]
//   DEPS_DIR     folder holding envoy-api/, xds/, googleapis/, protoc-gen-validate/ (e.g. the npm
//                package @grpc/grpc-js-xds's node_modules/@grpc/grpc-js-xds/deps)
//   OUR_API_DIR  our include root (default: ../api next to this script)
//
// For every .proto file of ours, the file of the same path in the real tree is loaded, and for every
// message, enum and service we declare (nested ones too) this checks:
//   - it exists in the real tree under the same full name, in the file of the same path;
//   - each of our fields exists there with the same number, name, type (scalar, or the full name of
//     the message/enum), label (repeated or not), map key type, and oneof (same oneof name, or none);
//   - each of our enums has exactly the real enum's values (names and numbers);
//   - each of our RPC methods has the same request/response types and streaming flags.
// Fields, messages and methods that we leave out are fine (we are a subset); enum values are not.
// Prints every mismatch and exits 1 if there is any. protobufjs is taken from node's usual lookup,
// or from the node_modules folder that holds DEPS_DIR.
'use strict';

const fs = require('fs');
const path = require('path');

function usage(msg) {
  if (msg) console.error(`check_field_compat: ${msg}`);
  console.error('usage: node check_field_compat.js DEPS_DIR [OUR_API_DIR]');
  process.exit(2);
}

const depsDir = process.argv[2] ? path.resolve(process.argv[2]) : usage('missing DEPS_DIR');
const ourDir = path.resolve(process.argv[3] || path.join(__dirname, '..', 'api'));
if (!fs.existsSync(path.join(depsDir, 'envoy-api', 'envoy'))) usage(`${depsDir}/envoy-api/envoy not found`);
if (!fs.existsSync(ourDir)) usage(`${ourDir} not found`);

let protobuf;
try {
  protobuf = require(require.resolve('protobufjs', { paths: [__dirname, depsDir, process.cwd()] }));
} catch (e) {
  usage(`cannot load protobufjs (${e.message}); install @grpc/proto-loader or protobufjs`);
}

// Well-known types: protobufjs knows the common ones; descriptor.proto and friends may be needed
// by the real tree's annotations.
const wktDirs = [path.dirname(require.resolve('protobufjs/package.json', { paths: [__dirname, depsDir, process.cwd()] })), '/usr/include'];

function makeRoot(includeDirs) {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    if (path.isAbsolute(target) && fs.existsSync(target)) return target;
    for (const dir of includeDirs) {
      const p = path.join(dir, target);
      if (fs.existsSync(p)) return p;
    }
    return target; // protobufjs handles the common google/protobuf files itself
  };
  return root;
}

function listProtos(dir, rel = '') {
  let out = [];
  for (const ent of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${ent.name}` : ent.name;
    if (ent.isDirectory()) out = out.concat(listProtos(dir, r));
    else if (ent.name.endsWith('.proto')) out.push(r);
  }
  return out.sort();
}

const realIncludes = ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate']
  .map((d) => path.join(depsDir, d))
  .concat(wktDirs);
const ourIncludes = [ourDir].concat(wktDirs);

const ourFiles = listProtos(ourDir);
const mismatches = [];
let passed = 0;
function fail(msg) {
  mismatches.push(msg);
}

function realPathOf(rel) {
  for (const dir of realIncludes) {
    const p = path.join(dir, rel);
    if (fs.existsSync(p)) return p;
  }
  return null;
}

const ourRoot = makeRoot(ourIncludes);
const realRoot = makeRoot(realIncludes);
const realToLoad = [];
// Our own extensions (strait/...), Istio's (istio/...) and OTLP's messages (opentelemetry/..., what the
// span exporter sends) have no counterpart in Envoy's tree: loaded so references resolve, never compared.
const isOwnExtension = (rel) => rel.startsWith('strait/') || rel.startsWith('istio/') || rel.startsWith('opentelemetry/');
for (const rel of ourFiles) {
  if (isOwnExtension(rel)) continue;
  const rp = realPathOf(rel);
  if (!rp) fail(`${rel}: no file of that path in the real tree`);
  else realToLoad.push(rp);
}
try {
  ourRoot.loadSync(ourFiles.map((f) => path.join(ourDir, f)), { keepCase: true });
  ourRoot.resolveAll();
} catch (e) {
  console.error(`check_field_compat: cannot load our protos: ${e.message}`);
  process.exit(2);
}
try {
  realRoot.loadSync(realToLoad, { keepCase: true });
  realRoot.resolveAll();
} catch (e) {
  console.error(`check_field_compat: cannot load the real protos: ${e.message}`);
  process.exit(2);
}

const name = (obj) => obj.fullName.replace(/^\./, '');
function relFile(obj, includes) {
  if (!obj.filename) return '?';
  const abs = path.resolve(obj.filename);
  for (const dir of includes) {
    const d = path.resolve(dir) + path.sep;
    if (abs.startsWith(d)) return abs.slice(d.length).split(path.sep).join('/');
  }
  return obj.filename;
}

function typeOf(field) {
  // Full name for messages/enums, the keyword for scalars.
  return field.resolvedType ? name(field.resolvedType) : field.type;
}

function describe(field) {
  const label = field.map ? `map<${field.keyType}, ${typeOf(field)}>` : `${field.repeated ? 'repeated ' : ''}${typeOf(field)}`;
  const oneof = field.partOf ? ` (oneof ${field.partOf.name})` : '';
  return `${label} ${field.name} = ${field.id}${oneof}`;
}

function checkFile(ours, real, what) {
  const of = relFile(ours, ourIncludes);
  const rf = relFile(real, realIncludes);
  if (of !== rf) fail(`${what}: declared in ${of}, the real one is in ${rf}`);
}

function checkEnum(ours) {
  const full = name(ours);
  const real = realRoot.lookup(full);
  if (!real || !(real instanceof protobuf.Enum)) {
    fail(`enum ${full}: not in the real tree`);
    return;
  }
  if (!ours.parent || !(ours.parent instanceof protobuf.Type)) checkFile(ours, real, `enum ${full}`);
  let ok = true;
  for (const [vname, vnum] of Object.entries(ours.values)) {
    if (!(vname in real.values)) {
      fail(`enum ${full}: value ${vname} = ${vnum} not in the real enum`);
      ok = false;
    } else if (real.values[vname] !== vnum) {
      fail(`enum ${full}: value ${vname} = ${vnum}, real: ${vname} = ${real.values[vname]}`);
      ok = false;
    }
  }
  for (const [vname, vnum] of Object.entries(real.values)) {
    if (!(vname in ours.values)) {
      fail(`enum ${full}: missing real value ${vname} = ${vnum}`);
      ok = false;
    }
  }
  if (ok) passed++;
}

function checkMessage(ours) {
  const full = name(ours);
  const real = realRoot.lookup(full);
  if (!real || !(real instanceof protobuf.Type)) {
    fail(`message ${full}: not in the real tree`);
    return;
  }
  if (!(ours.parent instanceof protobuf.Type)) checkFile(ours, real, `message ${full}`);
  passed++;
  for (const f of ours.fieldsArray) {
    const where = `${full}.${f.name}`;
    const rf = real.fieldsArray.find((x) => x.id === f.id);
    if (!rf) {
      const byName = real.fieldsArray.find((x) => x.name === f.name);
      fail(`${where}: number ${f.id} not in the real message` + (byName ? ` (real: ${describe(byName)})` : ''));
      continue;
    }
    const problems = [];
    if (rf.name !== f.name) problems.push('name');
    if (typeOf(rf) !== typeOf(f)) problems.push('type');
    if (!!rf.map !== !!f.map || (f.map && rf.keyType !== f.keyType)) problems.push('map');
    if (!!rf.repeated !== !!f.repeated) problems.push('label');
    if (!!rf.required !== !!f.required) problems.push('required');
    const ro = rf.partOf ? rf.partOf.name : null;
    const oo = f.partOf ? f.partOf.name : null;
    if (ro !== oo) problems.push('oneof');
    if (problems.length) {
      fail(`${where}: ${problems.join(', ')} differ: ours ${describe(f)}; real ${describe(rf)}`);
    } else {
      passed++;
    }
  }
  for (const n of ours.nestedArray) visit(n);
}

function checkService(ours) {
  const full = name(ours);
  const real = realRoot.lookup(full);
  if (!real || !(real instanceof protobuf.Service)) {
    fail(`service ${full}: not in the real tree`);
    return;
  }
  checkFile(ours, real, `service ${full}`);
  for (const m of ours.methodsArray) {
    const rm = real.methods[m.name];
    if (!rm) {
      fail(`${full}.${m.name}: no such real method`);
      continue;
    }
    const sig = (x) =>
      `(${x.requestStream ? 'stream ' : ''}${name(x.resolvedRequestType)}) returns (${x.responseStream ? 'stream ' : ''}${name(x.resolvedResponseType)})`;
    if (sig(m) !== sig(rm)) fail(`${full}.${m.name}: ours ${sig(m)}; real ${sig(rm)}`);
    else passed++;
  }
}

function visit(obj) {
  if (obj instanceof protobuf.Type) checkMessage(obj);
  else if (obj instanceof protobuf.Enum) checkEnum(obj);
  else if (obj instanceof protobuf.Service) checkService(obj);
  else if (obj.nestedArray) for (const n of obj.nestedArray) visit(n);
}

// Walk only what our own files declare (not the well-known types protobufjs adds).
const ourAbs = new Set(ourFiles.filter((f) => !isOwnExtension(f)).map((f) => path.resolve(ourDir, f)));
function walk(ns) {
  for (const n of ns.nestedArray) {
    if (n instanceof protobuf.Namespace && !(n instanceof protobuf.Type) && !(n instanceof protobuf.Service)) {
      walk(n);
    } else if (n.filename && ourAbs.has(path.resolve(n.filename))) {
      visit(n);
    }
  }
}
walk(ourRoot);

for (const m of mismatches) console.log(`MISMATCH ${m}`);
console.log(`checked ${ourFiles.length} files of ${ourDir} against ${depsDir}`);
console.log(`compat: ${passed} passed, ${mismatches.length} failed`);
process.exit(mismatches.length ? 1 : 0);
