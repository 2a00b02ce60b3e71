/**
 * The one importer of @mlc-ai/web-xgrammar: XGrammar (Apache-2.0) compiled to WebAssembly, the
 * grammar engine behind structured output. Its package says `"type": "module"` but ships a
 * CommonJS bundle as lib/index.js, so neither `import` nor `require` can load it in Node; it is
 * compiled here as the CommonJS module it is (once per thread: WASM state is per thread).
 */
import { readFileSync } from 'node:fs';
import Module, { createRequire } from 'node:module';
import { dirname } from 'node:path';
import type * as XGrammar from '@mlc-ai/web-xgrammar';

export type XGrammarModule = typeof XGrammar;

interface CommonJsModule {
  filename: string;
  paths: string[];
  exports: unknown;
  _compile(source: string, filename: string): void;
}

interface CommonJsModuleClass {
  new (id: string): CommonJsModule;
  _nodeModulePaths(dir: string): string[];
}

let loaded: XGrammarModule | undefined;

export function xgrammar(): XGrammarModule {
  if (loaded !== undefined) return loaded;
  const file = createRequire(import.meta.url).resolve('@mlc-ai/web-xgrammar');
  const ModuleClass = Module as unknown as CommonJsModuleClass;
  const bundle = new ModuleClass(file);
  bundle.filename = file;
  bundle.paths = ModuleClass._nodeModulePaths(dirname(file));
  bundle._compile(readFileSync(file, 'utf8'), file);
  loaded = bundle.exports as XGrammarModule;
  return loaded;
}

/**
 * Runs an XGrammar call that may abort the WASM module on bad input: it then prints the reason
 * ("[FATAL] file.cc:line: reason") on stderr (through a console.error it bound when it loaded) and
 * throws "Aborted()". Returns the reason, without the source location, in the error; other output
 * passes through. (The call is synchronous inside its promise: nothing else writes meanwhile.)
 */
export async function withAbortReason<T>(call: () => Promise<T>): Promise<T> {
  const stderr = process.stderr;
  const write = stderr.write;
  let reason: string | undefined;
  stderr.write = function (this: NodeJS.WriteStream, chunk: unknown, ...rest: unknown[]): boolean {
    const line = String(chunk).trimEnd();
    if (line.startsWith('[FATAL]')) {
      reason ??= line.replace(/^\[FATAL\]\s*\S+:\d+:\s*/, '');
      return true;
    }
    if (line === 'Aborted()') return true;
    return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
  } as typeof stderr.write;
  try {
    return await call();
  } catch (error) {
    throw new Error(reason ?? (error instanceof Error ? error.message : String(error)), { cause: error });
  } finally {
    stderr.write = write;
  }
}
