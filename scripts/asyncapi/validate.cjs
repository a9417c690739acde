#!/usr/bin/env node
// Validate an AsyncAPI document with the AsyncAPI project's own parser (@asyncapi/parser),
// installed by `scripts/bootstrap node` into .node/ (package.json and package-lock.json here).
//
//   node scripts/asyncapi/validate.cjs docs/asyncapi.yaml
//
// Prints every diagnostic (severity, code, path, message) as a JSON line; exits 1 if any is an
// error or the document could not be parsed, 0 otherwise (warnings and hints do not fail).
"use strict";
const fs = require("fs");
const path = require("path");
const { createRequire } = require("module");

const root = path.resolve(__dirname, "..", "..");
const nodeDir = process.env.VMWORKER_NODE_DIR || path.join(root, ".node");
const load = createRequire(path.join(nodeDir, "package.json"));
const { Parser, DiagnosticSeverity } = load("@asyncapi/parser");

const SEVERITY = { 0: "error", 1: "warning", 2: "information", 3: "hint" };

async function main() {
  const file = process.argv[2];
  if (!file) {
    console.error("usage: validate.cjs FILE");
    return 2;
  }
  const text = fs.readFileSync(file, "utf8");
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(text, { source: path.resolve(file) });
  let errors = 0;
  for (const d of diagnostics) {
    if (d.severity === DiagnosticSeverity.Error) errors += 1;
    console.log(
      JSON.stringify({
        severity: SEVERITY[d.severity] || String(d.severity),
        code: d.code,
        path: d.path.join("."),
        message: d.message,
        line: d.range ? d.range.start.line + 1 : null,
      }),
    );
  }
  if (!document) {
    console.error(`${file}: not a valid AsyncAPI document (${errors} errors)`);
    return 1;
  }
  const summary = {
    asyncapi: document.version(),
    channels: document.channels().length,
    operations: document.operations().length,
    messages: document.components().messages().length,
    errors,
    warnings: diagnostics.filter((d) => d.severity === DiagnosticSeverity.Warning).length,
  };
  console.error(JSON.stringify(summary));
  return errors ? 1 : 0;
}

main().then(
  (rc) => process.exit(rc),
  (err) => {
    console.error(err && err.stack ? err.stack : String(err));
    process.exit(1);
  },
);
