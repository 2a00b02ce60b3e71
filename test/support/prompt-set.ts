/** The exactness prompt set: the four bench categories plus the extra cases, read from their JSON files. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../src/paths.js';

export interface PromptCase {
  readonly id: string;
  readonly prompt: string;
}

export const CATEGORIES = ['summarization', 'code-editing', 'document-qa', 'open-chat'] as const;

const load = (path: string): PromptCase[] =>
  JSON.parse(readFileSync(join(projectRoot(), path), 'utf8')) as PromptCase[];

export function exactnessPrompts(): PromptCase[] {
  return [...CATEGORIES.flatMap((c) => load(`bench/prompts/${c}.json`)), ...load('test/fixtures/exactness-extra.json')];
}

/** 'code-editing-03' → 'code-editing'. */
export function categoryOf(id: string): string {
  return id.replace(/-\d+$/, '');
}
