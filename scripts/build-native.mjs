#!/usr/bin/env node
/**
 * Builds native/*.c into dist/native/anpd_ort_run.node. Needs only a C compiler: Node's N-API
 * headers come from the node-api-headers package, ORT's C API header is vendored
 * (native/third_party/onnxruntime, checked against its SHA-256 below). Links against the
 * libonnxruntime.so.1 that onnxruntime-node ships, so the addon and the binding share one ONNX Runtime.
 * Without the addon the runtime falls back to onnxruntime-node's run: 2.9–8× slower CPU decode,
 * ORT's attention kernel and no CUDA device path (`anpd serve` warns at startup).
 * ANPD_NATIVE=off skips the build; ANPD_NATIVE=required makes a failed build an error (and
 * `anpd serve` refuses to start without the addon).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** ORT C API 24 (ORT 1.24): onnxruntime-node 1.30's library serves it (GetApi takes older versions). */
const ORT_HEADERS_SHA256 = {
  'onnxruntime_c_api.h': '9ed0d7054a4e74249467365b25b415d36f51a44a6349e2a994a1812e4723d1e2',
  'onnxruntime_ep_c_api.h': 'e94ac3490697bdb107844fa9d403952ee7136134132a057eae5c1207b57ce352',
};

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
  process.stderr.write(
    `native addon not built (${reason}); onnxruntime-node's run is used instead: 2.9–8× slower CPU decode, ORT's attention kernel (its own greedy outputs), no CUDA device path\n`,
  );
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
const ortInclude = join(root, 'native', 'third_party', 'onnxruntime');
for (const [file, pinned] of Object.entries(ORT_HEADERS_SHA256)) {
  const header = join(ortInclude, file);
  if (!existsSync(header)) fail(`no ${header}`);
  const sum = createHash('sha256').update(readFileSync(header)).digest('hex');
  if (sum !== pinned)
    fail(`${header} has SHA-256 ${sum}, not the pinned ${pinned} (native/third_party/onnxruntime/README.md)`);
}
const compiler = process.env.CC ?? 'cc';
try {
  execFileSync(
    compiler,
    [
      '-O3',
      '-ffp-contract=off',
      '-shared',
      '-fPIC',
      '-std=gnu11',
      '-Wall',
      `-I${napiInclude}`,
      `-I${ortInclude}`,
      ...['ort-run.c', 'device.c', 'gqa-attention.c', 'paged-attention.c', 'common.c'].map((file) =>
        join(root, 'native', file),
      ),
      '-o',
      out,
      `-L${ortLibDir}`,
      '-l:libonnxruntime.so.1',
      `-Wl,-rpath,${ortLibDir}`,
      '-lpthread',
      '-ldl',
    ],
    { stdio: ['ignore', 'inherit', 'pipe'] },
  );
} catch (error) {
  fail(
    `${compiler} failed: ${String(error.stderr ?? error.message)
      .trim()
      .split('\n')
      .slice(0, 5)
      .join(' | ')}`,
  );
}
process.stderr.write(`native addon built: ${out}\n`);
