"""Adapters made ready for a serving engine, before the engine starts (a refusal inside vLLM kills
its engine, so nothing that would be refused may reach it):

1. each adapter goes through the engine's rules (``check --engine ENGINE``,
   :mod:`adapterctl.core.engine_rules.check`);
2. one the engine serves as trained is used as it is; one it would refuse or change is converted
   (``convert --for ENGINE``, :mod:`adapterctl.core.convert.for_engine`) where the conversion is
   exact: DoRA as a full-rank LoRA (up to the engine's largest rank), extras as full-rank LoRA,
   scales baked into lora_B; the result must hold every module to float32 precision (relative
   error <= 1e-5) and drop nothing;
3. anything else is refused here, naming the adapter, the engine's reason and what to do;
4. the engine's LoRA limits come from what it will load: ``--max-lora-rank`` (vLLM accepts only
   some values: the smallest one that holds the largest rank) and ``--max-loras`` (how many
   adapters may share a batch: all of them).

Converted copies are written under ``workdir``, named by the adapter's files, the engine and the
base, so a later run reuses them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from adapterctl.core.engine_rules.limits import PreparedAdapter, config_rank, lora_limits
from adapterctl.errors import UnsupportedError
from adapterctl.io.folders.output_dir import Input, check_output

__all__ = ["EXACT", "PreparedAdapter", "lora_limits", "prepare_adapters"]

#: largest relative error (||ΔW - ΔW'||_F / ||ΔW||_F per module) still called exact (float32)
EXACT = 1e-5


def prepare_adapters(
    engine: str,
    adapters: Sequence[tuple[str, str, Path]],
    base: tuple[Path, str],
    workdir: Path,
    on_step: Callable[[str], None] | None = None,
) -> list[PreparedAdapter]:
    """``adapters``: (name, as given, local folder); ``base``: (local folder, as given). A
    converted copy under ``workdir`` may replace none of them (nor sit inside the base)."""
    from adapterctl.core.engine_rules.check import check_adapters

    step = on_step or (lambda text: None)
    inputs = (Input.model(base[0], base[1]), *(Input.adapter(f, shown) for _, shown, f in adapters))
    report = check_adapters(
        [(str(folder), shown) for _, shown, folder in adapters], [engine], (str(base[0]), base[1])
    )
    out = []
    for (name, shown, folder), verdict in zip(adapters, report.results):
        if verdict.verdict == "serves":
            out.append(
                PreparedAdapter(name, shown, Path(folder), Path(folder), "serves", config_rank(Path(folder)))
            )
            continue
        out.append(
            _convert(
                engine,
                name,
                shown,
                Path(folder),
                verdict,
                base=base,
                workdir=workdir,
                step=step,
                inputs=inputs,
            )
        )
    return out


def _why(verdict) -> str:
    bad = [f for f in verdict.reasons if f.verdict in ("changes", "refuses")]
    return bad[0].message if bad else verdict.verdict


def _convert(
    engine: str,
    name: str,
    shown: str,
    folder: Path,
    verdict,
    *,
    base: tuple[Path, str],
    workdir: Path,
    step: Callable[[str], None],
    inputs: Sequence[Input],
) -> PreparedAdapter:
    from adapterctl.core.convert.pipeline import ConvertRequest, run_convert
    from adapterctl.core.engine_rules.vllm import MAX_LORA_RANKS

    said = f"{engine} {verdict.verdict} {shown}: {_why(verdict)}"
    if verdict.fix is None:
        raise UnsupportedError(
            said,
            hint=f"No exact conversion exists; `adapterctl check {shown} "
            f"--engine {engine}` lists every reason.",
        )
    if "--drop-unsupported" in verdict.fix:
        raise UnsupportedError(
            said,
            hint=f"Only dropping parts of it would let {engine} load it; "
            f"if that is acceptable, run `{verdict.fix}` and serve "
            "the result.",
        )
    dest = workdir / f"{name}-{engine}-{_digest(folder, engine, base[0])}"
    check_output(dest, inputs, "--convert-dir")  # before the folder is made
    if not (dest / "adapter_config.json").is_file():
        step(
            f"{shown}: {engine} {verdict.verdict} it as it is; converting (convert --for "
            f"{engine}) into {dest}"
        )
        workdir.mkdir(parents=True, exist_ok=True)
        # rank: a DoRA module becomes a LoRA of full rank (exact) up to the largest the engine
        # accepts; beyond that the SVD truncates and the error check below refuses it
        result = run_convert(
            ConvertRequest(
                source=str(folder),
                output=str(dest),
                base=str(base[0]),
                base_name=base[1],
                source_name=shown,
                for_engine=(engine,),
                rank=MAX_LORA_RANKS[-1],
                keep=tuple(inputs),
            )
        )
        _check_exact(result, said, shown, engine, dest)
        notes = tuple(result.notes)
    else:
        step(f"{shown}: {engine} {verdict.verdict} it as it is; using its converted copy {dest}")
        notes = ("converted copy reused",)
    return PreparedAdapter(name, shown, folder, dest, verdict.verdict, config_rank(dest), notes)


def _check_exact(result, said: str, shown: str, engine: str, dest: Path) -> None:
    worst = max((m.rel_error for m in result.modules if m.rel_error is not None), default=0.0)
    if result.removed or worst > EXACT:
        import shutil

        shutil.rmtree(dest, ignore_errors=True)
        what = (
            f"it would drop {result.removed[0]}"
            if result.removed
            else f"its relative error would be {worst:.2e}"
        )
        raise UnsupportedError(
            f"{said}; the conversion for {engine} is not exact ({what})",
            hint=f"Convert it yourself if the change is acceptable: "
            f"`adapterctl convert {shown} OUT --for {engine} --rank R`, "
            "then serve OUT.",
        )


def _digest(folder: Path, engine: str, base: Path) -> str:
    """Names a converted copy by what it was made from: the engine, the adapter's files and the
    base's (name, size and mtime of each: a stat, never a read), wherever those folders are."""
    h = hashlib.sha256(json.dumps([engine]).encode())
    for where in (Path(folder), Path(base)):
        files = sorted(where.iterdir()) if where.is_dir() else [where]
        for p in files:
            if p.is_file():
                st = p.stat()
                h.update(json.dumps([p.name, st.st_size, st.st_mtime_ns]).encode())
        h.update(b"\0")
    return h.hexdigest()[:12]
