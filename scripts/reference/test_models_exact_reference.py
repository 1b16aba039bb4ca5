#!/usr/bin/env python3
"""An exact float64 forward of each test model (make_test_models.py: Llama 3, Qwen 2, Qwen 3 shapes
in Q4_K_M), the reference Hearth's layers for those families are judged by, as
gemma3_exact_reference.py is for Gemma 3.

Every weight is dequantized with the `gguf` package; from there everything is float64, with no
quantized activations and no f16 cache. The architectures as llama.cpp runs them: per layer RMS
norm, Q/K/V (Qwen 2 adds their biases; Qwen 3 RMS-norms each query and key head), RoPE (llama's
interleaved pairs, with Llama 3's frequency factors from `rope_freqs.weight`; NeoX halves for the
Qwens), causal attention scaled by 1/sqrt(head size), SiLU-gated feed-forward; the output tied to
the embeddings when the file has no `output.weight`.

Writes tests/data/test_<name>_exact_reference.json for each test model: for each prompt (token ids
from a fixed pseudo-random walk over the vocabulary, so no tokenizer is involved) and each checked
position, the exact argmax, the margin to the second, and the exact logits of the best 8 tokens.

    /tmp/refenv/bin/python scripts/reference/test_models_exact_reference.py [MODELS_DIR]
"""
import json
import os
import sys
from importlib.metadata import version

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from exact_common import prompt_record, sha256

NAMES = ["llama3", "qwen2", "qwen3"]


def walk(length, vocab, seed):
    """A fixed xorshift walk over ids below `vocab`."""
    state, out = seed, []
    for _ in range(length):
        state ^= (state << 13) & (2 ** 64 - 1)
        state ^= state >> 7
        state ^= (state << 17) & (2 ** 64 - 1)
        out.append(state % vocab)
    return out


def reference(path):
    reader = GGUFReader(path)
    fields = reader.fields
    arch = fields["general.architecture"].contents()
    meta = lambda k: fields[f"{arch}.{k}"].contents()
    tensors = {t.name: t for t in reader.tensors}

    def weight(name):
        t = tensors[name]
        return dequantize(t.data, t.tensor_type).astype(np.float64)

    hidden = meta("embedding_length")
    heads = meta("attention.head_count")
    kv_heads = meta("attention.head_count_kv")
    head_dim = fields[f"{arch}.attention.key_length"].contents() if f"{arch}.attention.key_length" in fields \
        else hidden // heads
    eps = meta("attention.layer_norm_rms_epsilon")
    base = meta("rope.freq_base")
    neox = arch in ("qwen2", "qwen3")
    factors = weight("rope_freqs.weight") if "rope_freqs.weight" in tensors else np.ones(head_dim // 2)
    emb = weight("token_embd.weight")
    head = weight("output.weight") if "output.weight" in tensors else emb
    out_norm = weight("output_norm.weight")
    blocks = []
    for i in range(meta("block_count")):
        b = {p: weight(f"blk.{i}.{p}.weight") for p in
             ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
              "ffn_down"]}
        for p in ["attn_q_norm", "attn_k_norm"]:
            if f"blk.{i}.{p}.weight" in tensors:
                b[p] = weight(f"blk.{i}.{p}.weight")
        for p in ["attn_q", "attn_k", "attn_v"]:
            if f"blk.{i}.{p}.bias" in tensors:
                b[p + ".bias"] = weight(f"blk.{i}.{p}.bias")
        blocks.append(b)

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def rope(x):
        # x: [seq, heads, head_dim].
        seq, half = x.shape[0], head_dim // 2
        freqs = base ** (-np.arange(half, dtype=np.float64) * 2 / head_dim) / factors
        angles = np.arange(seq, dtype=np.float64)[:, None] * freqs[None, :]
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        if neox:
            a, b = x[..., :half], x[..., half:]
            return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out

    def forward(seq_ids, positions):
        seq = len(seq_ids)
        x = emb[seq_ids]
        causal = np.tril(np.ones((seq, seq), dtype=bool))
        for b in blocks:
            h = rms(x, b["attn_norm"])
            proj = lambda p: h @ b[p].T + b.get(p + ".bias", 0.0)
            q = proj("attn_q").reshape(seq, heads, head_dim)
            k = proj("attn_k").reshape(seq, kv_heads, head_dim)
            v = proj("attn_v").reshape(seq, kv_heads, head_dim)
            if "attn_q_norm" in b:
                q, k = rms(q, b["attn_q_norm"]), rms(k, b["attn_k_norm"])
            q, k = rope(q) / np.sqrt(head_dim), rope(k)
            out = np.zeros((seq, heads, head_dim))
            for hq in range(heads):
                kh = hq // (heads // kv_heads)
                scores = np.where(causal, q[:, hq, :] @ k[:, kh, :].T, -np.inf)
                scores = np.exp(scores - scores.max(axis=1, keepdims=True))
                scores /= scores.sum(axis=1, keepdims=True)
                out[:, hq, :] = scores @ v[:, kh, :]
            x = x + out.reshape(seq, heads * head_dim) @ b["attn_output"].T
            h = rms(x, b["ffn_norm"])
            gate = h @ b["ffn_gate"].T
            x = x + ((gate / (1 + np.exp(-gate))) * (h @ b["ffn_up"].T)) @ b["ffn_down"].T
        return rms(x[positions], out_norm) @ head.T

    vocab = emb.shape[0]
    bos = fields["tokenizer.ggml.bos_token_id"].contents() \
        if fields.get("tokenizer.ggml.add_bos_token") and fields["tokenizer.ggml.add_bos_token"].contents() else None
    start = [bos] if bos is not None else []
    long = start + walk(300, vocab, 0x9E3779B97F4A7C15)
    prompts = [("short", start + walk(12, vocab, 7), None),
               ("medium", start + walk(40, vocab, 11), None),
               ("long", long, None)]
    out = {"model": os.path.basename(path), "sha256": sha256(path), "gguf": version("gguf"), "prompts": []}
    for name, seq_ids, checked in prompts:
        record = prompt_record(name, seq_ids, checked, forward)
        out["prompts"].append(record)
    return out



def main():
    models = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/hearth/models")
    for name in NAMES:
        out = reference(os.path.join(models, f"hearth-test-{name}-q4_k_m.gguf"))
        dest = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data",
                            f"test_{name}_exact_reference.json")
        with open(dest, "w") as f:
            json.dump(out, f, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {os.path.normpath(dest)}")


if __name__ == "__main__":
    main()
