#!/usr/bin/env python3
"""Reference data from llama.cpp for Hearth's agreement tests.

Runs SmolLM2-135M-Instruct Q4_1 (or, with `gemma3` first, Gemma 3 270M Q4_K_M; the same GGUFs
Hearth fetches; or with `llama3`, `qwen2`, `qwen3`, `qwen2-f16` or `llama3-bf16`, the test model
make_test_models.py writes)
through llama.cpp, via the PyPI package llama-cpp-python, and writes
tests/data/llama_cpp_reference.json (llama_cpp_gemma3_reference.json, …) with:
  - tokenization of varied texts (code, digits, Unicode, whitespace runs, special tokens);
  - for each prompt: the prompt ids, 24 greedy ids (prompt evaluated as one batch, then one token at a
    time), and at every step the top-2 logits and their margin;
  - for a model with an exact float64 reference (gemma3_exact_reference.py,
    test_models_exact_reference.py), llama.cpp's own distance from it (`exact_distance`).

CI does not run this (building llama.cpp takes ~15 minutes on 2 cores); the tests read its output.
To regenerate:
    python3 -m venv /tmp/refenv
    CMAKE_ARGS="-DGGML_NATIVE=ON" /tmp/refenv/bin/pip install llama-cpp-python==0.3.36 numpy
(On the Intel Xeon, whose CPU reports AMX but whose VM does not enable it, a native build dies with
SIGILL on `tilezero` in ggml's AMX backend: build with -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON
-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON
-DGGML_AVX512_BF16=ON instead, with --no-cache-dir so pip does not reuse a wheel built elsewhere.)
    /tmp/refenv/bin/python scripts/reference/llama_cpp_reference.py [gemma3] [MODELS_DIR]
"""
import hashlib
import json
import os
import sys

import numpy as np
from llama_cpp import Llama, __version__ as llama_cpp_version

GREEDY_TOKENS = 24
PROMPTS = [
    ("code", "def fibonacci(n):\n    "),
    ("code", "import numpy as np\n\n# Compute the mean of a list\n"),
    ("prose", "The capital of France is"),
    ("prose", "Once upon a time, in a small village by the sea,"),
    ("numbers", "1, 2, 3, 5, 8, 13,"),
    ("numbers", "Water boils at 100 degrees Celsius, which is"),
]
TOKENIZE_COMMON = [
    ("The", False),
    ("fn main() {\n    println!(\"{}\", 1 + 2);\n}\n", False),
    ("Numbers: 3.14159, 1,000,000 and 42nd; 2024-11-25.", False),
    ("Unicode: naïve café, 日本語, emoji 🦀🔥, Ελληνικά", False),
    ("   leading, trailing and   runs   of spaces \t\ttabs\n\n\nnewlines   ", False),
]
# Each model: its file, its control tokens' text, whether prompts start with BOS, the output file,
# its exact reference (or None).
MODELS = {
    "smollm2": ("smollm2-135m-instruct-q4_1.gguf", "<|im_start|>user\nhi<|im_end|>", False,
                "llama_cpp_reference.json", None),
    "gemma3": ("gemma-3-270m-q4_k_m.gguf", "<start_of_turn>user\nhi<end_of_turn>", True,
               "llama_cpp_gemma3_reference.json", "gemma3_exact_reference.json"),
    "llama3": ("hearth-test-llama3-q4_k_m.gguf", "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
               True, "llama_cpp_test_llama3_reference.json", "test_llama3_exact_reference.json"),
    "qwen2": ("hearth-test-qwen2-q4_k_m.gguf", "<|im_start|>user\nhi<|im_end|>", False,
              "llama_cpp_test_qwen2_reference.json", "test_qwen2_exact_reference.json"),
    "qwen3": ("hearth-test-qwen3-q4_k_m.gguf", "<|im_start|>user\nhi<|im_end|>", False,
              "llama_cpp_test_qwen3_reference.json", "test_qwen3_exact_reference.json"),
    "qwen2-f16": ("hearth-test-qwen2-f16.gguf", "<|im_start|>user\nhi<|im_end|>", False,
                  "llama_cpp_test_qwen2_f16_reference.json", None),
    "llama3-bf16": ("hearth-test-llama3-bf16.gguf",
                    "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", True,
                    "llama_cpp_test_llama3_bf16_reference.json", None),
}


def main():
    args = sys.argv[1:]
    which = "smollm2"
    if args and args[0] in MODELS:
        which = args.pop(0)
    file, chat, add_bos, output, exact = MODELS[which]
    models = args[0] if args else os.path.expanduser("~/.cache/hearth/models")
    path = os.path.join(models, file)
    with open(path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    llm = Llama(model_path=path, n_ctx=512, n_batch=512, n_threads=2, logits_all=True, verbose=False)

    tokenize = [
        {"text": text, "special": special, "ids": llm.tokenize(text.encode(), add_bos=False, special=special)}
        for text, special in TOKENIZE_COMMON + [(chat, True), (chat, False)]
    ]

    prompts = []
    for kind, prompt in PROMPTS:
        llm.reset()
        prompt_ids = llm.tokenize(prompt.encode(), add_bos=add_bos, special=False)
        llm.eval(prompt_ids)
        steps = []
        for _ in range(GREEDY_TOKENS):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            order = np.argsort(-logits, kind="stable")
            top1, top2 = int(order[0]), int(order[1])
            steps.append({
                "id": top1,
                "logit": float(logits[top1]),
                "second_id": top2,
                "second_logit": float(logits[top2]),
                "margin": float(logits[top1] - logits[top2]),
            })
            llm.eval([top1])
        prompts.append({"kind": kind, "prompt": prompt, "prompt_ids": prompt_ids, "greedy": steps})

    out = {
        "generator": f"llama-cpp-python {llama_cpp_version}, scripts/reference/llama_cpp_reference.py",
        "model_sha256": sha256,
        "n_threads": 2,
        "tokenize": tokenize,
        "ends": ends_of(llm),
        "prompts": prompts,
    }
    if exact:
        out["exact_distance"] = exact_distance(path, exact)
    dest = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", output)
    with open(dest, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {os.path.normpath(dest)}")


def ends_of(llm):
    """The tokens llama.cpp ends a generation at (its end-of-generation set)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return [i for i in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, i)]


def exact_distance(path, exact):
    """How far llama.cpp's logits are from the exact float64 forward's (tests/data/`exact`, by
    gemma3_exact_reference.py or test_models_exact_reference.py), over the same tokens at the same
    positions: the bar Hearth's own distance is held to."""
    data = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", exact)
    with open(data) as f:
        reference = json.load(f)
    llm = Llama(model_path=path, n_ctx=1024, n_batch=1024, n_threads=2, logits_all=True, verbose=False)
    errors, worst = [], (0.0, "")
    for prompt in reference["prompts"]:
        llm.reset()
        llm.eval(prompt["ids"])
        for step in prompt["steps"]:
            row = np.array(llm.scores[step["position"]], dtype=np.float64)
            for token, exact in step["top"]:
                error = abs(row[token] - exact)
                errors.append(error)
                if error > worst[0]:
                    worst = (error, f"{prompt['name']} position {step['position']} token {token}")
    return {"mean": float(np.mean(errors)), "worst": worst[0], "worst_at": worst[1]}


if __name__ == "__main__":
    main()
