#!/usr/bin/env python3
"""An exact float64 forward of Gemma 3 270M Q4_K_M, the reference Hearth's gemma3 layers are judged by.

Every weight is dequantized with the `gguf` package (the same values llama.cpp and Hearth start
from); from there everything is float64 with no quantized activations and no f16 cache, so the
only error left is the weights' own. The architecture as llama.cpp runs `gemma3`: embeddings
scaled by sqrt(width); per layer RMS norm, Q/K/V, RMS norm of each query and key head, NEOX RoPE
(base 10,000 on the sliding-window layers, the file's base on every sixth, global, layer), queries
scaled by 1/sqrt(head size), attention within a window of 512 positions on the sliding layers,
a norm after attention and after the feed-forward, GELU (tanh) gate; the output tied to the
embeddings. The norm weights in the file already hold Gemma's `1 + w`.

Writes tests/data/gemma3_exact_reference.json: for each prompt (token ids picked
from the vocabulary by their text, so no tokenizer is involved) and each checked position, the
exact argmax, the margin to the second, and the exact logits of the best 8 tokens.

CI does not run this (about a minute and 3 GB of memory); the tests read its output. To regenerate:
    python3 -m venv /tmp/gv && /tmp/gv/bin/pip install gguf==0.19.0 numpy
    /tmp/gv/bin/python scripts/reference/gemma3_exact_reference.py [MODELS_DIR]
"""
import json
import os
import sys
from importlib.metadata import version

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from exact_common import prompt_record, sha256

MODEL = "gemma-3-270m-q4_k_m.gguf"
# Words looked up as single vocabulary entries ("▁" is SentencePiece's space).
PROSE = ["▁The", "▁capital", "▁of", "▁France", "▁is", "▁Paris", ".", "▁The", "▁capital", "▁of"]
CODE = ["def", "▁add", "(", "a", ",", "▁b", "):", "\n", "▁return", "▁a", "▁+", "▁b"]
# Past the sliding window of 512: a fixed pseudo-random walk over common words.
WORDS = ["▁the", "▁river", "▁mountain", "▁over", "▁under", "▁quickly", "▁bright", "▁dark", "▁house",
         "▁garden", "▁cat", "▁dog", "▁runs", "▁sleeps", "▁and", "▁with"]


def main():
    models = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/hearth/models")
    path = os.path.join(models, MODEL)
    reader = GGUFReader(path)
    fields = reader.fields
    meta = lambda k: fields[k].contents()
    tokens = fields["tokenizer.ggml.tokens"]
    vocab = {bytes(tokens.parts[i]).decode("utf-8"): n for n, i in enumerate(tokens.data)}
    ids = lambda words: [2] + [vocab[w] for w in words]

    tensors = {t.name: t for t in reader.tensors}

    def weight(name):
        t = tensors[name]
        return dequantize(t.data, t.tensor_type).astype(np.float64)

    hidden = meta("gemma3.embedding_length")
    layers = meta("gemma3.block_count")
    heads = meta("gemma3.attention.head_count")
    kv_heads = meta("gemma3.attention.head_count_kv")
    head_dim = meta("gemma3.attention.key_length")
    eps = meta("gemma3.attention.layer_norm_rms_epsilon")
    base = meta("gemma3.rope.freq_base")
    window = meta("gemma3.attention.sliding_window")

    emb = weight("token_embd.weight")
    blocks = []
    for i in range(layers):
        w = lambda part: weight(f"blk.{i}.{part}.weight")
        blocks.append({p: w(p) for p in ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_q_norm",
                                          "attn_k_norm", "attn_output", "post_attention_norm",
                                          "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm"]})
    out_norm = weight("output_norm.weight")

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def rope(x, theta_base):
        # x: [seq, heads, head_dim]; NEOX: dimension i turns with i + head_dim/2.
        seq = x.shape[0]
        half = head_dim // 2
        freqs = theta_base ** (-np.arange(half, dtype=np.float64) * 2 / head_dim)
        angles = np.arange(seq, dtype=np.float64)[:, None] * freqs[None, :]
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    def forward(seq_ids, positions):
        seq = len(seq_ids)
        x = emb[seq_ids] * np.sqrt(hidden)
        pos = np.arange(seq)
        causal = pos[None, :] <= pos[:, None]
        local = causal & (pos[:, None] - pos[None, :] < window)
        for i, b in enumerate(blocks):
            sliding = i % 6 < 5
            h = rms(x, b["attn_norm"])
            q = (h @ b["attn_q"].T).reshape(seq, heads, head_dim)
            k = (h @ b["attn_k"].T).reshape(seq, kv_heads, head_dim)
            v = (h @ b["attn_v"].T).reshape(seq, kv_heads, head_dim)
            q = rope(rms(q, b["attn_q_norm"]), 10_000.0 if sliding else base) / np.sqrt(head_dim)
            k = rope(rms(k, b["attn_k_norm"]), 10_000.0 if sliding else base)
            mask = local if sliding else causal
            out = np.zeros((seq, heads, head_dim))
            for hq in range(heads):
                kh = hq // (heads // kv_heads)
                scores = q[:, hq, :] @ k[:, kh, :].T
                scores = np.where(mask, scores, -np.inf)
                scores = np.exp(scores - scores.max(axis=1, keepdims=True))
                scores /= scores.sum(axis=1, keepdims=True)
                out[:, hq, :] = scores @ v[:, kh, :]
            attn = out.reshape(seq, heads * head_dim) @ b["attn_output"].T
            x = x + rms(attn, b["post_attention_norm"])
            h = rms(x, b["ffn_norm"])
            ffn = (gelu(h @ b["ffn_gate"].T) * (h @ b["ffn_up"].T)) @ b["ffn_down"].T
            x = x + rms(ffn, b["post_ffw_norm"])
        x = rms(x[positions], out_norm)
        return x @ emb.T

    rng_state = 0x9E3779B97F4A7C15
    walk = []
    for _ in range(600):
        rng_state ^= (rng_state << 13) & (2 ** 64 - 1)
        rng_state ^= rng_state >> 7
        rng_state ^= (rng_state << 17) & (2 ** 64 - 1)
        walk.append(WORDS[rng_state % 16])
    prompts = [("prose", ids(PROSE), None), ("code", ids(CODE), None),
               ("long", ids(walk), list(range(len(walk) - 7, len(walk) + 1)))]
    out = {"model": MODEL, "sha256": sha256(path), "gguf": version("gguf"), "prompts": []}
    for name, seq_ids, checked in prompts:
        record = prompt_record(name, seq_ids, checked, forward)
        out["prompts"].append(record)
        print(name, len(seq_ids), "tokens; argmax at the last:", record["steps"][-1]["argmax"], file=sys.stderr)
    dest = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data",
                        "gemma3_exact_reference.json")
    with open(dest, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")



if __name__ == "__main__":
    main()
