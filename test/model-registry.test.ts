/** What `--model` names and how the model is named to people (issue 21, item 6). */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import {
  classifyModelArgument,
  DEFAULT_MODEL,
  GEMMA3_270M,
  modelArgumentName,
  modelDisplayName,
} from '../src/registry/model-registry.js';

test('registry models are served under their id and displayed by the registry name, not the GGUF general.name', (t) => {
  const fallback = classifyModelArgument(undefined);
  t.is(modelArgumentName(fallback), 'smollm2-135m-instruct');
  t.is(modelDisplayName(fallback, 'Smollm2 135M 8k Lc100K Mix1 Ep2'), DEFAULT_MODEL.name);
  t.is(modelDisplayName(classifyModelArgument('Gemma3-270M'), 'Gemma 3 270m'), GEMMA3_270M.name);
});

test('a user file is served under its file name and displayed by what the file calls itself', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'anpd-registry-'));
  const gguf = join(dir, 'My-Model.Q8_0.gguf');
  writeFileSync(gguf, Buffer.from('GGUF'));
  const arg = classifyModelArgument(gguf);
  t.is(arg.kind, 'gguf');
  t.is(modelArgumentName(arg), 'My-Model.Q8_0');
  t.is(modelDisplayName(arg, 'My Model'), 'My Model');
});
