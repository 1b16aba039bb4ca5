#!/usr/bin/env python3
"""Test models of the families with no small real model to fetch: Llama 3 (RoPE frequency scaling),
Qwen 2 (Q/K/V biases) and Qwen 3 (Q/K norms), each with the family's exact tensor layout, random
weights and a synthetic byte-level BPE vocabulary under the family's `tokenizer.ggml.pre`, written
as F32 GGUF by the `gguf` package and quantized to Q4_K_M by llama.cpp's own quantizer. Random weights
make nonsense text but exact logits to compare; Hearth and llama.cpp then run the same file.

Everything is seeded, and llama.cpp's quantizer is deterministic, so the files come out the same
bytes on every run: their sha256 is pinned in SHA256 below and checked after writing (the committed
references were made from these bytes). A file already there with the pinned hash is kept.

    python3 -m venv /tmp/tm && /tmp/tm/bin/pip install gguf==0.19.0 numpy llama-cpp-python==0.3.36
    /tmp/tm/bin/python scripts/reference/make_test_models.py [OUT_DIR]
    python3 scripts/reference/make_test_models.py --check [OUT_DIR]   (exit 0 if all are there)

(OUT_DIR defaults to the models folder, ~/.cache/hearth/models; see llama_cpp_reference.py for
building llama-cpp-python for a CPU without AVX-512.)
"""
import math
import os
import sys
from collections import Counter

from exact_common import sha256

# The shapes: 4 layers of width 512 (the K-quant block is 256), 8 query heads of 64, 2 KV heads.
LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 4, 512, 8, 2, 64, 1536
CONTEXT = 4096
MERGES = 700

# The files made: (family, type), each file `hearth-test-FAMILY-TYPE.gguf`: every family in
# Q4_K_M, and two in the float types (matrices stored as F16 and as BF16).
OUTPUTS = [("llama3", "q4_k_m"), ("qwen2", "q4_k_m"), ("qwen3", "q4_k_m"), ("qwen2", "f16"),
           ("llama3", "bf16")]

# What llama-cpp-python 0.3.36's quantizer writes for each.
SHA256 = {
    "llama3-q4_k_m": "8464774c7d42a734ab8fbe0d885a42e4e32827b28e859f27724d450125deab30",
    "qwen2-q4_k_m": "96676697bdad806cc3ffd79b51c33e5136f846e9c9e1c912a3a45a49b6887da1",
    "qwen3-q4_k_m": "cf48cff1b03a4282153e70316b5ddbaaff6680c39090d27613efedbde8ac35a7",
    "qwen2-f16": "e62bb16e29113a7c34a3e059acc3d7985dfac1e6084381b7a2da430be49f010d",
    "llama3-bf16": "4ece1be4f37d4b2e45eada8240088c005f7ccac3a415542858f346113ed47499",
}

FAMILIES = {
    # name: (architecture, tokenizer.ggml.pre, special tokens, chat template, rope base, tied output)
    "llama3": ("llama", "llama-bpe",
               ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
               "{{ m.content | trim }}<|eot_id|>{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
               500000.0, False),
    "qwen2": ("qwen2", "qwen2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
              1000000.0, False),
    "qwen3": ("qwen3", "qwen2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
              1000000.0, True),
}

# A little text of code, prose and numbers to learn merges from.
CORPUS = """The capital of France is Paris. The quick brown fox jumps over the lazy dog.
Volunteer computing pools spare machines into one system that anyone can join, and the people who
own the machines own the system. def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i * i)
In 2024 there were 365 days, 12 months and 52 weeks; 3.14159 is close to pi, and 2.71828 to e.
fn main() { let x = vec![1, 2, 3]; println!("{:?}", x.iter().sum::<i32>()); }
Once upon a time, in a house by the river, a cat and a dog lived together with the people of the town.
"""


def bytes_to_unicode():
    """GPT-2's map from bytes to printable characters (what byte-level BPE vocabularies hold)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def vocabulary(specials):
    """256 byte tokens, MERGES merges learned greedily (most frequent pair, ties by text) from CORPUS
    split at spaces, then the special tokens."""
    table = bytes_to_unicode()
    words = Counter()
    for i, word in enumerate(CORPUS.split(" ")):
        text = (" " if i else "") + word
        words[tuple(table[b] for b in text.encode())] += 1
    tokens = [table[b] for b in range(256)]
    merges = []
    for _ in range(MERGES):
        pairs = Counter()
        for word, n in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        merged = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    import gguf

    types = [gguf.TokenType.NORMAL] * len(tokens) + [gguf.TokenType.CONTROL] * len(specials)
    return tokens + specials, types, merges


def llama3_rope_factors(base):
    """Llama 3's RoPE frequency factors, as llama.cpp's converter computes them (`rope_freqs`)."""
    factor, low, high, old_context = 8.0, 1.0, 4.0, 8192
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for i in range(0, HEAD_DIM, 2):
        freq = 1.0 / (base ** (i / HEAD_DIM))
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    import numpy as np

    return np.array(factors, dtype=np.float32)


def write_f32(name, path, seed):
    import gguf
    import numpy as np

    arch, pre, specials, template, rope_base, tied = FAMILIES[name]
    tokens, types, merges = vocabulary(specials)
    vocab = len(tokens)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"hearth-test-{name}")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(rope_base)
    w.add_rope_dimension_count(HEAD_DIM)
    if arch == "qwen3":
        w.add_key_length(HEAD_DIM)
        w.add_value_length(HEAD_DIM)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    first = len(tokens) - len(specials)
    if name == "llama3":
        w.add_bos_token_id(first)
        w.add_eos_token_id(first + 4)  # <|eot_id|>
        w.add_add_bos_token(True)
    else:
        w.add_eos_token_id(first + 2)  # <|im_end|>
        w.add_pad_token_id(first)
        w.add_add_bos_token(False)
    w.add_chat_template(template)

    def normal(shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm_weight(n):
        return (1.0 + rng.standard_normal(n) * 0.1).astype(np.float32)

    q_width, kv_width = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    # Scaled so that logits, through the output or the tied embedding, spread a few units apart.
    w.add_tensor("token_embd.weight", normal((vocab, HIDDEN), 4.0 / math.sqrt(HIDDEN)))
    if name == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(rope_base))
    for i in range(LAYERS):
        t = lambda part: f"blk.{i}.{part}"
        w.add_tensor(t("attn_norm.weight"), norm_weight(HIDDEN))
        w.add_tensor(t("attn_q.weight"), normal((q_width, HIDDEN), 1.5 / math.sqrt(HIDDEN)))
        w.add_tensor(t("attn_k.weight"), normal((kv_width, HIDDEN), 1.5 / math.sqrt(HIDDEN)))
        w.add_tensor(t("attn_v.weight"), normal((kv_width, HIDDEN), 1.0 / math.sqrt(HIDDEN)))
        if arch == "qwen2":
            w.add_tensor(t("attn_q.bias"), normal(q_width, 0.5))
            w.add_tensor(t("attn_k.bias"), normal(kv_width, 0.5))
            w.add_tensor(t("attn_v.bias"), normal(kv_width, 0.5))
        if arch == "qwen3":
            w.add_tensor(t("attn_q_norm.weight"), norm_weight(HEAD_DIM))
            w.add_tensor(t("attn_k_norm.weight"), norm_weight(HEAD_DIM))
        w.add_tensor(t("attn_output.weight"), normal((HIDDEN, q_width), 1.0 / math.sqrt(q_width)))
        w.add_tensor(t("ffn_norm.weight"), norm_weight(HIDDEN))
        w.add_tensor(t("ffn_gate.weight"), normal((FFN, HIDDEN), 1.0 / math.sqrt(HIDDEN)))
        w.add_tensor(t("ffn_up.weight"), normal((FFN, HIDDEN), 1.0 / math.sqrt(HIDDEN)))
        w.add_tensor(t("ffn_down.weight"), normal((HIDDEN, FFN), 1.0 / math.sqrt(FFN)))
    w.add_tensor("output_norm.weight", norm_weight(HIDDEN))
    if not tied:
        w.add_tensor("output.weight", normal((vocab, HIDDEN), 4.0 / math.sqrt(HIDDEN)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src, dst, kind):
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
                    "bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16}[kind]
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize {src} failed ({rc})")


def main():
    args = sys.argv[1:]
    check = bool(args) and args[0] == "--check"
    if check:
        args.pop(0)
    out = args[0] if args else os.path.expanduser("~/.cache/hearth/models")
    if check:
        # Exit 0 when every test model is there with its pinned hash (no packages needed).
        missing = [f"{f}-{k}" for f, k in OUTPUTS
                   if not os.path.exists(path := os.path.join(out, f"hearth-test-{f}-{k}.gguf"))
                   or sha256(path) != SHA256[f"{f}-{k}"]]
        if missing:
            print(f"test models to make: {', '.join(missing)}")
        sys.exit(1 if missing else 0)
    os.makedirs(out, exist_ok=True)
    for family, kind in OUTPUTS:
        name = f"{family}-{kind}"
        dst = os.path.join(out, f"hearth-test-{name}.gguf")
        if os.path.exists(dst) and sha256(dst) == SHA256[name]:
            print(f"{dst} already made")
            continue
        f32 = os.path.join(out, f".hearth-test-{family}-f32.tmp")
        write_f32(family, f32, 1000 + list(FAMILIES).index(family))
        quantize(f32, dst + ".part", kind)
        os.remove(f32)
        got = sha256(dst + ".part")
        if got != SHA256[name]:
            raise SystemExit(f"{dst}: llama.cpp's quantizer wrote sha256 {got}, not the pinned "
                             f"{SHA256[name]} that the committed references were made from")
        os.replace(dst + ".part", dst)
        print(f"wrote {dst}")


if __name__ == "__main__":
    main()
