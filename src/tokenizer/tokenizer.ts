/**
 * Text ⇄ token ids for a model directory: `tokenizer.json` through @huggingface/tokenizers,
 * chat templates through @huggingface/jinja.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { InvalidRequestError, ModelFormatError, ModelNotFoundError } from '../errors.js';

export interface ChatMessage {
  readonly role: string;
  readonly content: string;
}

export interface TextTokenizer {
  readonly vocabSize: number;
  readonly hasChatTemplate: boolean;
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string;
  /** Renders messages with the model's chat template (generation prompt appended). */
  applyChatTemplate(messages: readonly ChatMessage[]): string;
  /** Ids of tokens marked special (control tokens), e.g. for skip-on-decode. */
  readonly specialTokenIds: ReadonlySet<number>;
  tokenToId(token: string): number | undefined;
  /** The vocabulary as a grammar engine reads it (built on first use). */
  grammarVocab(): GrammarVocab;
}

/**
 * Each id's token as stored in tokenizer.json (byte-level "Ġthe", byte-fallback "<0x0A>" / "▁the"),
 * special tokens as '' (never text inside a constrained string), and how to read them back to bytes.
 */
export interface GrammarVocab {
  readonly tokens: readonly string[];
  readonly kind: 'byte_level' | 'byte_fallback' | 'raw';
  /** A SentencePiece-style normalizer puts "▁" before the text. */
  readonly prependSpace: boolean;
}

/** How tokenizer.json's decoder turns tokens back into bytes. */
function vocabKind(json: Record<string, unknown>): GrammarVocab['kind'] {
  const decoder = json['decoder'] as { type?: string; decoders?: { type?: string }[] } | null | undefined;
  const types = [decoder?.type, ...(decoder?.decoders ?? []).map((d) => d.type)];
  if (types.includes('ByteLevel')) return 'byte_level';
  if (types.includes('ByteFallback')) return 'byte_fallback';
  return 'raw';
}

function prependsSpace(json: Record<string, unknown>): boolean {
  const normalizer = json['normalizer'] as { type?: string; prepend?: string; normalizers?: unknown[] } | null;
  const all = [normalizer, ...((normalizer?.normalizers as { type?: string; prepend?: string }[] | undefined) ?? [])];
  return all.some((n) => n?.type === 'Prepend' && n.prepend === '\u2581');
}

function readJson(path: string): Record<string, unknown> {
  if (!existsSync(path)) throw new ModelNotFoundError(path, 'file not found');
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (cause) {
    throw new ModelFormatError(path, `not valid JSON (${(cause as Error).message})`, { cause });
  }
}

export function loadTokenizer(dir: string): TextTokenizer {
  const tokenizerPath = join(dir, 'tokenizer.json');
  const configPath = join(dir, 'tokenizer_config.json');
  const json = readJson(tokenizerPath);
  const config = existsSync(configPath) ? readJson(configPath) : {};
  let hf: HfTokenizer;
  try {
    hf = new HfTokenizer(json, config);
  } catch (cause) {
    throw new ModelFormatError(tokenizerPath, `cannot build a tokenizer from it (${(cause as Error).message})`, {
      cause,
    });
  }
  let templateSource = config['chat_template'];
  if (Array.isArray(templateSource)) {
    // transformers' list form: [{ name, template }]; take the default one.
    const entry =
      (templateSource as { name?: string; template?: string }[]).find((t) => t.name === 'default') ?? templateSource[0];
    templateSource = (entry as { template?: string } | undefined)?.template;
  }
  const jinjaPath = join(dir, 'chat_template.jinja');
  if (typeof templateSource !== 'string' && existsSync(jinjaPath)) templateSource = readFileSync(jinjaPath, 'utf8');
  let template: Template | undefined;
  if (typeof templateSource === 'string') {
    try {
      template = new Template(templateSource);
    } catch (cause) {
      throw new ModelFormatError(configPath, `chat_template does not parse (${(cause as Error).message})`, { cause });
    }
  }
  const tokenString = (key: string): string | undefined => {
    const v = config[key];
    if (typeof v === 'string') return v;
    if (v !== null && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string')
      return (v as { content: string }).content;
    return undefined;
  };
  const model = json['model'] as { vocab?: Record<string, number> | unknown[] } | undefined;
  const added = (json['added_tokens'] as { id: number; special?: boolean }[] | undefined) ?? [];
  const baseVocab =
    model?.vocab === undefined ? 0 : Array.isArray(model.vocab) ? model.vocab.length : Object.keys(model.vocab).length;
  const vocabSize = Math.max(baseVocab, ...added.map((a) => a.id + 1));
  const specialTokenIds = new Set(added.filter((a) => a.special === true).map((a) => a.id));
  let grammarVocab: GrammarVocab | undefined;

  return {
    vocabSize,
    hasChatTemplate: template !== undefined,
    specialTokenIds,
    encode: (text, options) => hf.encode(text, { add_special_tokens: options?.addSpecialTokens ?? true }).ids,
    decode: (ids, options) =>
      ids.length === 0
        ? ''
        : hf.decode(ids as number[], {
            skip_special_tokens: options?.skipSpecialTokens ?? false,
            clean_up_tokenization_spaces: false,
          }),
    tokenToId: (token) => hf.token_to_id(token),
    grammarVocab: () =>
      (grammarVocab ??= {
        tokens: Array.from({ length: vocabSize }, (_, id) =>
          specialTokenIds.has(id) ? '' : (hf.id_to_token(id) ?? ''),
        ),
        kind: vocabKind(json),
        prependSpace: prependsSpace(json),
      }),
    applyChatTemplate: (messages) => {
      if (template === undefined)
        throw new InvalidRequestError('this model has no chat template: send a plain prompt instead of chat messages');
      return template.render({
        messages,
        add_generation_prompt: true,
        bos_token: tokenString('bos_token') ?? '',
        eos_token: tokenString('eos_token') ?? '',
      });
    },
  };
}
