/**
 * HTTP soak driver for the OpenAI-compatible API (issue 32), with the official `openai` client:
 * concurrent workers send streamed chat completions read to the end, streams they drop after a few
 * chunks, non-streamed chat and legacy completions, requests they give up on before the answer,
 * and bad requests — for a fixed time — while checking that every answer is whole (each choice ends
 * once, usage comes once), that bad requests get 400 with an OpenAI error object, and that nothing
 * fails that the client did not cause (429 above capacity is expected). Used by test/soak.test.ts.
 */
import OpenAI from 'openai';
import { rng, SOAK_PROMPTS, sleep } from './soak-random.js';

export interface HttpSoakOptions {
  /** The API's base, e.g. http://127.0.0.1:8080/v1 */
  readonly baseUrl: string;
  readonly model: string;
  readonly durationMs: number;
  /** Concurrent client loops. */
  readonly workers: number;
  readonly seed: number;
  /** Each request asks for a random max_tokens in [8, this]. */
  readonly maxTokensMax: number;
}

export interface HttpSoakResult {
  readonly durationMs: number;
  readonly requests: {
    streamed: number;
    streamDropped: number;
    unary: number;
    unaryAbandoned: number;
    bad: number;
  };
  readonly outcomes: {
    /** Answers read whole. */
    completed: number;
    /** Dropped or abandoned by the client before the end. */
    abandoned: number;
    /** 429: shed by admission control, expected above capacity. */
    shed: number;
    /** 400 for the bad requests, as documented. */
    refused: number;
  };
  readonly outputTokens: number;
  /** Problems: unexpected statuses, malformed answers. Must be empty. */
  readonly unexpected: readonly string[];
}

export async function runHttpSoak(options: HttpSoakOptions): Promise<HttpSoakResult> {
  const random = rng(options.seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  const between = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
  const requests = { streamed: 0, streamDropped: 0, unary: 0, unaryAbandoned: 0, bad: 0 };
  const outcomes = { completed: 0, abandoned: 0, shed: 0, refused: 0 };
  let outputTokens = 0;
  const unexpected: string[] = [];
  const note = (problem: string) => {
    if (unexpected.length < 50) unexpected.push(problem);
  };
  const chat = () => ({
    model: options.model,
    messages: [{ role: 'user' as const, content: pick(SOAK_PROMPTS) }],
    max_tokens: between(8, options.maxTokensMax),
    n: random() < 0.2 ? 2 : 1,
    ...(random() < 0.5 ? { temperature: 0.8, seed: between(1, 1000) } : { temperature: 0 }),
  });
  /** An error the client did not cause is noted; a 429 is shed load. */
  const failed = (what: string, error: unknown) => {
    if (error instanceof OpenAI.APIUserAbortError) outcomes.abandoned++;
    else if (error instanceof OpenAI.APIError && error.status === 429) outcomes.shed++;
    else note(`${what}: ${error instanceof OpenAI.APIError ? `${error.status} ` : ''}${String(error)}`);
  };
  const started = performance.now();
  const deadline = started + options.durationMs;

  async function streamed(openai: OpenAI, drop: boolean): Promise<void> {
    const body = chat();
    if (drop) requests.streamDropped++;
    else requests.streamed++;
    const dropAfter = drop ? between(1, 6) : Number.POSITIVE_INFINITY;
    try {
      const stream = await openai.chat.completions.create({
        ...body,
        stream: true,
        stream_options: { include_usage: true },
      });
      const ends = new Array<number>(body.n).fill(0);
      let usages = 0;
      let chunks = 0;
      for await (const chunk of stream) {
        if (chunk.usage) {
          usages++;
          outputTokens += chunk.usage.completion_tokens;
        }
        for (const choice of chunk.choices) if (choice.finish_reason !== null) ends[choice.index]!++;
        if (++chunks >= dropAfter) break; // leaving the loop closes the connection
      }
      if (chunks >= dropAfter) {
        outcomes.abandoned++;
        return;
      }
      if (ends.some((n) => n !== 1)) note(`stream ended its choices ${JSON.stringify(ends)} times (want 1 each)`);
      if (usages !== 1) note(`stream carried usage ${usages} times (want 1)`);
      outcomes.completed++;
    } catch (error) {
      failed('streamed chat', error);
    }
  }

  async function unary(openai: OpenAI, abandon: boolean): Promise<void> {
    const body = chat();
    const signal = abandon ? AbortSignal.timeout(between(20, 1500)) : undefined;
    if (abandon) requests.unaryAbandoned++;
    else requests.unary++;
    try {
      const legacy = random() < 0.3;
      const response = legacy
        ? await openai.completions.create(
            { model: body.model, prompt: body.messages[0]!.content, max_tokens: body.max_tokens, n: body.n },
            { signal },
          )
        : await openai.chat.completions.create(body, { signal });
      const choices = response.choices as readonly { finish_reason: string | null }[];
      if (choices.length !== body.n) note(`answer with ${choices.length} choices (want ${body.n})`);
      if (choices.some((c) => c.finish_reason === null)) note('answer with a choice that did not finish');
      if (response.usage === undefined) note('answer without usage');
      else outputTokens += response.usage.completion_tokens;
      outcomes.completed++;
    } catch (error) {
      // An abandoned call's abort surfaces as a user abort or, past the fetch, as a timeout.
      if (abandon && (error instanceof OpenAI.APIConnectionTimeoutError || (error as Error).name === 'TimeoutError'))
        outcomes.abandoned++;
      else failed('unary', error);
    }
  }

  async function bad(openai: OpenAI): Promise<void> {
    requests.bad++;
    try {
      await openai.chat.completions.create({ ...chat(), top_p: 1.5 });
      note('top_p 1.5 was accepted');
    } catch (error) {
      if (error instanceof OpenAI.APIError && error.status === 400 && /top_p/.test(error.message)) outcomes.refused++;
      else failed('bad request', error);
    }
  }

  async function worker(): Promise<void> {
    const openai = new OpenAI({ baseURL: options.baseUrl, apiKey: 'soak', maxRetries: 0 });
    while (performance.now() < deadline) {
      const dice = random();
      if (dice < 0.4) await streamed(openai, false);
      else if (dice < 0.6) await streamed(openai, true);
      else if (dice < 0.8) await unary(openai, false);
      else if (dice < 0.92) await unary(openai, true);
      else await bad(openai);
      // Shed requests come back in a millisecond: back off a little as a real client would.
      await sleep(between(0, 100));
    }
  }

  await Promise.all(Array.from({ length: options.workers }, () => worker()));
  return { durationMs: Math.round(performance.now() - started), requests, outcomes, outputTokens, unexpected };
}
