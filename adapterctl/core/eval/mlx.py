"""MLX variants, run by mlx-lm itself: an MLX adapter folder (as ``convert --to mlx`` writes it) on
the base, loaded by ``mlx_lm.load(base, adapter_path=...)`` in mlx-lm's own Python (``--mlx-python``,
then ``$ADAPTERCTL_MLX_PYTHON``). One runner process per variant reads batches of token ids on stdin
and writes each batch's float32 logits (rows unpadded, one forward each) to a ``.npy`` file it names
on stdout, so the model loads once and no more than one batch's logits exist at a time. Token ids
go in as ids: mlx-lm scores exactly the reference's tokens."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapterctl.core.eval.scorers import Scorer
from adapterctl.core.eval.specs import VariantSpec
from adapterctl.errors import IncompatibleBaseError, MissingDependencyError, UsageError

#: run by mlx-lm's Python (never imports adapterctl): load, say the vocabulary size, then per line of
#: stdin ({"rows": [[ids]...], "out": PATH}) save (rows, longest, vocab) float32 logits, zero-padded
RUNNER = r"""
import json, sys
import numpy as np
import mlx.core as mx
from mlx_lm import load

model, _ = load(sys.argv[1], adapter_path=sys.argv[2])
vocab = model(mx.array([[0]])).shape[-1]
print(json.dumps({"ready": True, "vocab": int(vocab)}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    rows = req["rows"]
    out = np.zeros((len(rows), max(len(r) for r in rows), vocab), dtype=np.float32)
    for i, ids in enumerate(rows):
        logits = model(mx.array([ids]))[0].astype(mx.float32)
        mx.eval(logits)
        out[i, : len(ids)] = np.array(logits)
    np.save(req["out"], out)
    print(json.dumps({"done": req["out"]}), flush=True)
"""


def find_mlx_python(given: str | None) -> Path:
    """mlx-lm's Python: ``--mlx-python``, then ``$ADAPTERCTL_MLX_PYTHON``."""
    for where, value in (
        ("--mlx-python", given),
        ("$ADAPTERCTL_MLX_PYTHON", os.environ.get("ADAPTERCTL_MLX_PYTHON")),
    ):
        if not value:
            continue
        path = Path(value).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise MissingDependencyError(
            f"{where} {value}: no Python interpreter there",
            hint="Give the python of a virtualenv with mlx-lm installed (pip install mlx-lm).",
        )
    raise MissingDependencyError(
        "MLX variants are run by mlx-lm, and no Python with mlx-lm was given",
        hint="Pass --mlx-python PATH (the python of a virtualenv with mlx-lm) or set ADAPTERCTL_MLX_PYTHON.",
    )


@dataclass
class MlxScorer(Scorer):
    """An MLX adapter on the base, run by mlx-lm in its own process (started by :func:`mlx_scorer`)."""

    proc: Any = None  # subprocess.Popen of RUNNER
    stderr: Any = None  # its stderr, a temporary file
    tmp: Any = None  # tempfile.TemporaryDirectory for the batches' logits

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows = [ids[r, : int(mask[r].sum())].tolist() for r in range(ids.shape[0])]
        out = Path(self.tmp.name) / "batch.npy"
        reply = self._ask({"rows": rows, "out": str(out)})
        if reply.get("done") != str(out):
            raise self._failure("answered out of turn")
        logits = torch.from_numpy(np.load(out))
        out.unlink()
        width = ids.shape[1]
        if logits.shape[1] < width:  # the longest row is shorter than the padded batch
            logits = torch.nn.functional.pad(logits, (0, 0, 0, width - logits.shape[1]))
        return logits

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise self._failure(f"exited (code {self.proc.wait()})")
        return json.loads(line)

    def _failure(self, what: str) -> UsageError:
        self.stderr.seek(0)
        tail = self.stderr.read().decode("utf-8", "replace").strip().splitlines()[-5:]
        return UsageError(
            f"variant {self.name!r}: mlx-lm {what}: " + " | ".join(tail),
            hint="Check that mlx_lm.load(BASE, adapter_path=FOLDER) loads it in that Python.",
        )

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None


def mlx_scorer(spec: VariantSpec, python: str | None, base_dir: Path, size: int) -> MlxScorer:
    """Start mlx-lm on the base (a local folder) with the variant's adapter; checked: its vocabulary
    is the base's."""
    exe = find_mlx_python(python)
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [str(exe), "-c", RUNNER, str(base_dir), spec.target],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    scorer = MlxScorer(
        spec.name,
        None,
        None,
        spec,
        [f"run by mlx-lm ({exe.parent.parent.name}) on {base_dir.name}"],
        proc=proc,
        stderr=stderr,
        tmp=tempfile.TemporaryDirectory(prefix="adapterctl-eval-mlx-"),
    )
    try:
        hello = scorer._reply()
        if hello.get("vocab") != size:
            raise IncompatibleBaseError(
                f"variant {spec.name!r}: mlx-lm's model has a vocabulary of {hello.get('vocab')} "
                f"entries, the base's {size}",
                hint="Compare copies of the same model: give the MLX adapter of this base.",
            )
    except BaseException:
        scorer.close()
        raise
    return scorer
