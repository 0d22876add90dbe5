"""AWQ checkpoints (``quantization_config.quant_method == "awq"``, GEMM packing: AutoAWQ's default
``version: gemm``) read as floats, tensor by tensor: each quantized Linear's ``qweight``/
``qzeros``/``scales`` becomes its dense ``<module>.weight`` (out, in), spec 6.4.

The rule (AutoAWQ 0.2.9 ``awq/utils/packing_utils.py`` ``dequantize_gemm``, the inverse of
``awq/modules/linear/gemm.py`` ``WQLinear_GEMM.from_linear``), 4-bit codes, eight per int32 word
along the output dimension in the interleaved order ``[0, 2, 4, 6, 1, 3, 5, 7]`` (AWQ_ORDER: field
``i`` of word ``c`` holds column ``8 c + AWQ_ORDER[i]``):

- ``qweight`` int32 ``(in, out / 8)``, ``qzeros`` int32 ``(groups, out / 8)``, ``scales`` ``(groups, out)``;
- ``W[i, o] = (q[i, o] - z[i // group_size, o]) * scales[i // group_size, o]``, transposed to (out, in).

No off-by-one on the zeros (unlike GPTQ v1). Values in float32, where the product is exact; the
caller rounds once (AutoAWQ's own result is that product rounded to float16).
"""

from __future__ import annotations

import torch

from adapterctl.errors import InvalidAdapterError, UnsupportedError
from adapterctl.io.checkpoint.gptq import unpack
from adapterctl.io.checkpoint.stored import Grouping, StoredTensor

#: the column each 4-bit field of a word holds (AutoAWQ's AWQ_ORDER), and its inverse
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
SUFFIXES = (".qweight", ".qzeros", ".scales")
HINT = "The AWQ checkpoint is incomplete or corrupt; download it again."


def scheme(qconf: dict, where: str) -> tuple:
    """(bits, group_size) of an AWQ quantization_config; other packings refused."""
    version = str(qconf.get("version") or qconf.get("format") or "gemm").lower()
    bits = qconf.get("bits", qconf.get("w_bit", 4))
    if version != "gemm" or bits != 4 or qconf.get("zero_point", True) is False:
        raise UnsupportedError(
            f"{where}: AWQ version={version!r}, bits={bits}, zero_point={qconf.get('zero_point', True)} "
            "is not read (adapterctl reads AutoAWQ's 4-bit GEMM packing with zero points)",
            hint="Use an unquantized base, or an AWQ checkpoint saved with version 'gemm'.",
        )
    return (("bits", 4), ("group_size", int(qconf.get("group_size", qconf.get("q_group_size", 128)))))


def group_awq(stored: list[StoredTensor], qconf: dict, where: str, float_dtype: torch.dtype):
    """Each ``<module>.qweight`` and its side tensors become one logical ``<module>.weight``."""
    sch = scheme(qconf, where)
    grouping = Grouping(stored)
    for s in stored:
        if not s.key.endswith(".qweight"):
            continue
        module = s.key[: -len(".qweight")]
        found = [grouping.by_key.get(module + suffix) for suffix in SUFFIXES]
        qweight, qzeros, scales = found
        if qweight is None or qzeros is None or scales is None:
            missing = [module + x for x, p in zip(SUFFIXES, found) if p is None]
            raise InvalidAdapterError(f"{s.file}: {s.key} has no {', '.join(missing)}", hint=HINT)
        parts = (qweight, qzeros, scales)
        in_f, out_f = qweight.shape[0], scales.shape[1] if len(scales.shape) == 2 else -1
        if (
            qweight.dtype != torch.int32
            or qzeros.dtype != torch.int32
            or len(qweight.shape) != 2
            or qweight.shape[1] * 8 != out_f
            or tuple(qzeros.shape) != (scales.shape[0], qweight.shape[1])
        ):
            raise InvalidAdapterError(
                f"{s.file}: {s.key} {qweight.dtype} {list(qweight.shape)}, {qzeros.key} "
                f"{list(qzeros.shape)}, {scales.key} {list(scales.shape)} are not AWQ GEMM's "
                "int32 (in, out/8), int32 (groups, out/8), (groups, out)",
                hint=HINT,
            )
        grouping.logical_weight(
            s, parts, quant="awq", dtype=float_dtype, key=module + ".weight", shape=(out_f, in_f), scheme=sch
        )
    return grouping.tensors()


def dequantize_awq(stored: StoredTensor, read) -> torch.Tensor:
    """The dense (out, in) weight in float32 (see the module docstring for the rule)."""
    group_size = dict(stored.scheme)["group_size"]
    qweight, qzeros, scales = (read(p) for p in stored.parts)
    order = (torch.arange(qweight.shape[1] * 8).view(-1, 8)[:, list(AWQ_REVERSE_ORDER)]).reshape(-1)
    codes = unpack(qweight, 4, 1)[:, order]
    zeros = unpack(qzeros, 4, 1)[:, order]
    in_f = qweight.shape[0]
    g = torch.arange(in_f) // (group_size if group_size > 0 else in_f)
    if int(g.max()) >= scales.shape[0]:
        raise InvalidAdapterError(
            f"{stored.file}: {stored.key}: {in_f} rows need {int(g.max()) + 1} groups of {group_size}, "
            f"{stored.parts[2].key} has {scales.shape[0]}",
            hint=HINT,
        )
    w = (codes - zeros[g]).to(torch.float32) * scales.to(torch.float32)[g]  # (in, out), exact
    return w.T.contiguous()
