/**
 * Mesa's lavapipe (a Vulkan driver that runs on the CPU) for exercising the WebGPU execution
 * provider where there is no GPU. Dawn rejects bookworm's Mesa 22.3, so the driver comes from
 * bookworm-backports (25.x). The packages are downloaded with apt into a private state directory
 * and unpacked with dpkg-deb: nothing is installed on the machine and no root is needed.
 * The Vulkan loader reads LD_LIBRARY_PATH and VK_ICD_FILENAMES at process start, so the result is
 * an environment for a child process.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cacheDir } from '../../src/model/default-model.js';

/** Pinned: the versions Dawn was seen to accept (../shared/reference/gpu.md). */
const PINNED = ['mesa-vulkan-drivers=25.0.7-2~bpo12+1', 'libdrm2=2.4.123-1~bpo12+1', 'libdrm-amdgpu1=2.4.123-1~bpo12+1', 'libdrm-common=2.4.123-1~bpo12+1'];
/**
 * The driver's shared-library dependencies (apt-cache depends --recurse, less libc/libstdc++/zlib),
 * unpacked too so a machine without them (no X, no LLVM) still loads the driver.
 */
const LIBRARIES = [
  'libvulkan1', 'libllvm15', 'libedit2', 'libbsd0', 'libmd0', 'libffi8', 'libtinfo6', 'libxml2', 'libicu72', 'libz3-4',
  'libelf1', 'libexpat1', 'libzstd1', 'liblzma5', 'libwayland-client0', 'libx11-6', 'libx11-xcb1', 'libxcb1', 'libxau6',
  'libxdmcp6', 'libxcb-dri3-0', 'libxcb-present0', 'libxcb-randr0', 'libxcb-shm0', 'libxcb-sync1', 'libxcb-xfixes0', 'libxshmfence1',
];
const SOURCES = 'deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian bookworm-backports main\n';

export type Lavapipe = { ok: true; env: Record<string, string>; fetchedMs: number } | { ok: false; reason: string };

function hasCommand(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Downloads and unpacks lavapipe once into .cache/lavapipe; `ok: false` says why it cannot. */
export function ensureLavapipe(): Lavapipe {
  const started = performance.now();
  const base = join(cacheDir(), 'lavapipe', '25.0.7');
  const root = join(base, 'root');
  const libDir = join(root, 'usr', 'lib', 'x86_64-linux-gnu');
  const icd = join(base, 'lvp_icd.json');
  const env = { LD_LIBRARY_PATH: libDir, VK_ICD_FILENAMES: icd };
  if (existsSync(join(base, 'done'))) return { ok: true, env, fetchedMs: 0 };
  if (process.platform !== 'linux' || process.arch !== 'x64') return { ok: false, reason: `lavapipe packages are for linux x64, not ${process.platform} ${process.arch}` };
  for (const tool of ['apt-get', 'dpkg-deb']) if (!hasCommand(tool)) return { ok: false, reason: `${tool} not found (lavapipe comes from Debian bookworm-backports)` };
  rmSync(base, { recursive: true, force: true });
  const apt = join(base, 'apt');
  const debs = join(base, 'debs');
  for (const dir of [join(apt, 'lists', 'partial'), join(apt, 'cache', 'archives', 'partial'), debs, root]) mkdirSync(dir, { recursive: true });
  writeFileSync(join(apt, 'sources.list'), SOURCES);
  const aptOptions = [
    '-o', `Dir::Etc::SourceList=${join(apt, 'sources.list')}`, '-o', 'Dir::Etc::SourceParts=/dev/null',
    '-o', `Dir::State::Lists=${join(apt, 'lists')}`, '-o', `Dir::Cache=${join(apt, 'cache')}`,
    '-o', 'Debug::NoLocking=1', '-o', 'APT::Sandbox::User=root', '-qq',
  ];
  try {
    execFileSync('apt-get', [...aptOptions, 'update'], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 120_000 });
    execFileSync('apt-get', [...aptOptions, 'download', ...PINNED, ...LIBRARIES], { cwd: debs, stdio: ['ignore', 'ignore', 'pipe'], timeout: 120_000 });
  } catch (error) {
    const stderr = String((error as { stderr?: Buffer }).stderr ?? '').trim().split('\n').slice(-3).join(' | ');
    return { ok: false, reason: `apt could not fetch lavapipe from bookworm-backports: ${stderr || (error as Error).message}` };
  }
  for (const deb of readdirSync(debs)) execFileSync('dpkg-deb', ['-x', join(debs, deb), root]);
  const manifest = JSON.parse(readFileSync(join(root, 'usr', 'share', 'vulkan', 'icd.d', 'lvp_icd.json'), 'utf8')) as { ICD: { library_path: string } };
  manifest.ICD.library_path = join(libDir, 'libvulkan_lvp.so');
  writeFileSync(icd, JSON.stringify(manifest));
  rmSync(debs, { recursive: true, force: true });
  rmSync(apt, { recursive: true, force: true });
  writeFileSync(join(base, 'done'), '');
  return { ok: true, env, fetchedMs: Math.round(performance.now() - started) };
}
