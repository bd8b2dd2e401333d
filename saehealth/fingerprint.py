"""Cheap fingerprints of weights: a saved result or cache entry is reused only for the weights it was made from."""

from __future__ import annotations

import hashlib

import torch


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A hash of a module's state dict that stays cheap for billions of parameters.

    Per tensor: name, shape, dtype, the float64 sum and up to 4096 evenly strided raw values, so retraining,
    fine-tuning or a different checkpoint changes it.
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            stride = max(1, flat.numel() // 4096)
            sample = flat[::stride][:4096].float().cpu().numpy()
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            digest.update(repr(float(torch.sum(flat, dtype=torch.float64))).encode())
            digest.update(sample.tobytes())
    return digest.hexdigest()
