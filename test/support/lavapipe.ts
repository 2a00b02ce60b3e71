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
import { cacheDir } from '../../src/paths.js';

/**
 * Pinned: the versions Dawn was seen to accept (../shared/reference/gpu.md). Backports replace a
 * version when a newer one arrives, so where a pin is no longer served the newest bookworm-backports
 * version is taken instead (Dawn needs Mesa ≥ 24; bookworm's own 22.3 is refused).
 */
const PINNED: Record<string, string> = {
  'mesa-vulkan-drivers': '25.0.7-2~bpo12+1',
  libdrm2: '2.4.123-1~bpo12+1',
  'libdrm-amdgpu1': '2.4.123-1~bpo12+1',
  'libdrm-common': '2.4.123-1~bpo12+1',
};
/**
 * The driver's shared-library dependencies (apt-cache depends --recurse, less libc/libstdc++/zlib),
 * unpacked too so a machine without them (no X, no LLVM) still loads the driver.
 */
const LIBRARIES = [
  'libvulkan1',
  'libllvm15',
  'libedit2',
  'libbsd0',
  'libmd0',
  'libffi8',
  'libtinfo6',
  'libxml2',
  'libicu72',
  'libz3-4',
  'libelf1',
  'libexpat1',
  'libzstd1',
  'liblzma5',
  'libwayland-client0',
  'libx11-6',
  'libx11-xcb1',
  'libxcb1',
  'libxau6',
  'libxdmcp6',
  'libxcb-dri3-0',
  'libxcb-present0',
  'libxcb-randr0',
  'libxcb-shm0',
  'libxcb-sync1',
  'libxcb-xfixes0',
  'libxshmfence1',
];
const SOURCES =
  'deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian bookworm-backports main\n';

/** `versions`: the Mesa and libdrm packages unpacked (name=version), as recorded when fetched. */
export type Lavapipe =
  | { ok: true; env: Record<string, string>; fetchedMs: number; versions: string[] }
  | { ok: false; reason: string };

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
  const base = join(cacheDir(), 'lavapipe', 'bookworm-backports');
  const root = join(base, 'root');
  const libDir = join(root, 'usr', 'lib', 'x86_64-linux-gnu');
  const icd = join(base, 'lvp_icd.json');
  const env = { LD_LIBRARY_PATH: libDir, VK_ICD_FILENAMES: icd };
  const done = join(base, 'done');
  if (existsSync(done)) return { ok: true, env, fetchedMs: 0, versions: readFileSync(done, 'utf8').trim().split('\n') };
  if (process.platform !== 'linux' || process.arch !== 'x64')
    return { ok: false, reason: `lavapipe packages are for linux x64, not ${process.platform} ${process.arch}` };
  for (const tool of ['apt-get', 'apt-cache', 'dpkg-deb'])
    if (!hasCommand(tool))
      return { ok: false, reason: `${tool} not found (lavapipe comes from Debian bookworm-backports)` };
  rmSync(base, { recursive: true, force: true });
  const apt = join(base, 'apt');
  const debs = join(base, 'debs');
  for (const dir of [join(apt, 'lists', 'partial'), join(apt, 'cache', 'archives', 'partial'), debs, root])
    mkdirSync(dir, { recursive: true });
  writeFileSync(join(apt, 'sources.list'), SOURCES);
  const aptOptions = [
    '-o',
    `Dir::Etc::SourceList=${join(apt, 'sources.list')}`,
    '-o',
    'Dir::Etc::SourceParts=/dev/null',
    '-o',
    `Dir::State::Lists=${join(apt, 'lists')}`,
    '-o',
    `Dir::Cache=${join(apt, 'cache')}`,
    '-o',
    'Debug::NoLocking=1',
    '-o',
    'APT::Sandbox::User=root',
    '-qq',
  ];
  let versions: string[];
  try {
    execFileSync('apt-get', [...aptOptions, 'update'], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 120_000 });
    versions = Object.entries(PINNED).map(([name, pinned]) => `${name}=${servedVersion(aptOptions, name, pinned)}`);
    execFileSync('apt-get', [...aptOptions, 'download', ...versions, ...LIBRARIES], {
      cwd: debs,
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 120_000,
    });
  } catch (error) {
    const stderr = String((error as { stderr?: Buffer }).stderr ?? '')
      .trim()
      .split('\n')
      .slice(-3)
      .join(' | ');
    return {
      ok: false,
      reason: `apt could not fetch lavapipe from bookworm-backports: ${stderr || (error as Error).message}`,
    };
  }
  for (const deb of readdirSync(debs)) execFileSync('dpkg-deb', ['-x', join(debs, deb), root]);
  const manifest = JSON.parse(readFileSync(join(root, 'usr', 'share', 'vulkan', 'icd.d', 'lvp_icd.json'), 'utf8')) as {
    ICD: { library_path: string };
  };
  manifest.ICD.library_path = join(libDir, 'libvulkan_lvp.so');
  writeFileSync(icd, JSON.stringify(manifest));
  rmSync(debs, { recursive: true, force: true });
  rmSync(apt, { recursive: true, force: true });
  writeFileSync(join(base, 'done'), `${versions.join('\n')}\n`);
  return { ok: true, env, fetchedMs: Math.round(performance.now() - started), versions };
}

/** The pinned version if the archive still serves it, else the newest bookworm-backports one. */
function servedVersion(aptOptions: readonly string[], name: string, pinned: string): string {
  const rows = execFileSync('apt-cache', [...aptOptions, 'madison', name], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  })
    .split('\n')
    .map((line) => line.split('|').map((cell) => cell.trim()))
    .filter((cells) => cells.length >= 3);
  if (rows.some((cells) => cells[1] === pinned)) return pinned;
  const backport = rows.find((cells) => cells[2]!.includes('bookworm-backports'));
  if (backport === undefined)
    throw new Error(`${name}: neither ${pinned} nor any bookworm-backports version is served`);
  return backport[1]!;
}
