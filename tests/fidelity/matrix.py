"""One case of the fidelity matrix: a PEFT LoRA configuration on a tiny architecture.

PEFT builds the adapter (``init_lora_weights=False`` or the configured initialiser, every trained
tensor perturbed so nothing is a no-op) and its unmerged forward is the oracle: float32 logits of
the model the user trained and evaluated. adapterctl then attaches the saved adapter to a fresh
copy of the base and merges it into a checkpoint that transformers loads; both must give the
oracle's logits within ``TOL``, or adapterctl must refuse the variant by name (exit 5).

``python -m tests.fidelity.matrix [ARCH...]`` runs the whole matrix and prints the counts.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tests.fidelity.archs import ARCHS, arch_configs
from tests.fidelity.configs import CONFIGS, MERGE_REFUSED, REFUSED, ArchInfo

#: float32 logits agree to 1e-4, relative to the largest logit where logits exceed 1 (a float32
#: ulp at 1434 is 1.2e-4: embedding LoRA on tied heads makes logits that large)
TOL = 1e-4
PERTURB = 0.3


@dataclass
class Base:
    name: str
    path: Path
    model: torch.nn.Module  # pristine, float32, eval: copied for every case
    info: ArchInfo


@dataclass
class CaseResult:
    arch: str
    config: str
    status: str  # "n/a" (cannot be written for this arch) | "peft-cannot-build" | "ran"
    detail: str = ""
    attach_diff: float | None = None
    merged_diff: float | None = None
    attach_error: Exception | None = None
    merge_error: Exception | None = None
    changed: float = 0.0  # how far the oracle is from the base: the adapter does something
    notes: list[str] = field(default_factory=list)

    scale: float = 1.0  # max(1, largest oracle logit)

    @property
    def expected_refusal(self) -> str | None:
        return REFUSED.get(self.config)

    @property
    def refused_by_name(self) -> bool:
        name = self.expected_refusal
        return bool(name) and all(_refusal(e, name) for e in (self.attach_error, self.merge_error))

    @property
    def merge_refused_by_name(self) -> bool:
        name = MERGE_REFUSED.get(self.config)
        return bool(name) and _refusal(self.merge_error, name)

    @property
    def attach_ok(self) -> bool:
        return self.attach_diff is not None and self.attach_diff <= TOL * self.scale

    @property
    def merged_ok(self) -> bool:
        return self.merged_diff is not None and self.merged_diff <= TOL * self.scale


def _refusal(err: Exception | None, name: str) -> bool:
    from adapterctl.errors import UnsupportedError

    return isinstance(err, UnsupportedError) and name in str(err) and err.exit_code == 5


def arch_info(model: torch.nn.Module) -> ArchInfo:
    from adapterctl.core.adapter.compat import LayerKind
    from adapterctl.core.runtime.layers import layer_kind

    names = dict(model.named_modules())
    emb = model.get_input_embeddings()
    emb_path = next(p for p, m in names.items() if m is emb)
    linear, biased, layers = [], [], ""
    for path, mod in names.items():
        if layer_kind(mod) in (LayerKind.LINEAR, LayerKind.CONV1D_GPT2) and ".0." in path:
            layers = layers or path.split(".0.")[0].rsplit(".", 1)[-1]
            leaf = path.rsplit(".", 1)[-1]
            if leaf not in linear:
                linear.append(leaf)
            if getattr(mod, "bias", None) is not None and leaf not in biased:
                biased.append(leaf)
    conv1d = any(layer_kind(m) is LayerKind.CONV1D_GPT2 for m in names.values())
    tied = model.get_output_embeddings().weight is emb.weight
    return ArchInfo(model.config.model_type, emb_path.rsplit(".", 1)[-1], tuple(linear), layers,
                    conv1d, tied, tuple(biased))


def build_base(name: str, root: Path) -> Base:
    from transformers import AutoModelForCausalLM

    from tests.conftest import build_model

    path = build_model(arch_configs()[name], root / name)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return Base(name, path, model, arch_info(model))


def inputs() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 384, (2, 12), generator=gen)
    ids[0, :4] = torch.tensor([0, 1, 3, 5])  # trainable-token rows and the aLoRA invocation token
    return ids


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=inputs()).logits.float()


def build_peft(base: Base, kwargs: dict, out: Path, seed: int = 0) -> torch.Tensor:
    """Save PEFT's adapter into ``out``; return the oracle's logits (PEFT's unmerged forward)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    kwargs = dict(kwargs)
    kwargs.setdefault("init_lora_weights", False)
    pm = get_peft_model(copy.deepcopy(base.model), LoraConfig(task_type="CAUSAL_LM", **kwargs))
    with torch.no_grad():
        for _, p in pm.named_parameters():
            if p.requires_grad:  # A, B, magnitudes, diagonals, modules_to_save copies, token rows
                p.add_(torch.randn_like(p) * PERTURB)
    pm.eval()
    oracle = logits(pm)
    pm.save_pretrained(str(out))
    return oracle


def run_case(base: Base, config: str, work: Path) -> CaseResult:
    from transformers import AutoModelForCausalLM

    from adapterctl.core.runtime.attach import attach_adapter
    from adapterctl.core.merge.plan import MergeOptions, load_adapters, plan_merge
    from adapterctl.core.merge.write import execute_merge
    from adapterctl.errors import AdapterctlError

    res = CaseResult(base.name, config, "ran")
    kwargs = CONFIGS[config](base.info)
    if kwargs is None:
        res.status = "n/a"
        return res
    adapter = work / "adapter"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            oracle = build_peft(base, kwargs, adapter)
        except Exception as err:  # PEFT refuses the configuration on this architecture
            res.status, res.detail = "peft-cannot-build", f"{type(err).__name__}: {err}"[:300]
            return res
        res.changed = float((oracle - logits(base.model)).abs().max())
        res.scale = max(1.0, float(oracle.abs().max()))
        try:
            model = copy.deepcopy(base.model)
            attach_adapter(model, adapter)
            res.attach_diff = float((logits(model) - oracle).abs().max())
        except AdapterctlError as err:
            res.attach_error = err
        try:
            job = plan_merge(base.path, load_adapters([adapter]), MergeOptions())
            execute_merge(job, work / "merged", device="cpu")
            merged = AutoModelForCausalLM.from_pretrained(str(work / "merged"),
                                                          dtype=torch.float32).eval()
            res.merged_diff = float((logits(merged) - oracle).abs().max())
            res.notes = job.plan.warnings
        except AdapterctlError as err:
            res.merge_error = err
    return res


def check(res: CaseResult) -> None:
    """The assertion every matrix test makes."""
    if res.status == "n/a":
        return
    if res.status == "peft-cannot-build":
        return
    if res.expected_refusal:
        assert res.refused_by_name, (
            f"{res.expected_refusal} must be refused by name (exit 5): attach "
            f"{res.attach_error or res.attach_diff}, merge {res.merge_error or res.merged_diff}")
        return
    assert res.changed > 1e-3, "the adapter changes nothing: the case cannot fail"
    assert res.attach_error is None, f"attach refused: {res.attach_error}"
    assert res.attach_ok, f"attach differs from PEFT's unmerged forward by {res.attach_diff}"
    if res.merge_refused_by_name:
        return
    assert res.merge_error is None, f"merge refused: {res.merge_error}"
    assert res.merged_ok, f"merged model differs from PEFT's unmerged forward by {res.merged_diff}"


def main(archs: list[str]) -> int:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in archs:
            base = build_base(name, root)
            for config in CONFIGS:
                t = time.perf_counter()
                work = root / f"{name}-{config}"
                work.mkdir()
                res = run_case(base, config, work)
                results.append(res)
                ok = "ok"
                try:
                    check(res)
                except AssertionError as err:
                    ok = f"FAIL {err}"[:200]
                print(f"{name:11} {config:22} {res.status:17} attach={_fmt(res.attach_diff)} "
                      f"merged={_fmt(res.merged_diff)} {time.perf_counter() - t:.1f}s {ok}"
                      + (f" [{res.detail[:120]}]" if res.detail else "")
                      + (f" [attach: {str(res.attach_error)[:100]}]" if res.attach_error else "")
                      + (f" [merge: {str(res.merge_error)[:100]}]" if res.merge_error else ""),
                      flush=True)
    ran = [r for r in results if r.status == "ran"]
    expected = [r for r in ran if not r.expected_refusal]
    print_table(results, archs)
    print(f"\ncases {len(results)}: n/a {sum(r.status == 'n/a' for r in results)}, PEFT cannot "
          f"build {sum(r.status == 'peft-cannot-build' for r in results)}, built {len(ran)}")
    print(f"attach == PEFT {sum(r.attach_ok for r in expected)}/{len(expected)}, merged == PEFT "
          f"unmerged {sum(r.merged_ok for r in expected)}/{len(expected)} (merge refused by name "
          f"{sum(r.merge_refused_by_name for r in expected)}), refused by name "
          f"{sum(r.refused_by_name for r in ran)}/{len(ran) - len(expected)}")
    return 0


def cell(res: CaseResult) -> str:
    """The docs' compatibility table's cell for one case (docs/reference/compatibility.md; every
    matrix case checks its cell there, tests/fidelity/test_matrix.py)."""
    try:
        check(res)
    except AssertionError:
        return "FAIL"
    if res.status != "ran":
        return "n/a" if res.status == "n/a" else "—"
    if res.expected_refusal:
        return "refused" if res.refused_by_name else "FAIL"
    return "✓ attach, merge refused¹" if res.merge_refused_by_name else "✓"


def print_table(results: list[CaseResult], archs: list[str]) -> None:
    by = {(r.arch, r.config): r for r in results}
    print("\n| configuration | " + " | ".join(archs) + " |")
    print("|---|" + "---|" * len(archs))
    for config in CONFIGS:
        print(f"| `{config}` | " + " | ".join(cell(by[a, config]) if (a, config) in by else ""
                                           for a in archs) + " |")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ARCHS))
