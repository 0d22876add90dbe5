"""Facts about a base model, read without torch: its architecture, whether its output layer is tied
to the input embedding (decided as transformers decides), its vocabulary and layers, and its
parameter names and shapes (safetensors headers). One answer for check, convert, merge, attach;
and which base a command uses when it is given none (:func:`default_base`, :func:`local_base`).

"Is lm_head tied" has two questions behind it, and each has one property here:

- :attr:`BaseInfo.tie_word_embeddings`: does transformers tie the two when it builds the model?
  transformers 5 reads ``config.tie_word_embeddings`` on the model's own config
  (``PreTrainedModel.get_expanded_tied_weights_keys``), and a config.json that omits the key gets
  the model type's default (``LlamaConfig``: False, ``GemmaConfig``/``GPT2Config``: True): the
  :data:`TIED_BY_DEFAULT` table. Some vision-language configs forward a ``text_config`` that says
  True (checkpoints saved before 5.0 kept it there): :data:`TEXT_TIE_FORWARDED`.
  ``tests/core/adapter/test_base_info.py`` holds both tables against the installed transformers.
- :attr:`BaseInfo.output_is_embedding`: does the checkpoint store no output layer of its own, so
  that llama.cpp's converter and mlx-lm read the output from the embedding table? From the
  headers when they are known, else from the config.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from adapterctl.core.adapter.config import read_adapter_config
from adapterctl.core.adapter.prefixes import KeyMapping, checkpoint_spelling, detect_layout
from adapterctl.errors import NotFoundError, UsageError
from adapterctl.io.folders.model_dir import find_checkpoint_key
from adapterctl.io.formats.classify import MODEL, classify_folder

#: Parameter names PEFT saves for embeddings (spec 4.3), and the output layers that may share them.
EMBED_NAMES = ("embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings")
LM_HEAD_NAMES = ("lm_head", "embed_out", "output")

#: model types whose transformers config, built with no arguments, ties the embeddings (transformers
#: 5.x ``CONFIG_MAPPING``; every other type, and a type transformers does not know, defaults to False)
TIED_BY_DEFAULT = frozenset(
    """
param2moe
albert aya_vision bart bert bert-generation big_bird bigbird_pegasus biogpt blenderbot
blenderbot-small blip blip_text_model bloom camembert canary cohere cohere2 cohere2_moe
cohere2_vision cohere_compass_text convbert cpmant csm ctrl d_fine dab-detr data2vec-text deberta
deberta-v2 deepseek_vl deepseek_vl_hybrid deformable_detr deimv2 diffusion_gemma
diffusion_gemma_text distilbert electra ernie ernie4_5 ernie4_5_moe ernie4_5_vl_moe
ernie4_5_vl_moe_text esm falcon falcon_mamba flaubert flava florence2 fnet fun_asr_nano funnel gemma
gemma2 gemma3 gemma3_text gemma3n gemma3n_text gemma4 gemma4_assistant gemma4_text gemma4_unified
gemma4_unified_assistant gemma4_unified_text glmasr got_ocr2 gpt-sw3 gpt2 gpt_bigcode gpt_neo
gpt_neox_japanese granite_docling granite_docling_text granite_speech granite_speech5_ctc
granite_speech_plus granite_swa grounding-dino gte hunyuan_vl hunyuan_vl_text hyperclovax_vision_v2
ibert internvl janus jetmoe jina_embeddings_v3 kimi_k25 kosmos-2 kosmos-2.5 kosmos_2_5_text_model
kosmos_2_text_model lara_mini layoutlm led lfm2 lfm2_moe lfm2_vl lfm3 lfm3_vl lighton_ocr longformer
longt5 luke lxmert m2m_100 mamba marian mbart megatron-bert mimi mimi_decoder mimi_encoder minicpm3
minicpm_ocr mistral3 mm-grounding-dino mobilebert modernbert modernbert-decoder moonshine
moss_transcribe_diarize mpnet mpt mra mt5 mvp neomme nllb-moe nomic_bert nystromformer openai-gpt
opt ovis2 paddleocr_vl paddleocr_vl_text paligemma pe_audio_video pegasus pegasus_x plbart pop2piano
pp_chart2table pp_doclayout_v3 pp_doclayout_v4 prophetnet qwen2_5_omni_text qwen3_asr
qwen3_vl_moe_text recurrent_gemma roberta roberta-prelayernorm roc_bert roformer rt_detr_v2 sam
sam_hq seamless_m4t seamless_m4t_v2 shieldgemma2 smollm3 speech_to_text speecht5 squeezebert
starcoder2 switch_transformers t5 t5_gemma_module t5gemma t5gemma2 t5gemma2_decoder t5gemma2_encoder
t5gemma2_text tapas trocr udop umt5 vaultgemma vilt visual_bert voxtral_realtime whisper xglm xlm
xlm-roberta xlm-roberta-xl xlnet xmod yoso youtu zamba zamba2 zaya
""".split()
)
#: composite (vision-language) model types whose config takes ``tie_word_embeddings=True`` from
#: its ``text_config`` when the outer value is False (``LlavaConfig.__post_init__`` and others)
TEXT_TIE_FORWARDED = frozenset(
    """
fast_vlm glm4v glm4v_moe glm_ocr hunyuan_vl llava llava_next_video llava_onevision minimax_m3_vl
paddleocr_vl qwen2_5_vl qwen2_vl shieldgemma2 vibevoice video_llama_3
""".split()
)


_IN_LAYER = re.compile(r"\.\d+\.")  # a decoder layer's own "output" is not the model's output layer


def module_name(path: str) -> str:
    """The last path component: ``q_proj`` for ``model.layers.0.self_attn.q_proj``."""
    return path.rsplit(".", 1)[-1]


def is_embedding_name(path: str) -> bool:
    return module_name(path) in EMBED_NAMES


def is_lm_head_name(path: str) -> bool:
    return module_name(path) in LM_HEAD_NAMES


def _model_type(doc: dict) -> str | None:
    mt = doc.get("model_type")
    return mt if isinstance(mt, str) else None


def _own_tie(doc: dict) -> bool:
    v = doc.get("tie_word_embeddings")
    return v if isinstance(v, bool) else _model_type(doc) in TIED_BY_DEFAULT


def tied_embeddings(config: dict) -> bool:
    """Whether transformers ties the output layer to the input embedding for a model built from
    ``config`` (a config.json as a dict): the saved value, else the model type's default; a
    forwarding vision-language config also takes its ``text_config``'s True."""
    if _own_tie(config):
        return True
    text = config.get("text_config")
    if _model_type(config) in TEXT_TIE_FORWARDED and isinstance(text, dict):
        return _own_tie(text)
    return False


@dataclass(frozen=True)
class BaseInfo:
    """What is known about the base: always its config.json; its parameters (name -> shape)
    when its weights are safetensors (headers only), else None."""

    source: str
    config: dict
    params: dict[str, tuple[int, ...]] | None = None

    @property
    def text_config(self) -> dict:
        """Vision-language wrappers keep the language model's sizes in ``text_config``."""
        tc = self.config.get("text_config")
        return tc if isinstance(tc, dict) else self.config

    @property
    def model_type(self) -> str | None:
        return _model_type(self.config)

    @property
    def architecture(self) -> str | None:
        """``architectures[0]`` of config.json (the transformers class), else the model type."""
        archs = self.config.get("architectures")
        if isinstance(archs, list) and archs and isinstance(archs[0], str):
            return archs[0]
        return self.model_type

    @property
    def is_vlm(self) -> bool:
        """A vision-language config: the language model's sizes sit in ``text_config``."""
        return isinstance(self.config.get("text_config"), dict)

    @property
    def layout(self) -> str | None:
        """Where the checkpoint keeps the language model (prefixes.py: ``text``, ``vlm``,
        ``vlm-legacy``, ``text+visual``); None without headers or for another layout (GPT-2)."""
        found = detect_layout(self.params) if self.params else None
        return found.name if found else None

    @property
    def tie_word_embeddings(self) -> bool:
        """transformers ties lm_head to the input embedding (:func:`tied_embeddings`)."""
        return tied_embeddings(self.config)

    @property
    def stores_lm_head(self) -> bool | None:
        """The checkpoint holds an output layer weight of its own; None without headers."""
        if self.params is None:
            return None
        return any(
            k.endswith(".weight") and is_lm_head_name(k[:-7]) and not _IN_LAYER.search(k) for k in self.params
        )

    @property
    def output_is_embedding(self) -> bool:
        """The output layer reads the embedding table (llama.cpp's converter and mlx-lm): no
        output weight in the checkpoint, or, without headers, a tied config."""
        stored = self.stores_lm_head
        return self.tie_word_embeddings if stored is None else not stored

    @property
    def vocab_size(self) -> int | None:
        v = self.text_config.get("vocab_size", self.config.get("vocab_size"))
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def text_int(self, *keys: str) -> int | None:
        """The first integer of ``keys`` in the language model's config."""
        for key in keys:
            v = self.text_config.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return None

    @property
    def num_layers(self) -> int | None:
        return self.text_int("num_hidden_layers", "n_layer", "num_layers")

    def param_shape(self, param: str) -> tuple[int, ...] | None:
        if self.params is None:
            return None
        key = find_checkpoint_key(param, self.params)
        if key is None and self._spelling is not None and (spelled := self._spelling.map(param)):
            key = find_checkpoint_key(spelled, self.params)  # a VLM saved in its legacy layout
        if (
            key is None
            and param.endswith(".weight")
            and is_lm_head_name(param[:-7])
            and self.tie_word_embeddings
        ):
            # a tied lm_head is not saved: it is the input embedding's table
            key = next((k for k in self.params if k.endswith(".weight") and is_embedding_name(k[:-7])), None)
        return tuple(self.params[key]) if key else None

    @cached_property
    def _spelling(self) -> KeyMapping | None:
        return checkpoint_spelling(self.params) if self.params else None

    @property
    def module_paths(self) -> set[str] | None:
        """Paths of the modules that own a ``.weight`` (what LoRA can sit on)."""
        if self.params is None:
            return None
        return {k[: -len(".weight")] for k in self.params if k.endswith(".weight")}


def read_base_info(folder: str | Path, source: str | None = None) -> BaseInfo:
    """The base's config.json and, for safetensors checkpoints, its parameter shapes."""
    from adapterctl.io.folders.model_dir import locate_model_files, read_model_shapes

    files = locate_model_files(folder, source)
    params = read_model_shapes(files) if files.weights_format == "safetensors" else None
    return BaseInfo(source or str(folder), dict(files.config), params)


def default_base(adapter_dirs: Sequence[str | Path], refs: Sequence[str]) -> str:
    """The base of a command given none: the first adapter's ``base_model_name_or_path``, as
    transformers and PEFT load an adapter folder (a Hub id or a local folder, as written)."""
    if not refs:
        raise UsageError(
            "no base model given",
            hint="Pass BASE, or an adapter whose adapter_config.json names its base_model_name_or_path.",
        )
    name = read_adapter_config(adapter_dirs[0]).base_model_name_or_path
    if not name:
        raise NotFoundError(
            f"{refs[0]}: no base model given, and adapter_config.json has no base_model_name_or_path",
            hint="Pass the base model folder first.",
        )
    return name


def local_base(name: str | None) -> Path | None:
    """The base an adapter names (``base_model_name_or_path``) when it is a local model folder:
    what check and convert use without downloading anything."""
    return Path(name) if name and classify_folder(name) == MODEL else None
