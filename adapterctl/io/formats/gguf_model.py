"""Whole-model GGUF files (what llama.cpp and Ollama run), written tensor by tensor with the ``gguf``
package: the tokenizer fields llama.cpp needs, and a writer that streams tensor data in order.

The tokenizer fields follow llama.cpp's converter for byte-level BPE tokenizers
(``conversion/base.py`` ``TextModel.get_vocab_base`` and ``_set_vocab_gpt2``, llama.cpp as vendored
by llama-cpp-python 0.3.36): ``tokenizer.ggml.model = "gpt2"``, one token per id up to the
config's ``vocab_size`` (ids the tokenizer lacks become unused ``[PAD<id>]`` tokens), added tokens
typed CONTROL (special) or USER_DEFINED, the merges, special ids and chat template read by the
``gguf`` package's own ``SpecialVocab``. llama.cpp picks its pre-tokenizer regex by name
(``tokenizer.ggml.pre``; src/llama-vocab.cpp); the name is recognised here from the
tokenizer.json pre-tokenizer itself, and an unrecognised one is refused: a wrong name gives a model
that loads and tokenizes differently from the original.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from adapterctl.errors import UnsupportedError
from adapterctl.io.formats.gguf_adapter import import_gguf

#: tokenizer.json ``Split`` regexes (before ``ByteLevel(use_regex=false)``) -> llama.cpp's
#: ``tokenizer.ggml.pre`` whose regex is the same (src/llama-vocab.cpp, ``llm_tokenizer_bpe``)
SPLIT_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}
#: llama.cpp's token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer as llama.cpp's ``gpt2`` (byte-level BPE) model holds it."""

    pre: str
    tokens: list[str]
    types: list[int]


def _refuse(root: Path, why: str) -> UnsupportedError:
    return UnsupportedError(
        f"{root}: its tokenizer cannot be written to a GGUF model: {why}",
        hint="merge --to gguf writes byte-level BPE tokenizers (tokenizer.json: GPT-2, Llama 3, "
        "Qwen 2/3 pre-tokenizers). Merge to safetensors instead (no --to) and convert with "
        "llama.cpp's convert_hf_to_gguf.py.",
    )


def _pre_name(root: Path, pre: dict | None) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizer.json ``pre_tokenizer``."""
    if not isinstance(pre, dict):
        raise _refuse(root, "tokenizer.json has no pre_tokenizer")
    steps = (pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]) or []
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # ByteLevel's own regex is GPT-2's
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in SPLIT_PRE:
            return SPLIT_PRE[pattern]
        raise _refuse(root, f"its pre-tokenizer regex {pattern!r} is not one llama.cpp is known to share")
    raise _refuse(root, f"pre-tokenizer {'+'.join(map(str, kinds))} is not a byte-level BPE one")


def read_bpe_vocab(root: str | Path, vocab_size: int) -> GGUFVocab:
    """The vocabulary of ``root/tokenizer.json`` as llama.cpp stores it (``vocab_size`` tokens)."""
    root = Path(root)
    path = root / "tokenizer.json"
    if not path.is_file():
        raise _refuse(root, "no tokenizer.json (SentencePiece tokenizer.model files are not written)")
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _refuse(root, f"tokenizer.json cannot be read ({err})") from err
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise _refuse(root, f"tokenizer.json model type {model.get('type')!r} is not BPE")
    if model.get("byte_fallback"):
        raise _refuse(root, "a byte-fallback BPE (SentencePiece-style) is not byte-level BPE")
    pre = _pre_name(root, tok.get("pre_tokenizer"))
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in tok.get("added_tokens") or []}
    for i, a in added.items():
        by_id[i] = a["content"]
    if by_id and max(by_id) >= vocab_size:
        raise _refuse(root, f"token id {max(by_id)} is beyond config.json's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        text = by_id[i]
        tokens.append(text)
        if i in added:
            types.append(CONTROL if added[i].get("special") or _looks_special(text) else USER_DEFINED)
        else:
            types.append(NORMAL)
    return GGUFVocab(pre, tokens, types)


def _looks_special(text: str) -> bool:
    """Added tokens llama.cpp's converter types CONTROL though not marked special
    (``does_token_look_special``)."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def add_vocab(writer, root: str | Path, vocab: GGUFVocab) -> None:
    """Write the tokenizer fields: model, pre-tokenizer, tokens, types, then merges, special ids,
    add_bos/eos and the chat template as the ``gguf`` package's SpecialVocab reads them."""
    gguf = import_gguf()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    gguf.SpecialVocab(Path(root), load_merges=True).add_to_gguf(writer, quiet=True)


class GGUFModelWriter:
    """A GGUF model file written in one pass: metadata and every tensor's name, shape and type
    first (``add_*`` then :meth:`declare`), then the tensors' bytes in the same order
    (:meth:`write`), one at a time: memory holds one tensor, never the model."""

    def __init__(self, path: str | Path, arch: str):
        gguf = import_gguf()
        self.gguf = gguf
        self.writer = gguf.GGUFWriter(str(path), arch)
        self.writer.add_type(gguf.GGUFType.MODEL)
        self._open = False

    def declare(self, name: str, shape: tuple[int, ...], qtype_name: str) -> None:
        """A tensor of float shape ``shape`` (numpy order) that will be stored as ``qtype_name``."""
        gguf = self.gguf
        qtype = gguf.GGMLQuantizationType[qtype_name]
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = 1
        for d in shape[:-1]:
            nbytes *= d
        nbytes *= shape[-1] // block * type_size
        dtype = {"F32": "float32", "F16": "float16"}.get(qtype_name, "uint8")
        import numpy as np

        byte_shape = tuple(shape) if dtype != "uint8" else gguf.quant_shape_to_byte_shape(shape, qtype)
        self.writer.add_tensor_info(name, byte_shape, np.dtype(dtype), nbytes, raw_dtype=qtype)

    def start(self) -> None:
        self.writer.write_header_to_file()
        self.writer.write_kv_data_to_file()
        self.writer.write_ti_data_to_file()
        self._open = True

    def write(self, data) -> None:
        """The next declared tensor's bytes (as :func:`encode` returns them)."""
        self.writer.write_tensor_data(data)

    def close(self) -> None:
        self.writer.close()


def qtype_of(array_shape: tuple[int, ...], outtype: str, force_f32: bool) -> str:
    """The ggml type a tensor is stored as, as llama.cpp's converter decides (``prepare_tensors``):
    1-D tensors and norms in F32; Q8_0 falls back to F16 where rows are not whole blocks of 32."""
    if force_f32 or len(array_shape) <= 1:
        return "F32"
    name = outtype.upper()
    if name == "Q8_0" and array_shape[-1] % 32:
        return "F16"
    return name


def encode(array, qtype_name: str):
    """``array`` (float32 numpy, or float16 for F16) as the bytes of ``qtype_name`` (numpy quantizers
    of ``gguf``)."""
    import numpy as np

    gguf = import_gguf()
    if qtype_name == "F16" and array.dtype == np.float16:  # rounded already
        return np.ascontiguousarray(array)
    data = np.ascontiguousarray(array, dtype=np.float32)
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType[qtype_name])
