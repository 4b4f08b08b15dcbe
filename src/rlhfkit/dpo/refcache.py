"""Reference log-probs computed once before training and kept in the run directory (`ref_logps.pt`), valid
exactly while the tokenised pairs and the reference weights are unchanged (both are hashed into the key)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from rlhfkit.dpo.objective import Pair, collate_pairs
from rlhfkit.logprobs import Reference


def cache_key(pairs: list[Pair], reference: Reference) -> str:
    """sha256 of every pair's token ids and masks and of the reference weights: the cache is valid exactly
    while both are unchanged."""
    h = hashlib.sha256()
    for p in pairs:
        for enc in (p.chosen, p.rejected):
            h.update(json.dumps([enc.input_ids, enc.loss_mask]).encode())
    with reference.model() as ref:
        for name, tensor in sorted(ref.state_dict().items()):
            if "lora_" in name:
                continue  # a disabled adapter is not part of pi_ref
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def compute_ref_logps(pairs: list[Pair], reference: Reference, pad_id: int, batch_size: int,
                      device: Any, shared_prefix: bool = False) -> torch.Tensor:
    """(N, 2) reference log-probs (chosen, rejected) of every pair, in batches."""
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        seq = reference.sequence_logps(collate_pairs(chunk, pad_id, shared_prefix).to(device)).cpu()  # (2b,)
        out.append(torch.stack([seq[: len(chunk)], seq[len(chunk) :]], dim=1))  # (b, 2)
    return torch.cat(out) if out else torch.zeros(0, 2)


def attach_ref_logps(pairs: list[Pair], reference: Reference, pad_id: int, batch_size: int, device: Any,
                     cache_path: Path | None, write: bool = True, shared_prefix: bool = False) -> str:
    """Fill every pair's ref_logps from `cache_path` when its key matches, else compute them (and store them
    there when `write`: only the main process writes). Returns "hit" or "miss"."""
    key = cache_key(pairs, reference)
    cached = torch.load(cache_path) if cache_path is not None and cache_path.exists() else None
    if cached is not None and cached.get("key") == key:
        logps, status = cached["logps"], "hit"
    else:
        logps = compute_ref_logps(pairs, reference, pad_id, batch_size, device, shared_prefix)
        status = "miss"
        if cache_path is not None and write:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "logps": logps}, cache_path)
    for pair, row in zip(pairs, logps.tolist()):
        pair.ref_logps = (row[0], row[1])
    return status
