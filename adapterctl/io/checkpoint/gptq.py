"""GPTQ checkpoints (``quantization_config.quant_method == "gptq"``) read as floats, tensor by
tensor: each quantized Linear's ``qweight``/``qzeros``/``scales``/``g_idx`` becomes its dense
``<module>.weight`` (out, in), spec 6.4.

The rule (gptqmodel 7.7 ``nn_modules/qlinear/__init__.py`` ``PackableQuantLinear.dequantize_weight``
and ``pack_original``; transformers loads GPTQ through gptqmodel), for ``bits`` in 2, 4, 8 and
int32 words, ``pf = 32 // bits`` codes per word, low bits first:

- ``qweight`` int32 ``(in / pf, out)``: input row ``r * pf + j`` of column ``c`` is
  ``(qweight[r, c] >> bits * j) & maxq``;
- ``qzeros`` int32 ``(groups, out / pf)``: the zero of group ``g``, column ``c * pf + j``, likewise;
- ``scales`` ``(groups, out)``; ``g_idx`` int32 ``(in,)``: the group of each input row (``desc_act``
  checkpoints permute it; absent, ``i // group_size``);
- ``W[:, i] = scales[g_idx[i]] * (q[i] - zeros[g_idx[i]])``, transposed to the Linear's (out, in).

Checkpoint format v1 (``checkpoint_format``/``format`` ``"gptq"``, AutoGPTQ's) stored every zero
minus one; gptqmodel adds ``0x11111111`` (4-bit; 2-bit ``0x55555555``, 8-bit ``0x01010101``) to each
packed int32 word on load (``convert_gptq_v1_to_v2_format_module``), as done here. v2
(``"gptq_v2"``) stores the zeros themselves. Symmetric and asymmetric checkpoints differ only in
their zeros. The values are returned in float32: ``scale * (q - z)`` is exact there, and the
caller rounds once (gptqmodel's own result is that product rounded to the scales' float16).
"""

from __future__ import annotations

import torch

from adapterctl.errors import InvalidAdapterError, UnsupportedError
from adapterctl.io.checkpoint.stored import Grouping, StoredTensor

SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx")
#: what gptqmodel adds to each packed v1 qzeros word: +1 in every field
V1_ZERO_OFFSET = {2: 0x55555555, 4: 0x11111111, 8: 0x01010101}
HINT = "The GPTQ checkpoint is incomplete or corrupt; download it again."


def unpack(q: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """The ``bits``-bit codes of int32 words along ``dim`` (0: rows, 1: columns), low bits first."""
    pf = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    if dim == 0:
        codes = (q.unsqueeze(1) >> shifts.view(1, -1, 1)) & ((1 << bits) - 1)  # (R, pf, C)
        return codes.reshape(q.shape[0] * pf, q.shape[1])
    codes = (q.unsqueeze(2) >> shifts.view(1, 1, -1)) & ((1 << bits) - 1)  # (R, C, pf)
    return codes.reshape(q.shape[0], q.shape[1] * pf)


def scheme(qconf: dict, where: str) -> tuple:
    """(bits, group_size, v1) of a GPTQ quantization_config; unsupported layouts refused."""
    bits = qconf.get("bits", 4)
    fmt = str(qconf.get("checkpoint_format") or qconf.get("format") or "gptq").lower()
    if bits not in V1_ZERO_OFFSET:
        raise UnsupportedError(
            f"{where}: GPTQ with bits={bits} is not read (adapterctl reads 2, 4 and 8-bit GPTQ)",
            hint="Use an unquantized base, or a 4-bit GPTQ checkpoint.",
        )
    if fmt not in ("gptq", "gptq_v2"):
        raise UnsupportedError(
            f"{where}: GPTQ checkpoint format {fmt!r} is not read (adapterctl reads gptq (v1) and gptq_v2)",
            hint="Use an unquantized base, or re-save the checkpoint in the gptq or gptq_v2 format.",
        )
    if qconf.get("pack_dtype", "int32") not in ("int32", "torch.int32"):
        raise UnsupportedError(
            f"{where}: GPTQ pack_dtype {qconf.get('pack_dtype')!r} is not read (int32 only)"
        )
    return (("bits", bits), ("group_size", int(qconf.get("group_size", 128))), ("v1", fmt == "gptq"))


def group_gptq(stored: list[StoredTensor], qconf: dict, where: str, float_dtype: torch.dtype):
    """Each ``<module>.qweight`` and its side tensors become one logical ``<module>.weight``."""
    sch = scheme(qconf, where)
    bits = dict(sch)["bits"]
    grouping = Grouping(stored)
    for s in stored:
        if not s.key.endswith(".qweight"):
            continue
        module = s.key[: -len(".qweight")]
        parts = [grouping.by_key.get(module + suffix) for suffix in SUFFIXES]
        qweight, qzeros, scales, g_idx = parts
        if qweight is None or qzeros is None or scales is None:
            missing = [module + x for x, p in zip(SUFFIXES[:3], parts[:3]) if p is None]
            raise InvalidAdapterError(f"{s.file}: {s.key} has no {', '.join(missing)}", hint=HINT)
        if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32 or len(qweight.shape) != 2:
            raise InvalidAdapterError(
                f"{s.file}: {s.key} ({qweight.dtype}) and {qzeros.key} ({qzeros.dtype}) must be 2-D int32",
                hint=HINT,
            )
        out_f, in_f = scales.shape[1], qweight.shape[0] * 32 // bits
        if qweight.shape[1] != out_f or (g_idx is not None and tuple(g_idx.shape) != (in_f,)):
            raise InvalidAdapterError(
                f"{s.file}: {s.key} {list(qweight.shape)}, {scales.key} {list(scales.shape)}"
                + (f", {g_idx.key} {list(g_idx.shape)}" if g_idx is not None else "")
                + f" disagree for {bits}-bit GPTQ",
                hint=HINT,
            )
        kept = tuple(p for p in parts if p is not None)
        grouping.logical_weight(
            s, kept, quant="gptq", dtype=float_dtype, key=module + ".weight", shape=(out_f, in_f), scheme=sch
        )
    return grouping.tensors()


def dequantize_gptq(stored: StoredTensor, read) -> torch.Tensor:
    """The dense (out, in) weight in float32 (see the module docstring for the rule)."""
    sch = dict(stored.scheme)
    bits, group_size = sch["bits"], sch["group_size"]
    parts = {p.key.rsplit(".", 1)[1]: p for p in stored.parts}
    qweight, qzeros = read(parts["qweight"]), read(parts["qzeros"]).clone()
    scales = read(parts["scales"]).to(torch.float32)
    out_f, in_f = stored.shape
    if sch["v1"]:
        qzeros += V1_ZERO_OFFSET[bits]  # int32 words wrap, as gptqmodel's in-place add does
    codes = unpack(qweight, bits, 0)[:in_f]
    zeros = unpack(qzeros, bits, 1)[:, :out_f]
    if "g_idx" in parts:
        g_idx = read(parts["g_idx"]).long()
    else:
        g_idx = torch.arange(in_f) // (group_size if group_size > 0 else in_f)
    if int(g_idx.min()) < 0 or int(g_idx.max()) >= scales.shape[0]:
        raise InvalidAdapterError(
            f"{stored.file}: {stored.key}: g_idx names groups outside 0..{scales.shape[0] - 1}", hint=HINT
        )
    w = scales[g_idx] * (codes - zeros[g_idx]).to(torch.float32)  # (in, out), exact in float32
    return w.T.contiguous()
