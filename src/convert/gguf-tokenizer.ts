/**
 * Builds a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) from GGUF tokenizer metadata:
 * byte-level BPE ("gpt2" model) with the pre-tokenizers of the families we convert, and the
 * SentencePiece-style "llama" model (Gemma, Llama 2, Mistral) as BPE with byte fallback, its merges
 * derived from the pieces' scores.
 */
import { ModelFormatError } from '../errors.js';
import { type GgufFile, metaNumber, metaString } from './gguf-reader.js';

// GGUF token types (llama.cpp llama_token_type).
const TOKEN_TYPE_NORMAL = 1;
const TOKEN_TYPE_CONTROL = 3;
const TOKEN_TYPE_USER_DEFINED = 4;

/** End-of-turn tokens that chat templates emit and llama.cpp also stops on, when the GGUF names no eot id. */
const END_OF_TURN_TOKENS = ['<end_of_turn>', '<|eot_id|>', '<|im_end|>', '<|end|>'];

/** SentencePiece's visible space. */
const SPM_SPACE = '\u2581';

/**
 * The Gemma chat format, for Gemma GGUFs that carry no template (base checkpoints): turns are
 * `<start_of_turn>user|model … <end_of_turn>`, a system message is folded into the first user turn.
 */
export const GEMMA_CHAT_TEMPLATE =
  "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}" +
  "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}" +
  "{% for message in loop_messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}" +
  "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + (message['content'] | trim) + '<end_of_turn>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const byteLevel = (useRegex: boolean) => ({
  type: 'ByteLevel',
  add_prefix_space: false,
  trim_offsets: true,
  use_regex: useRegex,
});
const split = (pattern: string) => ({
  type: 'Split',
  pattern: { Regex: pattern },
  behavior: 'Isolated',
  invert: false,
});

/** tokenizer.ggml.pre → HF pre_tokenizer. */
const PRE_TOKENIZERS: Readonly<Record<string, unknown>> = {
  // SmolLM / StarCoder: every digit is its own pre-token, then GPT-2 byte-level splitting.
  smollm: { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, byteLevel(true)] },
  starcoder: { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, byteLevel(true)] },
  gpt2: byteLevel(true),
  default: byteLevel(true),
  'llama-bpe': { type: 'Sequence', pretokenizers: [split(LLAMA3_SPLIT), byteLevel(false)] },
  qwen2: { type: 'Sequence', pretokenizers: [split(QWEN2_SPLIT), byteLevel(false)] },
};

export interface BuiltTokenizer {
  readonly tokenizerJson: Record<string, unknown>;
  readonly tokenizerConfig: Record<string, unknown>;
  readonly bosTokenId: number | undefined;
  readonly eosTokenIds: readonly number[];
}

interface TokenizerModelParts {
  readonly model: Record<string, unknown>;
  readonly normalizer: unknown;
  readonly preTokenizer: unknown;
  readonly decoder: unknown;
  readonly tokenizerClass: string;
}

function byteLevelBpe(file: GgufFile, vocab: Record<string, number>): TokenizerModelParts {
  const pre = metaString(file, 'tokenizer.ggml.pre') ?? 'default';
  const preTokenizer = PRE_TOKENIZERS[pre];
  if (preTokenizer === undefined) {
    throw new ModelFormatError(
      file.path,
      `pre-tokenizer "${pre}" is not supported (supported: ${Object.keys(PRE_TOKENIZERS).join(', ')})`,
    );
  }
  const merges = file.metadata.get('tokenizer.ggml.merges');
  if (!Array.isArray(merges)) throw new ModelFormatError(file.path, 'tokenizer.ggml.merges is missing');
  return {
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
    normalizer: null,
    preTokenizer,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    tokenizerClass: 'GPT2Tokenizer',
  };
}

/**
 * SentencePiece BPE as llama.cpp runs it: spaces become ▁, then adjacent symbols are merged
 * highest-scoring merged piece first, and symbols left outside the vocabulary fall back to byte
 * tokens. As BPE merges: every split of a normal piece into two symbols (vocabulary pieces or single
 * characters), ranked by the piece's score — the conversion Hugging Face applies to SentencePiece models.
 */
function sentencePieceBpe(
  file: GgufFile,
  tokens: readonly string[],
  types: readonly unknown[] | undefined,
  vocab: Record<string, number>,
): TokenizerModelParts {
  const scores = file.metadata.get('tokenizer.ggml.scores');
  if (!Array.isArray(scores) || scores.length !== tokens.length)
    throw new ModelFormatError(file.path, 'tokenizer.ggml.scores is missing or its length differs from the vocabulary');
  const isNormal = (id: number): boolean => (types === undefined ? true : types[id] === TOKEN_TYPE_NORMAL);
  const normal = new Map<string, number>();
  tokens.forEach((t, id) => {
    if (isNormal(id)) normal.set(t, id);
  });
  const candidates: { left: string; right: string; score: number; id: number }[] = [];
  for (const [piece, id] of normal) {
    const chars = Array.from(piece);
    if (chars.length < 2) continue;
    const symbol = (s: string, length: number) => length === 1 || normal.has(s);
    let left = '';
    for (let i = 1; i < chars.length; i++) {
      left += chars[i - 1]!;
      const right = chars.slice(i).join('');
      if (symbol(left, i) && symbol(right, chars.length - i))
        candidates.push({ left, right, score: scores[id] as number, id });
    }
  }
  candidates.sort((a, b) => b.score - a.score || a.id - b.id || a.left.length - b.left.length);
  const addSpacePrefix = file.metadata.get('tokenizer.ggml.add_space_prefix') !== false;
  const replaceSpaces = { type: 'Replace', pattern: { String: ' ' }, content: SPM_SPACE };
  return {
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: tokens[metaNumber(file, 'tokenizer.ggml.unknown_token_id') ?? -1] ?? null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: candidates.map((c) => [c.left, c.right]),
    },
    normalizer: addSpacePrefix
      ? { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: SPM_SPACE }, replaceSpaces] }
      : replaceSpaces,
    preTokenizer: null,
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: SPM_SPACE }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        ...(addSpacePrefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
      ],
    },
    tokenizerClass: 'LlamaTokenizerFast',
  };
}

export function buildTokenizer(file: GgufFile): BuiltTokenizer {
  const model = metaString(file, 'tokenizer.ggml.model');
  if (model !== 'gpt2' && model !== 'llama') {
    throw new ModelFormatError(
      file.path,
      `tokenizer model "${model ?? 'missing'}" is not supported (supported: byte-level BPE "gpt2", SentencePiece "llama")`,
    );
  }
  const tokens = file.metadata.get('tokenizer.ggml.tokens');
  const types = file.metadata.get('tokenizer.ggml.token_type');
  if (!Array.isArray(tokens) || tokens.some((t) => typeof t !== 'string')) {
    throw new ModelFormatError(file.path, 'tokenizer.ggml.tokens is missing or not a string array');
  }
  const typeList = Array.isArray(types) ? types : undefined;

  const vocab: Record<string, number> = {};
  const addedTokens: Record<string, unknown>[] = [];
  tokens.forEach((t, id) => {
    vocab[t as string] = id;
    const type = typeList?.[id];
    if (type === TOKEN_TYPE_CONTROL || type === TOKEN_TYPE_USER_DEFINED) {
      addedTokens.push({
        id,
        content: t,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: type === TOKEN_TYPE_CONTROL,
      });
    }
  });
  const parts =
    model === 'gpt2' ? byteLevelBpe(file, vocab) : sentencePieceBpe(file, tokens as string[], typeList, vocab);

  const bosTokenId = metaNumber(file, 'tokenizer.ggml.bos_token_id');
  const eosTokenId = metaNumber(file, 'tokenizer.ggml.eos_token_id');
  const eotTokenId = metaNumber(file, 'tokenizer.ggml.eot_token_id') ?? endOfTurnToken(tokens as string[], typeList);
  const eosTokenIds = [...new Set([eosTokenId, eotTokenId].filter((x): x is number => x !== undefined))];
  const tokenName = (id: number | undefined) => (id === undefined ? undefined : (tokens[id] as string | undefined));
  const architecture = metaString(file, 'general.architecture');
  const chatTemplate =
    metaString(file, 'tokenizer.chat_template') ??
    (architecture?.startsWith('gemma') ? GEMMA_CHAT_TEMPLATE : undefined);
  const addBos = file.metadata.get('tokenizer.ggml.add_bos_token') === true;

  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: parts.normalizer,
    pre_tokenizer: parts.preTokenizer,
    post_processor:
      addBos && bosTokenId !== undefined
        ? {
            type: 'TemplateProcessing',
            single: [
              { SpecialToken: { id: tokenName(bosTokenId), type_id: 0 } },
              { Sequence: { id: 'A', type_id: 0 } },
            ],
            pair: [
              { SpecialToken: { id: tokenName(bosTokenId), type_id: 0 } },
              { Sequence: { id: 'A', type_id: 0 } },
              { Sequence: { id: 'B', type_id: 1 } },
            ],
            special_tokens: {
              [tokenName(bosTokenId)!]: {
                id: tokenName(bosTokenId),
                ids: [bosTokenId],
                tokens: [tokenName(bosTokenId)],
              },
            },
          }
        : null,
    decoder: parts.decoder,
    model: parts.model,
  };
  const tokenizerConfig: Record<string, unknown> = {
    tokenizer_class: parts.tokenizerClass,
    add_bos_token: addBos,
    clean_up_tokenization_spaces: false,
    bos_token: tokenName(bosTokenId) ?? null,
    eos_token: tokenName(eosTokenId) ?? null,
    pad_token: tokenName(metaNumber(file, 'tokenizer.ggml.padding_token_id')) ?? null,
    unk_token: tokenName(metaNumber(file, 'tokenizer.ggml.unknown_token_id')) ?? null,
    model_max_length: metaNumber(file, `${architecture}.context_length`) ?? null,
    ...(chatTemplate !== undefined ? { chat_template: chatTemplate } : {}),
  };
  return { tokenizerJson, tokenizerConfig, bosTokenId, eosTokenIds };
}

/** A control token that ends a chat turn (llama.cpp stops on these too), when the file names no eot id. */
function endOfTurnToken(tokens: readonly string[], types: readonly unknown[] | undefined): number | undefined {
  for (const name of END_OF_TURN_TOKENS) {
    const id = tokens.indexOf(name);
    if (id >= 0 && (types === undefined || types[id] === TOKEN_TYPE_CONTROL)) return id;
  }
  return undefined;
}
