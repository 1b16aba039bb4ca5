"""What the exact-forward reference scripts share: the file's hash and how a prompt's checked
positions are written."""
import hashlib

TOP = 8


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prompt_record(name, seq_ids, checked, forward):
    """Run `forward(ids, positions)` and record, at each checked position (every one when `checked`
    is None), the exact argmax, its margin to the second, and the best TOP tokens' logits."""
    import numpy as np

    checked = checked or list(range(len(seq_ids)))
    logits = forward(np.array(seq_ids), np.array(checked))
    steps = []
    for p, row in zip(checked, logits):
        order = np.argsort(-row, kind="stable")
        steps.append({"position": p, "argmax": int(order[0]),
                      "margin": float(row[order[0]] - row[order[1]]),
                      "top": [[int(t), float(row[t])] for t in order[:TOP]]})
    return {"name": name, "ids": [int(i) for i in seq_ids], "steps": steps}
