import test from 'ava';
import type { GenerationBackend, GenerationEvent, GenerationFinal, GenerateRequest } from '../src/contract.js';
import { CancelledError } from '../src/errors.js';
import {
  InferenceService,
  type ServiceEvent,
  ServiceCancelledError,
  type ServiceFinal,
} from '../src/engine/inference-service.js';
import type { ModelInfo } from '../src/runtime/types.js';
import type { TextTokenizer } from '../src/tokenizer/tokenizer.js';

const REQUEST: GenerateRequest = { prompt: { kind: 'tokens', tokenIds: [1, 2] }, maxNewTokens: 4 };

const ENGINE_FINAL: GenerationFinal = {
  type: 'final',
  finishReason: 'length',
  promptTokens: 2,
  completionTokens: 4,
  firstTokenMs: 3,
  prefillMs: 2,
  totalMs: 10,
  stats: {
    rounds: 4,
    draftRounds: 0,
    zeroAcceptRounds: 0,
    draftTokensProposed: 0,
    draftTokensAccepted: 0,
    draftedAtPosition: [],
    acceptedAtPosition: [],
    forwardMs: 8,
    draftMs: 0,
    poolDraftTokens: 0,
    poolAcceptedTokens: 0,
  },
};

/** A backend without a model: each run waits for `gate`, then yields one delta and ENGINE_FINAL (or `final`), or ends cancelled when its signal aborts. */
function fakeBackend(gate: Promise<void>, final: GenerationFinal = ENGINE_FINAL): GenerationBackend {
  return {
    info: { name: 'fake' } as ModelInfo,
    tokenizer: {} as TextTokenizer,
    tokenizePrompt: () => [1, 2],
    prepare: (request) => ({ request, promptTokens: [1, 2] }),
    async *run(_prepared, signal): AsyncGenerator<GenerationEvent> {
      yield { type: 'delta', text: 'a', tokenIds: [7] };
      if (signal?.aborted !== true)
        await Promise.race([
          gate,
          new Promise((resolve) => signal?.addEventListener('abort', resolve, { once: true })),
        ]);
      if (signal?.aborted) throw new CancelledError(signal.reason, { promptTokens: 2, completionTokens: 1 });
      yield final;
    },
    dispose: async () => {},
  };
}

function service(engine: GenerationBackend): InferenceService {
  return new InferenceService({
    engine,
    modelName: 'fake',
    pool: { maxActive: 1, maxQueued: 4 },
    limits: { maxNewTokensDefault: 4, maxNewTokensLimit: 16 },
  });
}

async function finalOf(events: AsyncGenerator<ServiceEvent>): Promise<ServiceFinal> {
  let final: ServiceFinal | undefined;
  for await (const event of events) if (event.type === 'final') final = event;
  return final!;
}

function gated(): { gate: Promise<void>; open: () => void } {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { gate, open };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

test("the final counts every time from receipt: the slot wait, then the engine's first-token and total times", async (t) => {
  const { gate, open } = gated();
  const s = service(fakeBackend(gate));
  const first = s.generate('', REQUEST);
  await first.next(); // holds the only slot
  const waiting = finalOf(s.generate('', REQUEST));
  await sleep(40);
  open();
  await finalOf(first);
  const final = await waiting;
  t.true(final.queueMs >= 30, `queued ${final.queueMs} ms`);
  t.is(final.firstTokenMs, final.queueMs + ENGINE_FINAL.firstTokenMs);
  t.is(final.totalMs, final.queueMs + ENGINE_FINAL.totalMs);
  t.is(final.prefillMs, ENGINE_FINAL.prefillMs);
});

test('a final without tokens has first-token time 0', async (t) => {
  const s = service(fakeBackend(Promise.resolve(), { ...ENGINE_FINAL, completionTokens: 0, firstTokenMs: 0 }));
  const final = await finalOf(s.generate('', REQUEST));
  t.is(final.firstTokenMs, 0);
  t.is(final.totalMs, final.queueMs + ENGINE_FINAL.totalMs);
});

test('a generation cancelled in the queue ends with ServiceCancelledError whose queue time is all of its time', async (t) => {
  const { gate, open } = gated();
  const s = service(fakeBackend(gate));
  const first = s.generate('', REQUEST);
  await first.next();
  const controller = new AbortController();
  const waiting = finalOf(s.generate('', REQUEST, controller.signal));
  await sleep(30);
  controller.abort(new Error('client went away'));
  const error = await t.throwsAsync(waiting, { instanceOf: ServiceCancelledError });
  t.true(error instanceof CancelledError);
  t.is(error.message, 'client went away');
  t.true(error.queueMs >= 20, `queued ${error.queueMs} ms`);
  t.is(error.queueMs, error.totalMs);
  open();
  await finalOf(first);
});

test('a generation cancelled while running keeps its queue time, usage and message', async (t) => {
  const s = service(fakeBackend(new Promise(() => {})));
  const controller = new AbortController();
  const events = s.generate('', REQUEST, controller.signal);
  await events.next();
  await sleep(20);
  controller.abort(new Error('cancelled by a cancel message'));
  const error = await t.throwsAsync(finalOf(events), { instanceOf: ServiceCancelledError });
  t.is(error.message, 'cancelled by a cancel message');
  t.deepEqual(error.progress, { promptTokens: 2, completionTokens: 1 });
  t.true(error.queueMs < error.totalMs);
  t.true(error.totalMs - error.queueMs >= 15, `ran ${error.totalMs - error.queueMs} ms`);
});
