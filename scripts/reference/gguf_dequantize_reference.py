#!/usr/bin/env python3
"""Reference values for Hearth's GGUF block formats, from the `gguf` package's own dequantizer.

Writes worker-kernels/cpu/tests/data/gguf_dequantize.json: for each block type Hearth reads, a few
blocks of seeded random bytes (scales drawn as small finite f16 values, so every value is finite)
and the f32 values `gguf.quants.dequantize` gives for them, as bit patterns. hearth-cpu's unit tests
decode the same bytes and must give the same bits.

CI does not run this; the tests read its output. To regenerate:
    python3 -m venv /tmp/gv && /tmp/gv/bin/pip install gguf==0.19.0 numpy
    /tmp/gv/bin/python scripts/reference/gguf_dequantize_reference.py
"""
import json
import os
from importlib.metadata import version

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

# Bytes of each block, where its f16 scales sit, and how many blocks to write.
FORMATS = {
    "Q4_0": (T.Q4_0, 18, [0], 8),
    "Q5_0": (T.Q5_0, 22, [0], 8),
    "Q8_0": (T.Q8_0, 34, [0], 8),
    "Q4_K": (T.Q4_K, 144, [0, 2], 3),
    "Q5_K": (T.Q5_K, 176, [0, 2], 3),
    "Q6_K": (T.Q6_K, 210, [208], 3),
}


def main():
    rng = np.random.default_rng(18)
    out = {"gguf": version("gguf"), "formats": {}}
    for name, (qtype, size, halves, count) in FORMATS.items():
        blocks = rng.integers(0, 256, size=(count, size), dtype=np.uint8)
        for at in halves:
            scales = (rng.uniform(-0.05, 0.05, size=count)).astype(np.float16)
            blocks[:, at:at + 2] = scales.view(np.uint8).reshape(count, 2)
        values = dequantize(blocks.reshape(-1), qtype).astype(np.float32).reshape(-1)
        assert np.isfinite(values).all()
        out["formats"][name] = {
            "blocks": blocks.tobytes().hex(),
            "values": [int(v) for v in values.view(np.uint32)],
        }
    path = os.path.join(os.path.dirname(__file__), "..", "..", "worker-kernels", "cpu", "tests",
                        "data", "gguf_dequantize.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
