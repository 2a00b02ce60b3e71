/**
 * Structured output: a request's response_format compiled against the model's vocabulary into a
 * grammar, and one matcher per sample that says which tokens may come next (a bitmask), takes the
 * tokens that came, and rolls back the ones a rejected draft added.
 *
 * One `GrammarCompiler` per tokenizer and thread (WASM state is per thread): the main thread
 * compiles to validate a request before it takes a slot; the engine compiles (cached) to decode.
 * Compiled grammars are cached by their text, failures too (a bad schema aborts the WASM call, which
 * leaks its memory: the same bad schema must not do it twice).
 */
import type { ResponseFormat } from '../contract.js';
import { RESPONSE_FORMAT_CHARS_MAX } from '../contract.js';
import { InvalidRequestError } from '../errors.js';
import type { GrammarVocab } from '../tokenizer/tokenizer.js';
import { withAbortReason, xgrammar } from './xgrammar.js';

type XG = ReturnType<typeof xgrammar>;
type XgCompiler = Awaited<ReturnType<XG['GrammarCompiler']['createGrammarCompiler']>>;
type XgCompiled = Awaited<ReturnType<XgCompiler['compileBuiltinJSONGrammar']>>;
type XgMatcher = Awaited<ReturnType<XG['GrammarMatcher']['createGrammarMatcher']>>;

/** Compiled grammars kept per compiler (least recently used dropped first). */
export const COMPILED_GRAMMARS_MAX = 64;
/**
 * A schema's JSON is laid out one way (indented by 2, ", " / ": " separators, as small instruct
 * models write it anyway): the structure between values is then forced text the drafts take for
 * free, and a model cannot loop on whitespace.
 */
const JSON_INDENT = 2;

/** The format's cache key, and a readable name of its kind for errors. */
function keyOf(format: ResponseFormat): string {
  switch (format.type) {
    case 'json_object':
      return 'json_object';
    case 'json_schema':
      return `json_schema:${format.strict === false ? 0 : 1}:${format.schema}`;
    case 'regex':
      return `regex:${format.pattern}`;
    case 'grammar':
      return `grammar:${format.ebnf}`;
  }
}

const FIELD: Record<ResponseFormat['type'], string> = {
  json_object: 'response_format.json_object',
  json_schema: 'response_format.json_schema.schema',
  regex: 'response_format.regex',
  grammar: 'response_format.grammar',
};

/** The checks that need no grammar engine: sizes, and the schema being JSON at all. */
export function checkResponseFormat(format: ResponseFormat): void {
  const text =
    format.type === 'json_schema'
      ? format.schema
      : format.type === 'regex'
        ? format.pattern
        : format.type === 'grammar'
          ? format.ebnf
          : undefined;
  if (text === undefined) return;
  if (text.length === 0) throw new InvalidRequestError(`${FIELD[format.type]} is empty`);
  if (text.length > RESPONSE_FORMAT_CHARS_MAX)
    throw new InvalidRequestError(
      `${FIELD[format.type]} has ${text.length} characters; at most ${RESPONSE_FORMAT_CHARS_MAX}`,
    );
  if (format.type === 'json_schema') {
    let schema: unknown;
    try {
      schema = JSON.parse(format.schema);
    } catch (error) {
      throw new InvalidRequestError(`${FIELD.json_schema} is not JSON: ${(error as Error).message}`);
    }
    if (typeof schema !== 'object' || schema === null || Array.isArray(schema))
      throw new InvalidRequestError(`${FIELD.json_schema} must be a JSON object (a JSON Schema)`);
  }
}

export class GrammarCompiler {
  private readonly compiled = new Map<string, Promise<CompiledGrammar>>();

  private constructor(
    private readonly xg: XG,
    private readonly compiler: XgCompiler,
    /** Tokens that end the output once the grammar is complete (the model's EOS). */
    private readonly stopTokenIds: readonly number[],
  ) {}

  /** `vocabSize`: the model's logits width (the mask's); `stopTokenIds`: the model's end-of-sequence tokens. */
  static async create(
    vocab: GrammarVocab,
    vocabSize: number,
    stopTokenIds: readonly number[],
  ): Promise<GrammarCompiler> {
    const xg = xgrammar();
    const tokens = [...vocab.tokens];
    while (tokens.length < vocabSize) tokens.push('');
    const info = await xg.TokenizerInfo.createTokenizerInfo(tokens, vocab.kind, vocab.prependSpace, vocabSize, [
      ...stopTokenIds,
    ]);
    const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
    return new GrammarCompiler(xg, compiler, stopTokenIds);
  }

  /** The format compiled (cached); InvalidRequestError naming the field and what is wrong. */
  compile(format: ResponseFormat): Promise<CompiledGrammar> {
    const key = keyOf(format);
    const cached = this.compiled.get(key);
    if (cached !== undefined) {
      this.compiled.delete(key);
      this.compiled.set(key, cached);
      return cached;
    }
    const compiling = this.compileNow(format);
    this.compiled.set(key, compiling);
    if (this.compiled.size > COMPILED_GRAMMARS_MAX) {
      const [oldest, dropped] = this.compiled.entries().next().value as [string, Promise<CompiledGrammar>];
      this.compiled.delete(oldest);
      dropped.then((g) => g.dispose()).catch(() => undefined);
    }
    return compiling;
  }

  private async compileNow(format: ResponseFormat): Promise<CompiledGrammar> {
    checkResponseFormat(format);
    const compiler = this.compiler;
    let compiled: XgCompiled;
    try {
      compiled = await withAbortReason(() => {
        switch (format.type) {
          case 'json_object':
            return compiler.compileBuiltinJSONGrammar();
          case 'json_schema':
            return compiler.compileJSONSchema(format.schema, false, JSON_INDENT, [',', ': '], format.strict !== false);
          case 'regex':
            return compiler.compileStructuralTag({
              type: 'structural_tag',
              format: { type: 'regex', pattern: format.pattern },
            });
          case 'grammar':
            return compiler.compileGrammar(format.ebnf);
        }
      });
    } catch (error) {
      throw new InvalidRequestError(`${FIELD[format.type]}: ${(error as Error).message}`, { cause: error });
    }
    return new CompiledGrammar(this.xg, compiled, this.stopTokenIds);
  }

  dispose(): void {
    for (const compiled of this.compiled.values()) compiled.then((g) => g.dispose()).catch(() => undefined);
    this.compiled.clear();
    this.compiler.dispose();
  }
}

const compilers = new WeakMap<object, Promise<GrammarCompiler>>();

/** The thread's compiler for a tokenizer (made on first use: ~0.1 s for a 49k vocabulary, ~0.3 s for 262k). */
export function grammarCompilerFor(
  tokenizer: { grammarVocab(): GrammarVocab },
  vocabSize: number,
  eosTokenIds: readonly number[],
): Promise<GrammarCompiler> {
  let compiler = compilers.get(tokenizer);
  if (compiler === undefined) {
    compiler = GrammarCompiler.create(tokenizer.grammarVocab(), vocabSize, eosTokenIds);
    compilers.set(tokenizer, compiler);
  }
  return compiler;
}

export class CompiledGrammar {
  constructor(
    private readonly xg: XG,
    private readonly compiled: XgCompiled,
    private readonly stopTokenIds: readonly number[],
  ) {}

  /** A matcher at the start of the output (one per sample). */
  async matcher(): Promise<GrammarMatcher> {
    return new GrammarMatcher(await this.xg.GrammarMatcher.createGrammarMatcher(this.compiled, [...this.stopTokenIds]));
  }

  dispose(): void {
    this.compiled.dispose();
  }
}

/** Where one sample's output stands in its grammar. */
export class GrammarMatcher {
  constructor(private readonly matcher: XgMatcher) {}

  /** Bit t of `mask[t >> 5]` is set iff token t may come next. */
  nextTokenMask(): Promise<Int32Array> {
    // (XGrammar aborts its WASM module when asked past the end.)
    if (this.matcher.isTerminated()) throw new Error('the grammar has ended: no token may follow its stop token');
    return this.matcher.getNextTokenBitmask();
  }

  /** Takes `token` if the grammar allows it (true); otherwise nothing changes (false). */
  accept(token: number): boolean {
    return this.matcher.acceptToken(token);
  }

  /** Forgets the last `tokens` accepted tokens. */
  rollback(tokens: number): void {
    if (tokens > 0) this.matcher.rollBack(tokens);
  }

  /** The text the grammar forces next, whatever the model would pick ('' when there is a choice). */
  forcedText(): string {
    return this.matcher.findJumpForwardString();
  }

  dispose(): void {
    this.matcher.dispose();
  }
}
