"""One peer engine as a long-lived process: JSON lines in on stdin, JSON lines out on stdout.

Started by bench/peers.ts so that model loading stays out of the timings. Each request is
greedy decoding of given prompt token ids; the reply carries the generated ids, the time to the
first generated token, the total time, the tokens delivered with the first token, and how many
model calls (forward passes) produced them.

  python peer_server.py --engine llama-cpp-python --mode plain|lookup --gguf PATH --threads 2
  python peer_server.py --engine transformers --mode greedy|prompt-lookup --gguf PATH --threads 2

Request:  {"promptIds": [...], "maxNewTokens": 128, "eosIds": [2]}
Reply:    {"tokens": [...], "ttftMs": ..., "totalMs": ..., "firstChunkTokens": 1, "modelCalls": ...}
Startup:  {"ready": true, "versions": {...}} once the model is loaded and warmed up.
"""

import argparse
import json
import os
import sys
import time


def log(msg):
    sys.stderr.write(f"[peer] {msg}\n")
    sys.stderr.flush()


class LlamaCppPython:
    """llama-cpp-python: plain greedy, or its LlamaPromptLookupDecoding draft model."""

    def __init__(self, gguf, mode, threads, args):
        import llama_cpp
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        draft = None
        if mode == "lookup":
            draft = LlamaPromptLookupDecoding(max_ngram_size=args.max_ngram_size, num_pred_tokens=args.num_pred_tokens)
            self.settings = {"draft": "LlamaPromptLookupDecoding", "max_ngram_size": args.max_ngram_size, "num_pred_tokens": args.num_pred_tokens}
        else:
            self.settings = {}
        self.llm = Llama(
            model_path=gguf,
            n_ctx=args.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            draft_model=draft,
            # With a draft model the binding forces logits for every position, but sizes its score
            # buffer from this argument (n_batch rows when False), which overflows once the
            # sequence passes n_batch (512) tokens: "could not broadcast ... (540672,) into
            # (491520,)". Passing it explicitly sizes the buffer by n_ctx (llama-cpp-python 0.3.36).
            logits_all=draft is not None,
            verbose=False,
        )
        self.calls = 0
        eval_inner = self.llm.eval

        def counting_eval(tokens):
            self.calls += 1
            return eval_inner(tokens)

        self.llm.eval = counting_eval
        self.versions = {"llama_cpp_python": llama_cpp.__version__, "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode()}

    def generate(self, prompt_ids, max_new_tokens, eos_ids):
        self.calls = 0
        out = []
        t0 = time.perf_counter()
        ttft = None
        for token in self.llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if ttft is None:
                ttft = time.perf_counter() - t0
            if token in eos_ids:
                break
            out.append(int(token))
            if len(out) >= max_new_tokens:
                break
        total = time.perf_counter() - t0
        # llama-cpp-python yields token by token, even when a round verified several.
        return {"tokens": out, "ttftMs": ttft * 1000, "totalMs": total * 1000, "firstChunkTokens": 1, "modelCalls": self.calls}


class Transformers:
    """Hugging Face transformers on the same GGUF (dequantized to f32): greedy, or prompt lookup."""

    def __init__(self, gguf, mode, threads, args):
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        self.torch = torch
        directory, name = os.path.split(os.path.abspath(gguf))
        self.model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        self.model.eval()
        self.mode = mode
        self.prompt_lookup = args.num_pred_tokens if mode == "prompt-lookup" else None
        self.settings = {"prompt_lookup_num_tokens": self.prompt_lookup, "max_matching_ngram_size": "default (2)"} if self.prompt_lookup else {}
        self.calls = 0

        def count(_module, _inputs):
            self.calls += 1

        self.model.register_forward_pre_hook(count)
        self.versions = {"transformers": transformers.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
        try:
            import gguf as gguf_pkg  # noqa: F401
            from importlib.metadata import version

            self.versions["gguf"] = version("gguf")
        except Exception:  # pragma: no cover - diagnostics only
            pass

    def generate(self, prompt_ids, max_new_tokens, eos_ids):
        torch = self.torch
        from transformers.generation.streamers import BaseStreamer

        marks = []

        class Stamp(BaseStreamer):
            def __init__(self):
                self.prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:
                    self.prompt_seen = True  # the first put is the prompt
                    return
                marks.append((time.perf_counter(), int(value.numel())))

            def end(self):
                pass

        self.calls = 0
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        kwargs = dict(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=list(eos_ids),
            pad_token_id=eos_ids[0],
            attention_mask=torch.ones_like(ids),
            streamer=Stamp(),
        )
        if self.prompt_lookup:
            kwargs["prompt_lookup_num_tokens"] = self.prompt_lookup
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(ids, **kwargs)
        total = time.perf_counter() - t0
        tokens = [int(t) for t in out[0, len(prompt_ids):].tolist()]
        while tokens and tokens[-1] in eos_ids:
            tokens.pop()
        ttft = (marks[0][0] - t0) if marks else total
        return {
            "tokens": tokens,
            "ttftMs": ttft * 1000,
            "totalMs": total * 1000,
            "firstChunkTokens": marks[0][1] if marks else len(tokens),
            "modelCalls": self.calls,
        }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--engine", required=True, choices=["llama-cpp-python", "transformers"])
    p.add_argument("--mode", required=True)
    p.add_argument("--gguf", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=2048)
    # Defaults of the peers' own APIs: LlamaPromptLookupDecoding(max_ngram_size=2, num_pred_tokens=10);
    # transformers documents prompt_lookup_num_tokens=10 in its examples.
    p.add_argument("--max-ngram-size", type=int, default=2)
    p.add_argument("--num-pred-tokens", type=int, default=10)
    args = p.parse_args()

    engine = (LlamaCppPython if args.engine == "llama-cpp-python" else Transformers)(args.gguf, args.mode, args.threads, args)
    # Warm-up: lazy allocations and first-call costs stay out of the measured runs.
    engine.generate([1, 2, 3, 4, 5, 6, 7, 8], 8, [-1])
    out = sys.stdout
    out.write(json.dumps({"ready": True, "versions": engine.versions, "settings": engine.settings}) + "\n")
    out.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        try:
            res = engine.generate(req["promptIds"], req["maxNewTokens"], set(req["eosIds"]) if args.engine != "transformers" else list(req["eosIds"]))
        except Exception as e:  # reported to the bench, which records it
            res = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(res) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
