'use strict';
// Envoy's JSON form of a resource ("@type" plus proto3 JSON fields) -> protobuf bytes, and back to
// readable JSON for the logs. protobufjs loads the real Envoy protos that @grpc/grpc-js-xds ships;
// a message type is found by its package: envoy.config.cluster.v3.Cluster loads every .proto file in
// envoy/config/cluster/v3 the first time it is needed.

const fs = require('fs');
const path = require('path');
// Loading proto-loader registers descriptor.proto & co. as protobufjs "common" files, which the
// validate/udpa annotation protos import.
require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const DEPS_DIR = path.join(path.dirname(require.resolve('@grpc/grpc-js-xds/package.json')), 'deps');
const INCLUDE_DIRS = ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => path.join(DEPS_DIR, d));
const TYPE_PREFIX = 'type.googleapis.com/';

const WRAPPERS = new Set([
  'google.protobuf.DoubleValue', 'google.protobuf.FloatValue', 'google.protobuf.Int64Value',
  'google.protobuf.UInt64Value', 'google.protobuf.Int32Value', 'google.protobuf.UInt32Value',
  'google.protobuf.BoolValue', 'google.protobuf.StringValue', 'google.protobuf.BytesValue',
]);

function camel(name) {
  return name.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
}

class JsonError extends Error {}

function fail(where, message) {
  throw new JsonError(`${where || '(root)'}: ${message}`);
}

// "1.5s" / "-0.000000001s" -> {seconds, nanos}
function parseDuration(text, where) {
  const m = /^(-)?(\d+)(?:\.(\d{1,9}))?s$/.exec(text);
  if (!m) fail(where, `bad Duration ${JSON.stringify(text)} (want e.g. "1.5s")`);
  const sign = m[1] ? -1 : 1;
  const nanos = m[3] ? Number(m[3].padEnd(9, '0')) : 0;
  return { seconds: String(sign * Number(m[2])), nanos: sign * nanos };
}

function parseTimestamp(text, where) {
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) fail(where, `bad Timestamp ${JSON.stringify(text)}`);
  const frac = /\.(\d+)/.exec(text);
  const nanos = frac ? Number(frac[1].slice(0, 9).padEnd(9, '0')) : 0;
  return { seconds: String(Math.floor(ms / 1000)), nanos };
}

class ProtoRegistry {
  constructor(includeDirs = INCLUDE_DIRS) {
    this.includeDirs = includeDirs;
    this.root = new protobuf.Root();
    this.loadedDirs = new Set();
    this.root.resolvePath = (origin, target) => {
      if (path.isAbsolute(target)) return target;
      for (const dir of this.includeDirs) {
        const full = path.join(dir, target);
        if (fs.existsSync(full)) return full;
      }
      return target; // protobufjs's bundled google/protobuf/*.proto
    };
    this.load(['any', 'duration', 'empty', 'field_mask', 'struct', 'timestamp', 'wrappers'].map((f) => `google/protobuf/${f}.proto`));
  }

  // Loads .proto files given relative to the include dirs (or absolute).
  load(files) {
    this.root.loadSync(files, { keepCase: true });
    this.root.resolveAll();
  }

  lookupType(fullName) {
    const found = this.tryLookup(fullName);
    if (found) return found;
    // Load the package's folder; for nested messages (a.b.v3.Outer.Inner) try shorter prefixes too.
    const parts = fullName.split('.');
    for (let i = parts.length - 1; i > 0; i--) {
      const rel = parts.slice(0, i).join('/');
      for (const dir of this.includeDirs) {
        const folder = path.join(dir, rel);
        if (this.loadedDirs.has(folder) || !fs.existsSync(folder) || !fs.statSync(folder).isDirectory()) continue;
        this.loadedDirs.add(folder);
        const files = fs.readdirSync(folder).filter((f) => f.endsWith('.proto')).map((f) => path.join(rel, f));
        if (files.length) this.load(files);
      }
      const t = this.tryLookup(fullName);
      if (t) return t;
    }
    throw new JsonError(`unknown message type ${fullName}`);
  }

  tryLookup(fullName) {
    try {
      return this.root.lookupType(fullName);
    } catch (e) {
      return null;
    }
  }

  typeOfUrl(typeUrl) {
    const slash = typeUrl.lastIndexOf('/');
    return this.lookupType(slash >= 0 ? typeUrl.slice(slash + 1) : typeUrl);
  }

  // ---- JSON -> bytes ------------------------------------------------------------------------------

  // {"@type": ..., ...} -> {type_url, value: Buffer}
  anyFromJson(json, where = '') {
    if (json === null || typeof json !== 'object' || Array.isArray(json)) fail(where, 'expected an object with "@type"');
    const typeUrl = json['@type'];
    if (typeof typeUrl !== 'string' || !typeUrl) fail(where, 'missing "@type"');
    const type = this.typeOfUrl(typeUrl);
    let body = json;
    const full = type.fullName.slice(1);
    // Well-known types inside Any carry their JSON value in "value".
    if (full.startsWith('google.protobuf.') && (WRAPPERS.has(full) || ['google.protobuf.Duration',
      'google.protobuf.Timestamp', 'google.protobuf.Struct', 'google.protobuf.Value', 'google.protobuf.ListValue',
      'google.protobuf.FieldMask'].includes(full))) {
      body = json.value;
    } else {
      body = Object.assign({}, json);
      delete body['@type'];
    }
    const value = this.encode(type, body, `${where}<${full}>`);
    return { type_url: typeUrl.includes('/') ? typeUrl : TYPE_PREFIX + typeUrl, value };
  }

  encode(type, json, where = '') {
    const obj = this.messageFromJson(type, json, where);
    return Buffer.from(type.encode(type.fromObject(obj)).finish());
  }

  // proto3 JSON -> the plain object protobufjs's fromObject takes (snake_case keys).
  messageFromJson(type, json, where) {
    const full = type.fullName.slice(1);
    switch (full) {
      case 'google.protobuf.Any':
        return this.anyFromJson(json, where);
      case 'google.protobuf.Duration':
        if (typeof json === 'string') return parseDuration(json, where);
        break;
      case 'google.protobuf.Timestamp':
        if (typeof json === 'string') return parseTimestamp(json, where);
        break;
      case 'google.protobuf.FieldMask':
        if (typeof json === 'string') return { paths: json ? json.split(',').map((p) => p.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase())) : [] };
        break;
      case 'google.protobuf.Struct':
        return this.structFromJson(json, where);
      case 'google.protobuf.Value':
        return this.valueFromJson(json, where);
      case 'google.protobuf.ListValue':
        if (!Array.isArray(json)) fail(where, 'expected an array');
        return { values: json.map((v, i) => this.valueFromJson(v, `${where}[${i}]`)) };
      default:
        if (WRAPPERS.has(full)) {
          return { value: this.scalarFromJson(type.fields.value, json, where) };
        }
    }
    if (json === null || typeof json !== 'object' || Array.isArray(json)) fail(where, `expected an object for ${full}`);
    const out = {};
    const byName = this.fieldIndex(type);
    const oneofSeen = new Map();
    for (const [key, val] of Object.entries(json)) {
      const at = where ? `${where}.${key}` : key;
      const field = byName.get(key);
      if (!field) fail(at, `unknown field of ${full}`);
      if (val === null && field.resolvedType?.fullName !== '.google.protobuf.Value') continue;
      if (field.partOf) {
        const other = oneofSeen.get(field.partOf.name);
        if (other) fail(at, `oneof ${field.partOf.name} already set by ${other}`);
        oneofSeen.set(field.partOf.name, key);
      }
      if (field.map) {
        if (typeof val !== 'object' || Array.isArray(val)) fail(at, 'expected an object (map)');
        const m = {};
        for (const [k, v] of Object.entries(val)) m[k] = this.fieldValueFromJson(field, v, `${at}[${k}]`);
        out[field.name] = m;
      } else if (field.repeated) {
        if (!Array.isArray(val)) fail(at, 'expected an array');
        out[field.name] = val.map((v, i) => this.fieldValueFromJson(field, v, `${at}[${i}]`));
      } else {
        out[field.name] = this.fieldValueFromJson(field, val, at);
      }
    }
    return out;
  }

  fieldIndex(type) {
    if (!type._straitIndex) {
      const m = new Map();
      for (const f of type.fieldsArray) {
        f.resolve();
        m.set(f.name, f);
        m.set(camel(f.name), f);
        if (f.options && f.options.json_name) m.set(f.options.json_name, f);
      }
      type._straitIndex = m;
    }
    return type._straitIndex;
  }

  fieldValueFromJson(field, val, where) {
    const rt = field.resolvedType;
    if (rt instanceof protobuf.Type) return this.messageFromJson(rt, val, where);
    if (rt instanceof protobuf.Enum) {
      if (typeof val === 'string') {
        if (!(val in rt.values)) fail(where, `unknown value ${val} of enum ${rt.fullName.slice(1)}`);
        return val;
      }
      if (Number.isInteger(val)) return val;
      fail(where, `expected an enum name or number for ${rt.fullName.slice(1)}`);
    }
    return this.scalarFromJson(field, val, where);
  }

  scalarFromJson(field, val, where) {
    switch (field.type) {
      case 'string':
        if (typeof val !== 'string') fail(where, 'expected a string');
        return val;
      case 'bool':
        if (typeof val !== 'boolean') fail(where, 'expected true or false');
        return val;
      case 'bytes':
        if (typeof val !== 'string') fail(where, 'expected base64 text');
        return Buffer.from(val, 'base64');
      case 'double':
      case 'float':
        if (typeof val === 'number') return val;
        if (['NaN', 'Infinity', '-Infinity'].includes(val) || (typeof val === 'string' && val.trim() !== '' && !Number.isNaN(Number(val)))) return Number(val);
        fail(where, 'expected a number');
        break;
      default: { // integers
        const text = typeof val === 'number' ? String(val) : val;
        if (typeof text !== 'string' || !/^-?\d+$/.test(text)) fail(where, `expected an integer (${field.type})`);
        if (field.type.startsWith('u') || field.type.startsWith('fixed')) {
          if (text.startsWith('-')) fail(where, `expected an unsigned integer (${field.type})`);
        }
        if (/64$/.test(field.type)) return text;
        const n = Number(text);
        const limit = field.type.startsWith('u') || field.type === 'fixed32' ? 4294967295 : 2147483647;
        if (n > limit || n < (limit === 4294967295 ? 0 : -2147483648)) fail(where, `out of range for ${field.type}`);
        return n;
      }
    }
    return undefined;
  }

  structFromJson(json, where) {
    if (json === null || typeof json !== 'object' || Array.isArray(json)) fail(where, 'expected an object (Struct)');
    const fields = {};
    for (const [k, v] of Object.entries(json)) fields[k] = this.valueFromJson(v, `${where}.${k}`);
    return { fields };
  }

  valueFromJson(v, where) {
    // protobufjs's bundled struct.proto spells these fields in camelCase; take the names from it.
    if (!this.valueFields) {
      const t = this.lookupType('google.protobuf.Value');
      const n = (id) => t.fieldsById[id].name;
      this.valueFields = { null: n(1), number: n(2), string: n(3), bool: n(4), struct: n(5), list: n(6) };
    }
    const f = this.valueFields;
    if (v === null) return { [f.null]: 'NULL_VALUE' };
    if (typeof v === 'number') return { [f.number]: v };
    if (typeof v === 'string') return { [f.string]: v };
    if (typeof v === 'boolean') return { [f.bool]: v };
    if (Array.isArray(v)) return { [f.list]: { values: v.map((x, i) => this.valueFromJson(x, `${where}[${i}]`)) } };
    return { [f.struct]: this.structFromJson(v, where) };
  }

  // ---- bytes -> JSON (for logs and /resources) ----------------------------------------------------

  anyToJson(any) {
    try {
      const type = this.typeOfUrl(any.type_url);
      const msg = type.decode(any.value);
      return Object.assign({ '@type': any.type_url }, this.messageToJson(type, msg));
    } catch (e) {
      return { '@type': any.type_url, '@error': String(e.message || e) };
    }
  }

  messageToJson(type, msg) {
    const full = type.fullName.slice(1);
    const obj = type.toObject(msg, { longs: String, enums: String, bytes: String, defaults: false, arrays: false });
    if (full === 'google.protobuf.Any') return this.anyToJson(msg);
    if (full === 'google.protobuf.Struct') return structToJson(obj);
    if (full === 'google.protobuf.Duration') {
      const nanos = obj.nanos || 0;
      return `${obj.seconds || 0}${nanos ? '.' + String(Math.abs(nanos)).padStart(9, '0').replace(/0+$/, '') : ''}s`;
    }
    if (WRAPPERS.has(full)) return obj.value;
    const out = {};
    for (const f of type.fieldsArray) {
      if (!(f.name in obj)) continue;
      const rt = f.resolvedType;
      const raw = msg[f.name];
      if (rt instanceof protobuf.Type) {
        if (f.map) {
          out[f.name] = {};
          for (const [k, v] of Object.entries(raw)) out[f.name][k] = this.messageToJson(rt, v);
        } else if (f.repeated) {
          out[f.name] = raw.map((v) => this.messageToJson(rt, v));
        } else {
          out[f.name] = this.messageToJson(rt, raw);
        }
      } else {
        out[f.name] = obj[f.name];
      }
    }
    return out;
  }

  // A resource's name: its string field 1 (Listener/Cluster/RouteConfiguration/Secret name,
  // ClusterLoadAssignment cluster_name).
  nameOf(any) {
    const type = this.typeOfUrl(any.type_url);
    const msg = type.decode(any.value);
    const f = type.fieldsById[1];
    if (!f || f.type !== 'string') return '';
    return msg[f.name] || '';
  }
}

// A Struct as protobufjs/proto-loader decode it ({fields: {k: {string_value: ...}}}) -> plain JSON.
function structToJson(s) {
  const out = {};
  for (const [k, v] of Object.entries((s && s.fields) || {})) out[k] = valueToJson(v);
  return out;
}

function valueToJson(v) {
  if (!v) return null;
  const pick = (snake, camelName) => (snake in v ? v[snake] : v[camelName]);
  for (const [snake, camelName] of [['string_value', 'stringValue'], ['number_value', 'numberValue'], ['bool_value', 'boolValue']]) {
    if (snake in v || camelName in v) return pick(snake, camelName);
  }
  if ('struct_value' in v || 'structValue' in v) return structToJson(pick('struct_value', 'structValue'));
  if ('list_value' in v || 'listValue' in v) {
    const l = pick('list_value', 'listValue');
    return ((l && l.values) || []).map(valueToJson);
  }
  return null;
}

module.exports = { ProtoRegistry, JsonError, INCLUDE_DIRS, DEPS_DIR, structToJson, TYPE_PREFIX };
