"""generate's decode loop against PEFT (the oracle): greedy tokens and log-probabilities over the
engine's adapter matrix, folded and unmerged; batched == unbatched; a mixed-adapter batch == each
adapter alone (and == PEFT's ``adapter_names``); seeds; stop strings; Ctrl-C."""

from __future__ import annotations

import pytest
import torch

from adapterctl.core.runtime import attach as engine
from adapterctl.core.runtime.session import AttachedAdapter
from adapterctl.core.generate.decoding import DecodingConfig
from adapterctl.core.generate.loop import compare_completions, generate_completions
from adapterctl.core.generate.prompts import BASE_KEY, PromptSpec
from adapterctl.core.generate.routing import EngineRouter
from adapterctl.errors import NotFoundError, UsageError
from tests.core.runtime.test_attach import CASES
from tests.core.runtime.test_placement import bnb_llama  # noqa: F401 (a fixture)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine they only add waits."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


PROMPTS = ["the quick brown fox", "a small", "merge the adapter into the base and save the"]
N = 6


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(path))


def attach(model, folders: dict, default: dict | None = None, fold: bool = True) -> EngineRouter:
    adapters = []
    for name, folder in folders.items():
        engine.attach_adapter(model, str(folder), name=name)
        adapters.append(AttachedAdapter(name, str(folder), folder, 1.0))
    return EngineRouter(model, adapters, default if default is not None else {n: 1.0 for n in folders},
                        can_fold=fold)


def run(model, tok, prompts=PROMPTS, keys=None, router=None, batch_size=8, **cfg):
    keys = keys or [None] * len(prompts)
    specs = [PromptSpec(str(i), p, k) for i, (p, k) in enumerate(zip(prompts, keys))]
    cfg.setdefault("max_new_tokens", N)
    cfg.setdefault("logprobs", True)
    return generate_completions(model, tok, specs, DecodingConfig(**cfg), router=router,
                                batch_size=batch_size)


def peft_greedy(pm, tok, prompt, n=N, **kw):
    """PEFT's own generate, one prompt at a time (no padding): tokens and raw-logit logprobs."""
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=n, output_logits=True, return_dict_in_generate=True,
                          pad_token_id=tok.pad_token_id, **kw)
    new = out.sequences[0, ids.shape[1]:].tolist()
    lps = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, new)]
    return new, lps


def peft_model(base_path, folders: dict):
    from peft import PeftModel

    model, tok = load(base_path)
    names = list(folders)
    pm = PeftModel.from_pretrained(model, str(folders[names[0]]), adapter_name=names[0]).eval()
    for name in names[1:]:
        pm.load_adapter(str(folders[name]), adapter_name=name)
    return pm, tok


def assert_same(ours, ref_tokens, ref_logprobs, atol=1e-4):
    assert list(ours.completion_token_ids) == ref_tokens
    assert max(abs(a - b) for a, b in zip(ours.logprobs, ref_logprobs)) <= atol


UNMERGED = ("llama-all-linear-rslora", "llama-dora", "gpt2-conv1d", "qwen2-lora-bias",
            "llama-tokens", "tied-lora-lm-head", "llama-dropout")  # a representative subset


@pytest.mark.parametrize("case, fold", [(c, True) for c in CASES] + [(c, False) for c in UNMERGED],
                         ids=[f"{c}-folded" for c in CASES] + [f"{c}-unmerged" for c in UNMERGED])
def test_greedy_tokens_and_logprobs_match_peft(case, fold, tiny_models, peft_adapter):
    base, kwargs = CASES[case]
    folder = peft_adapter(base, **kwargs)
    pm, tok = peft_model(tiny_models[base], {"a": folder})
    model, _ = load(tiny_models[base])
    router = attach(model, {"a": folder}, fold=fold)
    res = run(model, tok, router=router, batch_size=3)  # batched (left padding) vs PEFT unbatched
    # lora_bias on o_proj, which has no bias: cannot be folded, so the run stays unmerged
    foldable = fold and case != "qwen2-lora-bias"
    assert res.mode == ("folded" if foldable else "unmerged")
    for prompt, c in zip(PROMPTS, res.completions):
        assert_same(c, *peft_greedy(pm, tok, prompt))


@pytest.mark.parametrize("ratio, mode", [(0.0, "folded"), (1e9, "unmerged")])
def test_auto_fold_decides_from_the_run_length(ratio, mode, tiny_models, peft_adapter, monkeypatch):
    """generate folds only where the run's decode steps outweigh the fold (routing.fold_pays);
    both ways match PEFT."""
    from adapterctl.core.generate import routing

    folder = peft_adapter("llama", r=4, target_modules="all-linear")
    pm, tok = peft_model(tiny_models["llama"], {"a": folder})
    model, _ = load(tiny_models["llama"])
    router = attach(model, {"a": folder})
    router.auto_fold = True
    monkeypatch.setattr(routing, "FOLD_COST_RATIO", ratio)
    res = run(model, tok, router=router, batch_size=3)
    assert res.mode == mode
    for prompt, c in zip(PROMPTS, res.completions):
        assert_same(c, *peft_greedy(pm, tok, prompt))


def test_fold_pays_counts_steps_against_fold_work(tiny_models, peft_adapter):
    from adapterctl.core.generate.routing import FOLD_COST_RATIO, fold_pays

    model, _ = load(tiny_models["llama"])
    attach(model, {"a": peft_adapter("llama", r=4, target_modules="all-linear")})
    engine.set_active(model, {"a": 1.0})
    wrapped = [m for m in model.modules() if isinstance(m, engine.LoraWrapper)]
    work = sum(4 * m.base_layer.weight.numel() for m in wrapped)
    even = work * FOLD_COST_RATIO / len(wrapped)  # the break-even number of steps
    assert fold_pays(model, int(even) + 1) and not fold_pays(model, max(int(even) - 1, 0))
    assert fold_pays(model, None)


def test_fold_is_undone_after_the_run(tiny_models, peft_adapter):
    model, tok = load(tiny_models["llama"])
    router = attach(model, {"a": peft_adapter("llama", r=4, target_modules="all-linear")})
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, engine.LoraWrapper)}
    before = {n: m.base_layer.weight.clone() for n, m in wrapped.items()}
    assert run(model, tok, router=router).mode == "folded"
    for name, module in wrapped.items():
        assert not module.folded and torch.equal(module.base_layer.weight, before[name]), name


def test_lora_dropout_is_off_when_generating(tiny_models, peft_adapter):
    """Attached wrappers follow the eval-mode base: two unmerged runs are bit-identical."""
    model, tok = load(tiny_models["llama"])
    router = attach(model, {"a": peft_adapter("llama", r=4, target_modules="all-linear",
                                              lora_dropout=0.5)}, fold=False)
    assert not any(m.training for m in model.modules())
    a, b = run(model, tok, router=router), run(model, tok, router=router)
    assert [c.logprobs for c in a.completions] == [c.logprobs for c in b.completions]


@pytest.mark.parametrize("base", ["llama", "gpt2"])
def test_batched_equals_unbatched(base, tiny_models, peft_adapter):
    model, tok = load(tiny_models[base])
    prompts = PROMPTS + ["low", "the lazy dog jumps over the quick brown fox and"]
    one = run(model, tok, prompts, batch_size=1, max_new_tokens=10)
    many = run(model, tok, prompts, batch_size=5, max_new_tokens=10)
    for a, b in zip(one.completions, many.completions):
        assert a.completion_token_ids == b.completion_token_ids and a.completion == b.completion
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


MIXED = {  # stacked ranks (a0, a1: all layers; a1 some layers only) and per-row fallback (DoRA)
    "a0": dict(r=4, target_modules="all-linear"),
    "a1": dict(r=8, lora_alpha=4, target_modules=["q_proj", "up_proj", "lm_head"]),
    "a2": dict(r=4, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True),
}


def test_mixed_batch_equals_each_adapter_alone_and_peft(tiny_models, peft_adapter):
    folders = {name: peft_adapter("llama", seed=i, **kw) for i, (name, kw) in enumerate(MIXED.items())}
    model, tok = load(tiny_models["llama"])
    router = attach(model, folders, default={})
    tree = [(n, type(m)) for n, m in model.named_modules()]
    prompts = [PROMPTS[i % 3] for i in range(8)]
    keys = ["a0", "a1", BASE_KEY, "a2", "a1", "a0", BASE_KEY, "a2"]
    mixed = run(model, tok, prompts, keys, router=router)
    assert mixed.mode == "mixed"
    assert [(n, type(m)) for n, m in model.named_modules()] == tree  # swapped layers are back
    for key in set(keys):
        alone = run(model, tok, prompts, [key] * 8, router=router)
        assert alone.mode == ("base" if key == BASE_KEY else "folded")
        for m, a, k in zip(mixed.completions, alone.completions, keys):
            if k == key:
                assert m.adapter == (None if key == BASE_KEY else key)
                assert_same(m, list(a.completion_token_ids), list(a.logprobs))
    pm, _ = peft_model(tiny_models["llama"], {k: folders[k] for k in ("a0", "a1")})  # PEFT: no
    for prompt, c, k in zip(prompts, mixed.completions, keys):  # adapter_names= with DoRA
        if k != "a2":
            assert_same(c, *peft_greedy(pm, tok, prompt, adapter_names=[k]))


def test_mixed_batch_with_saved_modules_and_token_rows(tiny_models, peft_adapter):
    """Packed LoRA layers and the engine's per-row modules_to_save / token rows in one batch."""
    folders = {"m": peft_adapter("llama", **CASES["llama-modules-to-save"][1]),
               "t": peft_adapter("llama", **CASES["llama-tokens"][1])}
    model, tok = load(tiny_models["llama"])
    router = attach(model, folders, default={})
    keys = ["m", "t", BASE_KEY, "m", "t", BASE_KEY]
    prompts = [PROMPTS[i % 3] for i in range(6)]
    mixed = run(model, tok, prompts, keys, router=router)
    for key in ("m", "t", BASE_KEY):
        alone = run(model, tok, prompts, [key] * 6, router=router)
        for m, a, k in zip(mixed.completions, alone.completions, keys):
            if k == key:
                assert_same(m, list(a.completion_token_ids), list(a.logprobs))


def test_weighted_combination_is_folded_and_refused_in_a_mixed_batch(tiny_models, peft_adapter):
    folders = {f"a{i}": peft_adapter("llama", seed=i, r=4, target_modules=["q_proj", "v_proj"])
               for i in range(2)}
    model, tok = load(tiny_models["llama"])
    router = attach(model, folders, default={"a0": 0.5, "a1": 0.5})
    folded = run(model, tok, router=router)
    assert folded.mode == "folded" and folded.completions[0].adapter == "a0=0.5+a1=0.5"
    router.can_fold = False
    unmerged = run(model, tok, router=router)
    for a, b in zip(folded.completions, unmerged.completions):
        assert_same(a, list(b.completion_token_ids), list(b.logprobs))
    with pytest.raises(UsageError, match="weighted combination a0=0.5\\+a1=0.5 cannot share"):
        run(model, tok, keys=[None, "a0", None], router=router)


def test_sampling_with_a_seed_reproduces(tiny_models):
    model, tok = load(tiny_models["llama"])
    kw = dict(temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=12, logprobs=False)
    a, b = run(model, tok, seed=7, **kw), run(model, tok, seed=7, **kw)
    c = run(model, tok, seed=8, **kw)
    ids = lambda r: [x.completion_token_ids for x in r.completions]  # noqa: E731
    assert ids(a) == ids(b) and a.seed == 7
    assert ids(a) != ids(c)
    unseeded = run(model, tok, **kw)
    assert unseeded.seed is not None and ids(run(model, tok, seed=unseeded.seed, **kw)) == ids(unseeded)


def test_compare_restarts_the_random_stream_per_variant(tiny_models, peft_adapter):
    model, tok = load(tiny_models["llama"])
    router = attach(model, {"a": peft_adapter("llama", r=4, target_modules=["q_proj"])})
    specs = [PromptSpec("0", PROMPTS[0])]
    cfg = DecodingConfig(max_new_tokens=8, temperature=1.0, seed=3)
    base_run, adapter_run = compare_completions(model, tok, specs, cfg, router, [BASE_KEY, "a"])
    assert base_run.completions[0].adapter is None and adapter_run.completions[0].adapter == "a"
    again = compare_completions(model, tok, specs, cfg, router, [BASE_KEY])[0]
    assert again.completions[0].completion_token_ids == base_run.completions[0].completion_token_ids


def test_stop_strings_cut_the_text_and_streaming_adds_up(tiny_models):
    model, tok = load(tiny_models["llama_tied"])
    full = run(model, tok, ["a small"], max_new_tokens=8).completions[0]
    assert full.completion.startswith(" small small")
    pieces = []
    specs = [PromptSpec("0", "a small")]
    res = generate_completions(model, tok, specs, DecodingConfig(max_new_tokens=8, stop=("all sm",)),
                               on_token=lambda spec, text: pieces.append(text))
    c = res.completions[0]
    assert c.finish_reason == "stop" and c.completion == " sm"
    assert "".join(pieces) == c.completion  # the stop string's start was held back, never shown
    assert len(c.completion_token_ids) == 2  # up to the token that completed the stop string


def test_eos_length_and_per_prompt_limits(tiny_models):
    model, tok = load(tiny_models["llama"])
    specs = [PromptSpec("a", "the quick brown fox"), PromptSpec("b", "a small", max_new_tokens=2)]
    res = generate_completions(model, tok, specs, DecodingConfig(max_new_tokens=12))
    a, b = res.completions
    assert a.finish_reason == "eos" and a.completion_token_ids[-1] == tok.eos_token_id
    assert b.finish_reason == "length" and len(b.completion_token_ids) == 2


def test_context_length_is_checked_and_limits_capped(tiny_models):
    model, tok = load(tiny_models["llama"])  # 128 positions
    long = " ".join(["fox"] * 130)
    with pytest.raises(UsageError, match=r"prompt '1' is 1\d\d tokens but the model's context is 128"):
        run(model, tok, ["ok", long])
    near = " ".join(["fox"] * 125)
    res = run(model, tok, [near], max_new_tokens=10, logprobs=False)
    assert res.warnings and "lowered from 10 to" in res.warnings[0]
    assert res.completions[0].prompt_tokens + len(res.completions[0].completion_token_ids) <= 128


def test_chat_template_needed_and_applied(tiny_models):
    model, tok = load(tiny_models["llama"])
    with pytest.raises(UsageError, match="no chat template"):
        generate_completions(model, tok, [PromptSpec("0", "hi")], DecodingConfig(), chat=True)
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}")
    chat = generate_completions(model, tok, [PromptSpec("0", "a small")],
                                DecodingConfig(max_new_tokens=4), chat=True, system="be brief")
    text = "<s>system: be brief\n<s>user: a small\nassistant:"
    plain = run(model, tok, [text], max_new_tokens=4, logprobs=False)
    assert chat.completions[0].completion_token_ids == plain.completions[0].completion_token_ids
    with pytest.raises(NotFoundError, match="no tokenizer"):
        generate_completions(model, None, [PromptSpec("0", "hi")], DecodingConfig())


def test_ctrl_c_keeps_what_was_made_and_restores_weights(tiny_models, peft_adapter):
    model, tok = load(tiny_models["llama"])
    router = attach(model, {"a": peft_adapter("llama", r=4, target_modules="all-linear")})
    q_proj = model.model.layers[0].self_attn.q_proj
    q = q_proj.base_layer.weight.clone()
    calls = []

    def interrupt_on_ninth_forward(module, args, output):
        calls.append(1)
        if len(calls) == 9:  # 6 forwards make prompt 0's 6 tokens: this is inside prompt 1
            raise KeyboardInterrupt

    model.register_forward_hook(interrupt_on_ninth_forward)
    specs = [PromptSpec(str(i), p) for i, p in enumerate(["a small", "low rank", "merge the"])]
    res = generate_completions(model, tok, specs, DecodingConfig(max_new_tokens=6), router=router,
                               batch_size=1)
    assert res.interrupted and [c.id for c in res.completions] == ["0", "1"]
    assert res.completions[0].finish_reason in ("length", "eos")
    assert res.completions[1].finish_reason == "interrupted"
    assert len(res.completions[1].completion_token_ids) == 2
    assert not q_proj.folded and torch.equal(q_proj.base_layer.weight, q)


def test_quantized_base_runs_unmerged_and_mixed_like_peft(bnb_llama, tmp_path):
    """nf4 base: folding is refused by the layer, so the run falls back to unmerged; a mixed batch
    (stacked ranks on Linear4bit) equals each adapter alone and PEFT's adapter_names."""
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel

    from adapterctl.core.runtime.model import load_base
    from tests.conftest import make_peft_adapter
    from tests.core.runtime.test_attach import load_hf
    from tests.core.runtime.test_placement import _bnb_config

    folders = {f"a{i}": make_peft_adapter(bnb_llama, tmp_path / f"a{i}", seed=i, r=4,
                                          target_modules=["q_proj", "v_proj", "down_proj"])
               for i in range(2)}
    lb = load_base(bnb_llama, dtype="float32", quantize="nf4")
    router = attach(lb.model, folders, default={"a0": 1.0}, fold=True)
    single = run(lb.model, lb.tokenizer, router=router)
    assert single.mode == "unmerged"
    keys = ["a0", "a1", BASE_KEY, "a1"]
    prompts = [PROMPTS[i % 3] for i in range(4)]
    mixed = run(lb.model, lb.tokenizer, prompts, keys, router=router)
    assert mixed.mode == "mixed"
    ref = PeftModel.from_pretrained(load_hf(bnb_llama, quantization_config=_bnb_config("nf4"),
                                            device_map={"": "cpu"}), str(folders["a0"]),
                                    adapter_name="a0").eval()
    ref.load_adapter(str(folders["a1"]), adapter_name="a1")
    for prompt, c in zip(PROMPTS, single.completions):
        assert_same(c, *peft_greedy(ref, lb.tokenizer, prompt))
    for prompt, c, key in zip(prompts, mixed.completions, keys):
        assert_same(c, *peft_greedy(ref, lb.tokenizer, prompt, adapter_names=[key]))
