#!/usr/bin/env python3
"""llama.cpp's speed on a model (the default one unless named), measured as `hearth bench local` measures Hearth's.

Prompt speed: a 128-token prefill; decode speed: 64 one-token steps after it; median of 3 runs; same
prompt text. Run it right after `hearth bench local` on the same machine, with the same thread count:
    /tmp/refenv/bin/python scripts/reference/llama_cpp_bench.py THREADS [MODELS_DIR [MODEL_FILE]]
(see llama_cpp_reference.py for installing llama-cpp-python).
"""
import json
import os
import statistics
import sys
import time

from llama_cpp import Llama

PROMPT_TOKENS = 128
DECODE_TOKENS = 64
RUNS = 3


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    models = sys.argv[2] if len(sys.argv) > 2 else os.path.expanduser("~/.cache/hearth/models")
    file = sys.argv[3] if len(sys.argv) > 3 else "smollm2-135m-instruct-q4_1.gguf"
    llm = Llama(model_path=os.path.join(models, file), n_ctx=512, n_batch=512,
                n_threads=threads, n_threads_batch=threads, verbose=False)
    text = "Volunteer computing pools spare machines into one system that anyone can join. " * 16
    prompt = llm.tokenize(text.encode(), add_bos=False, special=False)[:PROMPT_TOKENS]
    prefill, decode = [], []
    for _ in range(RUNS):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefill.append(PROMPT_TOKENS / (time.perf_counter() - start))
        start = time.perf_counter()
        for step in range(DECODE_TOKENS):
            llm.eval([prompt[step % len(prompt)]])
        decode.append(DECODE_TOKENS / (time.perf_counter() - start))
    print(json.dumps({"engine": "llama.cpp", "threads": threads,
                      "prompt_tokens_per_s": statistics.median(prefill),
                      "decode_tokens_per_s": statistics.median(decode)}))


if __name__ == "__main__":
    main()
