"""The GGUF file llama.cpp's ``llama-results`` tool writes (tools/results/results.cpp): an ``I32``
tensor ``tokens`` (the prompt as llama.cpp tokenized it) and an ``F32`` tensor ``logits`` of every
position, stored row by row (``logits[i * n_vocab + j]``: position ``i``, token ``j``), plus the
model's path as ``path_model``. Read with the stdlib header reader and numpy, no ``gguf`` package."""

from __future__ import annotations

import os

import numpy as np

from adapterctl.errors import InvalidAdapterError
from adapterctl.io.formats.gguf_header import read_gguf_header


def read_llama_results(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, logits)``: (N,) int32 token ids and (N, n_vocab) float32 logits."""
    header = read_gguf_header(path)
    tokens, logits = header.tensors.get("tokens"), header.tensors.get("logits")
    if tokens is None or logits is None or tokens.ggml_type != "I32" or logits.ggml_type != "F32":
        raise InvalidAdapterError(
            f"{path}: not a llama-results file (no I32 `tokens` and F32 `logits` tensors)",
            hint="It is written by llama.cpp's llama-results tool.",
        )
    n = tokens.shape[0]
    size = logits.shape[0] * logits.shape[1] if len(logits.shape) == 2 else 0
    if n == 0 or size % n:
        raise InvalidAdapterError(f"{path}: {n} tokens but logits of shape {logits.shape}")
    ids = np.fromfile(path, dtype="<i4", count=n, offset=header.data_offset + tokens.offset)
    flat = np.fromfile(path, dtype="<f4", count=size, offset=header.data_offset + logits.offset)
    return ids, flat.reshape(n, size // n)
