#!/usr/bin/env node
// validate.js FILE... (or - for stdin): checks every YAML/JSON document in the files against the
// Kubernetes OpenAPI schemas compiled into the npm package kubernetes-models (types, required fields,
// enums, formats of each apiVersion/kind; List items one by one). Prints one line per document,
// "ok FILE#N Kind/name" or "invalid FILE#N Kind/name: <schema errors>", and exits 1 when any document
// is invalid or of a kind it does not know, 2 on unreadable input. The schemas do not forbid unknown
// fields (Kubernetes' OpenAPI has no additionalProperties: false), so a misspelt field is not caught.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

async function modelFor(apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string" || !/^[A-Za-z0-9]+$/.test(kind) ||
      !/^([a-z0-9.-]+\/)?v[0-9a-z]+$/.test(apiVersion)) {
    throw new Error(`apiVersion ${JSON.stringify(apiVersion)} / kind ${JSON.stringify(kind)} is not a Kubernetes type`);
  }
  try {
    const mod = await import(`kubernetes-models/${apiVersion}/${kind}`);
    return mod[kind];
  } catch (e) {
    throw new Error(`unknown apiVersion/kind ${apiVersion} ${kind}`);
  }
}

async function check(doc, where) {
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    return [`${where}: not an object`];
  }
  const name = `${doc.kind}/${doc.metadata?.name ?? "?"}`;
  if (doc.kind === "List" && Array.isArray(doc.items)) {
    const out = [];
    for (const [i, item] of doc.items.entries()) out.push(...await check(item, `${where}.items[${i}]`));
    return out;
  }
  try {
    const Model = await modelFor(doc.apiVersion, doc.kind);
    new Model(doc).validate();
    console.log(`ok ${where} ${name}`);
    return [];
  } catch (e) {
    const detail = e.errors ? e.errors.map((x) => `${x.instancePath || "/"} ${x.message}`).join("; ") : e.message;
    return [`${where} ${name}: ${detail}`];
  }
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: validate.js FILE... (- for stdin)");
  process.exit(2);
}
let bad = [];
for (const f of files) {
  let text;
  try {
    text = readFileSync(f === "-" ? 0 : f, "utf8");
  } catch (e) {
    console.error(`validate.js: ${f}: ${e.message}`);
    process.exit(2);
  }
  const docs = parseAllDocuments(text);
  for (const [i, d] of docs.entries()) {
    if (d.errors.length) {
      bad.push(`${f}#${i + 1}: not valid YAML: ${d.errors[0].message}`);
      continue;
    }
    const value = d.toJS();
    if (value === null || value === undefined) continue;
    bad = bad.concat(await check(value, `${f}#${i + 1}`));
  }
}
for (const b of bad) console.log(`invalid ${b}`);
process.exit(bad.length ? 1 : 0);
