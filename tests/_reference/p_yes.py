"""P(continuation | prompt) the slow way: no padding, no batch, one forward per continuation token."""

from __future__ import annotations

import torch


def reference_p_yes(model, tok, prompt: str, continuation: str = " yes") -> float:
    """No padding, no batch: one forward per continuation token, multiplying the conditional probabilities."""
    whole = tok(prompt + continuation)["input_ids"]
    n = len(tok(prompt)["input_ids"])
    p = 1.0
    with torch.no_grad():
        for k in range(n, len(whole)):
            logits = model(torch.tensor([whole[:k]])).logits[0, -1].double()
            p *= float(torch.softmax(logits, -1)[whole[k]])
    return p
