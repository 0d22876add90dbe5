"""``eval --variant NAME=URL#served-name``: the protocol (vLLM's prompt_logprobs on the reference's
token ids) and its faults, against the scripted server tests/openai_stub.py. The stub answers with
log-probabilities computed by PEFT + transformers for another adapter, so the endpoint row must equal
the row of that adapter's folder; a server capped below the vocabulary gives the labelled top-k
estimate, whose top-1 agreement and perplexity stay exact."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import invoke
from tests.openai_stub import Reply, Stub, free_port, models

TEXTS = ["the quick brown fox jumps over the lazy dog", "merge the adapter into the base and save the result",
         "a small language model learns to write short sentences"]


@pytest.fixture(scope="module")
def setup(tiny_models, peft_adapter, tmp_path_factory):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("eval-endpoint")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    base = tiny_models["llama"]
    lora = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    other = peft_adapter("llama", seed=1, r=4, target_modules=["q_proj", "v_proj"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(other)).eval()

    def log_probs(ids: list[int]):
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)

    return {"base": base, "lora": lora, "other": other, "data": data, "log_probs": log_probs}


def vllm(log_probs, cap: int | None = None, seen: list | None = None):
    """/v1/completions as vLLM answers prompt_logprobs=k: per prompt token (None first) its top-k
    tokens and the actual token, {id: {"logprob", "rank", "decoded_token"}}; over ``cap``: 400."""

    def answer(body):
        ids, k = body["prompt"], body["prompt_logprobs"]
        if seen is not None:
            seen.append(k)
        if cap is not None and k > cap:
            return Reply(400, {"error": {"message": f"Requested prompt logprobs of {k}, which is greater "
                                                    f"than max allowed: {cap}"}})
        lp = log_probs(ids)
        entries = [None]
        for t in range(1, len(ids)):
            row = lp[t - 1]
            top = row.topk(min(k, row.numel())).indices.tolist()
            keep = dict.fromkeys(top + [ids[t]])
            entries.append({str(i): {"logprob": row[i].item(), "rank": 1 + int((row > row[i]).sum()),
                                     "decoded_token": "x"} for i in keep})
        return Reply(200, {"id": "c", "object": "text_completion", "model": body["model"],
                           "choices": [{"index": 0, "text": "x", "finish_reason": "length",
                                        "prompt_logprobs": entries}]})

    return answer


@pytest.fixture
def stub():
    s = Stub()
    s.default["/v1/models"] = Reply(200, models("base", {"other": "/adapters/other"}))
    yield s
    s.close()


def _eval(s, *args):
    return invoke("--json", "eval", s["base"], "-a", s["lora"], "--data", s["data"], *args)


def test_full_vocabulary_equals_the_adapter_run_here(setup, stub):
    stub.default["/v1/completions"] = vllm(setup["log_probs"])
    res = _eval(setup, "--variant", f"served={stub.url}#other", "--variant", f"here={setup['other']}")
    assert res.code == 0, res.stdout + res.stderr
    rows = {v["name"]: v for v in res.json["variants"]}
    served, here = rows["served"], rows["here"]
    assert served["kind"] == "endpoint" and served["kl_method"] == "full" and served["spec"].endswith("#other")
    for key in ("kl_mean", "kl_p99", "kl_max", "top1_agreement", "perplexity"):
        assert served[key] == pytest.approx(here[key], rel=1e-4, abs=1e-9), key
    posts = stub.posts()
    assert len(posts) == len(TEXTS) and all(p["body"]["model"] == "other" for p in posts)
    assert all(isinstance(p["body"]["prompt"], list) and p["body"]["max_tokens"] == 1 for p in posts)


def test_capped_server_gives_the_labelled_top_k_estimate(setup, stub):
    seen: list[int] = []
    stub.default["/v1/completions"] = vllm(setup["log_probs"], cap=20, seen=seen)
    res = _eval(setup, "--variant", f"served={stub.url}#other", "--variant", f"here={setup['other']}")
    assert res.code == 0, res.stdout + res.stderr
    rows = {v["name"]: v for v in res.json["variants"]}
    served, here = rows["served"], rows["here"]
    assert served["kl_method"] == "top-k (k=20)" and seen[0] > 20 and set(seen[1:]) == {20}
    # the server's first choice and the actual token are always listed: these stay exact
    for key in ("top1_agreement", "perplexity"):
        assert served[key] == pytest.approx(here[key], rel=1e-4), key
    # the unlisted tail in the reference's proportions: (near) the log-sum lower bound, which is weak
    # when the top 20 hold little of the mass (this random model spreads it over 373 tokens)
    assert 0 < served["kl_mean"] < here["kl_mean"]


@pytest.mark.parametrize("case", ["down", "unknown-name", "no-prompt-logprobs", "5xx"])
def test_endpoint_faults_name_the_variant(setup, stub, case):
    url = f"http://127.0.0.1:{free_port()}" if case == "down" else stub.url
    name = "nope" if case == "unknown-name" else "other"
    if case == "no-prompt-logprobs":
        stub.default["/v1/completions"] = Reply(200, {"choices": [{"index": 0, "text": "x"}]})
    if case == "5xx":
        stub.default["/v1/completions"] = Reply(503, {"error": {"message": "overloaded"}})
    res = _eval(setup, "--variant", f"v={url}#{name}")
    code = {"down": 8, "unknown-name": 3, "no-prompt-logprobs": 8, "5xx": 8}[case]
    assert res.code == code, res.stdout + res.stderr
    doc = res.json
    assert doc["ok"] is False and "variant 'v'" in doc["error"]["message"] and "Traceback" not in res.stderr
    assert len(res.stdout.strip().splitlines()) == 1
    if case == "no-prompt-logprobs":
        assert "prompt_logprobs" in doc["error"]["message"] and "vLLM" in doc["error"]["hint"]
    if case == "down":
        assert re.search(r"connection refused", doc["error"]["message"])


def test_verify_kl_is_evals_endpoint_figure(setup, stub):
    """verify's KL (core/serve/eval_endpoint.py served_kl, on verify's completions) is eval's endpoint
    figure: the stub serving `other`'s log-probabilities against the reference adapter, on the same
    token ids, equals eval's row of `other`'s folder; a server without prompt_logprobs says so."""
    from adapterctl.core.eval.data import Sequence
    from adapterctl.core.eval.scorers import vocab_size
    from adapterctl.core.runtime.session import AdapterChoice, open_session
    from adapterctl.core.serve.client import Client, EndpointOptions
    from adapterctl.core.serve.eval_endpoint import served_kl
    from adapterctl.errors import EndpointError

    stub.default["/v1/completions"] = vllm(setup["log_probs"])
    session = open_session(str(setup["base"]), [AdapterChoice(str(setup["lora"]), name="lora")])
    tok, model = session.require_tokenizer("test"), session.base.model
    seqs = [Sequence(tuple(tok(t)["input_ids"]), 1, str(i)) for i, t in enumerate(TEXTS)]
    client = Client(EndpointOptions(stub.url))
    kl = served_kl(client, "other", model, {"lora": 1.0}, seqs, vocab_size(model))
    res = _eval(setup, "--variant", f"here={setup['other']}")
    here = {v["name"]: v for v in res.json["variants"]}["here"]
    assert kl["kl_method"] == "full" and kl["positions"] == here["positions"]
    for key in ("kl_mean", "kl_max", "top1_agreement"):
        assert kl[key] == pytest.approx(here[key], rel=1e-4, abs=1e-9), key
    stub.default["/v1/completions"] = Reply(200, {"choices": [{"index": 0, "text": "x"}]})
    with pytest.raises(EndpointError, match="prompt_logprobs"):
        served_kl(client, "other", model, {"lora": 1.0}, seqs, vocab_size(model))
