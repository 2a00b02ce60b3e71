/**
 * Builds a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) from GGUF tokenizer metadata.
 * Supports byte-level BPE ("gpt2" model) with the pre-tokenizers of the families we convert.
 */
import { ModelFormatError } from '../errors.js';
import { type GgufFile, metaNumber, metaString } from './gguf-reader.js';

// GGUF token types (llama.cpp llama_token_type).
const TOKEN_TYPE_CONTROL = 3;
const TOKEN_TYPE_USER_DEFINED = 4;

const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const byteLevel = (useRegex: boolean) => ({ type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: useRegex });
const split = (pattern: string) => ({ type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false });

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

export function buildTokenizer(file: GgufFile): BuiltTokenizer {
  const model = metaString(file, 'tokenizer.ggml.model');
  if (model !== 'gpt2') {
    throw new ModelFormatError(file.path, `tokenizer model "${model ?? 'missing'}" is not supported (supported: byte-level BPE "gpt2")`);
  }
  const pre = metaString(file, 'tokenizer.ggml.pre') ?? 'default';
  const preTokenizer = PRE_TOKENIZERS[pre];
  if (preTokenizer === undefined) {
    throw new ModelFormatError(file.path, `pre-tokenizer "${pre}" is not supported (supported: ${Object.keys(PRE_TOKENIZERS).join(', ')})`);
  }
  const tokens = file.metadata.get('tokenizer.ggml.tokens');
  const merges = file.metadata.get('tokenizer.ggml.merges');
  const types = file.metadata.get('tokenizer.ggml.token_type');
  if (!Array.isArray(tokens) || tokens.some((t) => typeof t !== 'string')) {
    throw new ModelFormatError(file.path, 'tokenizer.ggml.tokens is missing or not a string array');
  }
  if (!Array.isArray(merges)) throw new ModelFormatError(file.path, 'tokenizer.ggml.merges is missing');

  const vocab: Record<string, number> = {};
  const addedTokens: Record<string, unknown>[] = [];
  tokens.forEach((t, id) => {
    vocab[t as string] = id;
    const type = Array.isArray(types) ? types[id] : undefined;
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

  const bosTokenId = metaNumber(file, 'tokenizer.ggml.bos_token_id');
  const eosTokenId = metaNumber(file, 'tokenizer.ggml.eos_token_id');
  const eotTokenId = metaNumber(file, 'tokenizer.ggml.eot_token_id');
  const eosTokenIds = [...new Set([eosTokenId, eotTokenId].filter((x): x is number => x !== undefined))];
  const tokenName = (id: number | undefined) => (id === undefined ? undefined : (tokens[id] as string | undefined));
  const chatTemplate = metaString(file, 'tokenizer.chat_template');
  const addBos = file.metadata.get('tokenizer.ggml.add_bos_token') === true;

  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: addBos && bosTokenId !== undefined
      ? {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: tokenName(bosTokenId), type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [{ SpecialToken: { id: tokenName(bosTokenId), type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
          special_tokens: { [tokenName(bosTokenId)!]: { id: tokenName(bosTokenId), ids: [bosTokenId], tokens: [tokenName(bosTokenId)] } },
        }
      : null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
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
  };
  const tokenizerConfig: Record<string, unknown> = {
    tokenizer_class: 'GPT2Tokenizer',
    add_bos_token: addBos,
    clean_up_tokenization_spaces: false,
    bos_token: tokenName(bosTokenId) ?? null,
    eos_token: tokenName(eosTokenId) ?? null,
    pad_token: tokenName(metaNumber(file, 'tokenizer.ggml.padding_token_id')) ?? null,
    unk_token: tokenName(metaNumber(file, 'tokenizer.ggml.unknown_token_id')) ?? null,
    model_max_length: metaNumber(file, `${metaString(file, 'general.architecture')}.context_length`) ?? null,
    ...(chatTemplate !== undefined ? { chat_template: chatTemplate } : {}),
  };
  return { tokenizerJson, tokenizerConfig, bosTokenId, eosTokenIds };
}

