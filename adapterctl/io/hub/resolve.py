"""One place where a user's ADAPTER or BASE argument becomes a local folder.

Local paths are used as they are. Anything else that looks like a Hub id (``user/repo`` or
``user/repo@revision``) is resolved through :mod:`adapterctl.io.hub.download` (downloaded into the standard
Hugging Face cache, only the files the caller needs).
"""

from __future__ import annotations

from pathlib import Path

from adapterctl.errors import NotFoundError
from adapterctl.io.hub import download as hub_io
from adapterctl.io.hub.ref import HubOptions, looks_like_hub_id


def resolve_local(ref: str | Path, kind: str) -> Path | None:
    """The local folder for ``ref``, or None when ``ref`` is no existing path."""
    p = Path(ref).expanduser()
    if p.exists():
        return p
    if not looks_like_hub_id(str(ref)):
        raise NotFoundError(
            f"{ref}: no such {kind} directory",
            hint=f"Give a local {kind} folder or a Hub id like user/repo.",
        )
    return None


def resolve_adapter_dir(
    ref: str | Path, hub: HubOptions | None = None, need_weights: bool = True, header_only: bool = False
) -> Path:
    """A local folder holding the adapter (config, and weights when ``need_weights``).

    ``header_only``: the caller reads only safetensors headers (inspect), so a Hub download may
    fetch just the header bytes with HTTP Range requests."""
    local = resolve_local(ref, "adapter")
    if local is not None:
        return local
    return hub_io.download_adapter(
        str(ref), hub or HubOptions(), need_weights=need_weights, header_only=header_only
    )


def resolve_model_dir(
    ref: str | Path, hub: HubOptions | None = None, need_weights: bool = True, header_only: bool = False
) -> Path:
    """A local folder holding the base model (config, weights, tokenizer)."""
    local = resolve_local(ref, "model")
    if local is not None:
        return local
    return hub_io.download_model(
        str(ref), hub or HubOptions(), need_weights=need_weights, header_only=header_only
    )
