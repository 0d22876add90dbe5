"""Prompts to token ids for ``generate``: chat templates, context-length checks, special tokens."""

from __future__ import annotations

from dataclasses import dataclass

from adapterctl.core.generate.prompts import PromptSpec
from adapterctl.errors import InvalidAdapterError, NotFoundError, UsageError


@dataclass(frozen=True)
class TokenPlan:
    """A prompt's ids and how many tokens it may generate (its own limit, capped by the context)."""

    spec: PromptSpec
    ids: list[int]
    max_new_tokens: int


def encode_prompts(
    model, tokenizer, specs: list[PromptSpec], max_new_tokens: int, chat: bool, system: str | None
) -> tuple[list[TokenPlan], list[str]]:
    """Token ids per prompt, plus warnings (a generation limit lowered to fit the context).

    A prompt that fills the model's context on its own is refused naming its id and lengths."""
    return plan_tokens(
        tokenizer,
        specs,
        max_new_tokens,
        chat,
        system,
        context_length(model) if tokenizer is not None else None,
    )


def plan_tokens(
    tokenizer,
    specs: list[PromptSpec],
    max_new_tokens: int,
    chat: bool,
    system: str | None,
    context: int | None,
) -> tuple[list[TokenPlan], list[str]]:
    """:func:`encode_prompts` for any engine: the tokenizer and the context length as given (vLLM's
    tokenizer and ``max_model_len`` for ``--engine vllm``)."""
    if tokenizer is None:
        raise NotFoundError(
            "the base model has no tokenizer",
            hint="Copy tokenizer.json / tokenizer_config.json into the model folder.",
        )
    if chat:
        check_chat_template(tokenizer)
    plans, warnings = [], []
    for spec in specs:
        ids = encode_one(tokenizer, spec, chat, system)
        limit = spec.max_new_tokens or max_new_tokens
        if context is not None:
            if len(ids) >= context:
                raise UsageError(
                    f"prompt {spec.id!r} is {len(ids)} tokens but the model's context is {context} "
                    "tokens, which leaves no room to generate",
                    hint="Shorten the prompt (or use a model with a longer context).",
                )
            if len(ids) + limit > context:
                warnings.append(
                    f"prompt {spec.id!r}: max_new_tokens lowered from {limit} to "
                    f"{context - len(ids)} to fit the context of {context} tokens"
                )
                limit = context - len(ids)
        plans.append(TokenPlan(spec, ids, limit))
    return plans, warnings


def encode_one(tokenizer, spec: PromptSpec, chat: bool, system: str | None) -> list[int]:
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": spec.prompt}
        ]
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # jinja errors: a template that refuses a system turn, etc.
            raise InvalidAdapterError(
                f"prompt {spec.id!r}: the chat template failed: {err}",
                hint="Leave out --system if the template has no system role.",
            ) from err
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # the template holds BOS
    else:
        ids = tokenizer(spec.prompt)["input_ids"]
    if not ids:
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise UsageError(f"prompt {spec.id!r} is empty", hint="Give a non-empty prompt.")
        ids = [bos]
    return list(ids)


def check_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            "--chat: the tokenizer has no chat template",
            hint="Use a chat/instruct model (its tokenizer_config.json or "
            "chat_template.jinja holds one), or drop --chat and --system.",
        )


def context_length(model) -> int | None:
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def special_ids(model, tokenizer) -> tuple[set[int], int]:
    """(end-of-sequence ids, padding id). EOS ids come from the generation config (which may list
    several, as Llama 3 does) and the tokenizer; padding falls back to EOS, then 0: padded
    positions are masked out, so only the id's validity matters."""
    eos: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            eos.add(source)
        elif isinstance(source, (list, tuple)):
            eos.update(int(x) for x in source)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = min(eos) if eos else 0
    return eos, pad
