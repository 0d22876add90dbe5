"""GGUF variants, run by llama.cpp itself: a merged model GGUF alone, or a GGUF LoRA on the base
converted to GGUF (``--gguf-base``). llama.cpp's ``llama-results`` tool (tools/results/results.cpp)
decodes one text in one batch and saves the float32 logits of every position with the tokens it
used; eval gives it each sequence's text and checks that llama.cpp's tokens are the reference's
before it uses a logit, so both score the same token ids.

The binaries are found in ``--llama-cpp DIR`` (a llama.cpp checkout with ``build/bin``, or the
folder of the binaries), then ``$ADAPTERCTL_LLAMA_CPP``, then PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapterctl.core.eval.scorers import Scorer
from adapterctl.core.eval.specs import VariantSpec
from adapterctl.errors import IncompatibleBaseError, MissingDependencyError, UsageError
from adapterctl.io.formats.gguf_header import GGUFArraySummary, read_gguf_header
from adapterctl.io.formats.gguf_results import read_llama_results

TOOL = "llama-results"
#: seconds one sequence may take in llama.cpp (a model load and one forward pass)
TIMEOUT = 600


def find_tool(directory: str | None, name: str = TOOL) -> Path:
    """``name`` in ``directory``, ``$ADAPTERCTL_LLAMA_CPP`` or PATH (a folder may be a llama.cpp
    checkout: its ``build/bin`` is looked in)."""
    for where, folder in (
        ("--llama-cpp", directory),
        ("$ADAPTERCTL_LLAMA_CPP", os.environ.get("ADAPTERCTL_LLAMA_CPP")),
    ):
        if not folder:
            continue
        for cand in (Path(folder) / name, Path(folder) / "build" / "bin" / name, Path(folder) / "bin" / name):
            if cand.is_file() and os.access(cand, os.X_OK):
                return cand
        if where == "--llama-cpp":
            raise MissingDependencyError(
                f"--llama-cpp {folder}: no {name} there (nor in its build/bin)",
                hint=f"Build llama.cpp's {name} target (cmake --build build --target {name}) and pass "
                "its folder with --llama-cpp DIR.",
            )
    found = shutil.which(name)
    if found:
        return Path(found)
    raise MissingDependencyError(
        f"GGUF variants are run by llama.cpp, and its {name} tool was not found",
        hint=f"Pass --llama-cpp DIR (a llama.cpp build with {name}), set ADAPTERCTL_LLAMA_CPP, or put "
        f"{name} on PATH.",
    )


def gguf_vocab(path: str) -> int | None:
    """Entries of a model GGUF's vocabulary (``tokenizer.ggml.tokens``); None for a GGUF without one."""
    tokens = read_gguf_header(path).get("tokenizer.ggml.tokens")
    if isinstance(tokens, GGUFArraySummary):
        return tokens.count
    return len(tokens) if isinstance(tokens, list) else None


def is_adapter(path: str) -> bool:
    return read_gguf_header(path).get("general.type") == "adapter"


@dataclass
class GgufScorer(Scorer):
    """A GGUF variant: each row of a batch is one llama-results run on the row's text."""

    tool: Path | None = None
    model_file: str = ""
    lora_file: str | None = None
    tokenizer: Any = None  # the base's transformers tokenizer

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in range(ids.shape[0]):
            n = int(mask[row].sum())
            rows.append(self._row(ids[row, :n].tolist()))
        out = torch.zeros(ids.shape[0], ids.shape[1], rows[0].shape[-1], dtype=torch.float32)
        for row, logits in enumerate(rows):
            out[row, : logits.shape[0]] = logits
        return out

    def _row(self, ids: list[int]) -> torch.Tensor:
        assert self.tool is not None  # gguf_scorer always sets it
        text = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        with tempfile.TemporaryDirectory(prefix="adapterctl-eval-") as tmp:
            prompt, out = Path(tmp) / "text.txt", Path(tmp) / "results.gguf"
            prompt.write_bytes(text.encode("utf-8"))
            n = str(max(8, len(ids) + 1))
            cmd = [str(self.tool), "-m", self.model_file, "-f", str(prompt), "-o", str(out), "-c", n, "-b", n,
                   "-ub", n]  # fmt: skip
            if self.lora_file:
                cmd += ["--lora", self.lora_file]
            proc = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT)
            if proc.returncode or not out.is_file():
                err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
                raise UsageError(
                    f"variant {self.name!r}: llama.cpp's {self.tool.name} failed (exit {proc.returncode}): "
                    + " | ".join(err),
                    hint="Check that the GGUF files load in llama.cpp (llama-completion -m FILE).",
                )
            tokens, logits = read_llama_results(out)
        if tokens.tolist() != ids:
            raise IncompatibleBaseError(
                f"variant {self.name!r}: llama.cpp tokenizes a sequence differently from the base's "
                f"tokenizer ({len(tokens)} tokens {tokens[:8].tolist()}... against {len(ids)} "
                f"{ids[:8]}...), so their logits would not be of the same tokens",
                hint="GGUF variants score whole texts: give --data as JSONL (one `text` or `prompt` + "
                "`completion` per line) rather than plain text cut into --ctx windows, and a GGUF "
                "converted from this base (same tokenizer).",
            )
        return torch.from_numpy(logits.copy())


def gguf_scorer(
    spec: VariantSpec, llama_cpp: str | None, gguf_base: str | None, tokenizer, size: int
) -> GgufScorer:
    """A GGUF variant, checked before anything runs: llama.cpp found, the model GGUF (the variant
    itself, or ``gguf_base`` under a GGUF LoRA) of the base's vocabulary size."""
    tool = find_tool(llama_cpp)
    lora = None
    model = spec.target
    if is_adapter(spec.target):
        if not gguf_base:
            raise UsageError(
                f"variant {spec.name!r}: {spec.target} is a GGUF LoRA; llama.cpp runs it on the base as GGUF",
                hint="Pass the base converted to GGUF with --gguf-base FILE (llama.cpp's "
                "convert_hf_to_gguf.py BASE --outtype f32).",
            )
        model, lora = gguf_base, spec.target
    if is_adapter(model):
        raise UsageError(f"--gguf-base {model}: a GGUF LoRA, not a model", hint="Give the base model's GGUF.")
    vocab = gguf_vocab(model)
    if vocab is not None and vocab != size:
        raise IncompatibleBaseError(
            f"variant {spec.name!r}: {model} has a vocabulary of {vocab} tokens, the base's has {size}",
            hint="Compare copies of the same model: convert this base to GGUF (same tokenizer).",
        )
    notes = [
        f"run by llama.cpp ({tool.name}) on {Path(model).name}" + (f" + {Path(lora).name}" if lora else "")
    ]
    return GgufScorer(spec.name, None, None, spec, notes, tool=tool, model_file=model, lora_file=lora,
                      tokenizer=tokenizer)  # fmt: skip
