#!/usr/bin/env node
/**
 * Builds native/ort-run.c and native/gqa-attention.c into dist/native/anpd_ort_run.node (optional: without it the runtime
 * uses onnxruntime-node's own run). Needs a C compiler, Node's N-API headers (the node-api-headers
 * package) and ORT's C API header, which comes from the Go module proxy (the module
 * github.com/yalue/onnxruntime_go vendors it; pinned below). Links against the libonnxruntime.so.1
 * that onnxruntime-node ships, so the addon and the binding share one ONNX Runtime.
 * ANPD_NATIVE=off skips the build; ANPD_NATIVE=required makes a failed build an error.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** ORT C API 24 (ORT 1.24): onnxruntime-node 1.30's library serves it (GetApi takes older versions). */
const ORT_HEADER_MODULE = 'github.com/yalue/onnxruntime_go@v1.27.0';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist', 'native', 'anpd_ort_run.node');
const mode = process.env.ANPD_NATIVE ?? 'auto';
// The folder exists either way (the Dockerfile copies it).
mkdirSync(dirname(out), { recursive: true });

function fail(reason) {
  rmSync(out, { force: true });
  if (mode === 'required') {
    process.stderr.write(`native addon: ${reason}\n`);
    process.exit(1);
  }
  process.stderr.write(`native addon not built (${reason}); onnxruntime-node's run is used instead\n`);
  process.exit(0);
}

if (mode === 'off') fail('ANPD_NATIVE=off');
if (process.platform !== 'linux') fail(`only built on linux, not ${process.platform}`);
const require = createRequire(import.meta.url);
let napiInclude;
try {
  napiInclude = require('node-api-headers').include_dir;
} catch {
  fail('the node-api-headers package is not installed');
}
const ortLibDir = join(root, 'node_modules', 'onnxruntime-node', 'bin', 'napi-v6', process.platform, process.arch);
if (!existsSync(join(ortLibDir, 'libonnxruntime.so.1'))) fail(`no libonnxruntime.so.1 in ${ortLibDir}`);
let ortInclude;
try {
  const info = JSON.parse(execFileSync('go', ['mod', 'download', '-json', ORT_HEADER_MODULE], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, GOFLAGS: '-mod=mod' } }));
  ortInclude = info.Dir;
} catch (error) {
  fail(`cannot fetch ORT's C API header from the Go module proxy (${ORT_HEADER_MODULE}): ${error.message.split('\n')[0]}`);
}
if (!existsSync(join(ortInclude, 'onnxruntime_c_api.h'))) fail(`no onnxruntime_c_api.h in ${ortInclude}`);
const compiler = process.env.CC ?? 'cc';
try {
  execFileSync(compiler, [
    '-O3', '-ffp-contract=off', '-shared', '-fPIC', '-std=gnu11', '-Wall',
    `-I${napiInclude}`, `-I${ortInclude}`,
    join(root, 'native', 'ort-run.c'), join(root, 'native', 'device.c'), join(root, 'native', 'gqa-attention.c'), '-o', out,
    `-L${ortLibDir}`, '-l:libonnxruntime.so.1', `-Wl,-rpath,${ortLibDir}`, '-lpthread', '-ldl',
  ], { stdio: ['ignore', 'inherit', 'pipe'] });
} catch (error) {
  fail(`${compiler} failed: ${String(error.stderr ?? error.message).trim().split('\n').slice(0, 5).join(' | ')}`);
}
process.stderr.write(`native addon built: ${out}\n`);
