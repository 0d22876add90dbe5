"""Hub transfer (huggingface_hub). Filled in by the Hub work; local paths work without it."""

from __future__ import annotations

from pathlib import Path

from adapterctl.errors import NotFoundError


def download_adapter(repo: str, hub, need_weights: bool = True,
                     header_only: bool = False) -> Path:
    raise NotFoundError(f"{repo}: no such local adapter directory",
                        hint="Hub ids are not supported yet; download the adapter first.")


def download_model(repo: str, hub, need_weights: bool = True,
                     header_only: bool = False) -> Path:
    raise NotFoundError(f"{repo}: no such local model directory",
                        hint="Hub ids are not supported yet; download the model first.")
