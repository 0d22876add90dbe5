"""The OpenAI-compatible client and ``generate --endpoint``'s core against a scripted local stub:
retries, faults, names, request bodies, response parsing, partial results."""

from __future__ import annotations

import pytest

from adapterctl.core.generate.prompts import BASE_KEY, PromptSpec
from adapterctl.core.generate.results import DecodingConfig
from adapterctl.core.serve.client import Client, EndpointOptions, api_root
from adapterctl.core.serve.endpoint import EndpointRun, ServedModel, list_models, resolve_names
from adapterctl.errors import EndpointError, NotFoundError, UsageError
from tests.openai_stub import Reply, Stub, completion, free_port, models

CMPL = "/v1/completions"


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


def client(url: str, **kw) -> tuple[Client, list[float]]:
    waits: list[float] = []
    return Client(EndpointOptions(url, **kw), sleep=waits.append), waits


def test_api_root_forms():
    assert api_root("http://h:1") == "http://h:1/v1"
    assert api_root("http://h:1/") == "http://h:1/v1"
    assert api_root("https://h/x/v1/") == "https://h/x/v1"
    with pytest.raises(UsageError, match="not an http"):
        api_root("h:8000")


def test_429_and_503_are_retried_with_backoff_and_retry_after(stub):
    stub.add(CMPL, Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "3"}),
             Reply(503, "busy"), Reply(200, completion(" hi", [5, 6])))
    c, waits = client(stub.url)
    assert c.post("/completions", {"model": "m"}, "p")["choices"][0]["text"] == " hi"
    assert waits == [3.0, 1.0]  # Retry-After over the first backoff (0.5), then 0.5 * 2
    assert len(stub.posts()) == 3


def test_retries_are_bounded(stub):
    stub.default[CMPL] = Reply(502, "bad gateway")
    c, waits = client(stub.url, retries=2)
    with pytest.raises(EndpointError, match="server error 502 after 3 tries.*bad gateway"):
        c.post("/completions", {}, "prompt '0'")
    assert len(waits) == 2 and len(stub.posts()) == 3


def test_retry_after_is_capped(stub):
    stub.add(CMPL, Reply(429, "", {"Retry-After": "3600"}), Reply(200, completion("x")))
    c, waits = client(stub.url)
    c.post("/completions", {}, "p")
    assert waits == [20.0]


def test_connection_refused_is_not_retried():
    c, waits = client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(EndpointError, match="connection refused") as info:
        c.get("/models", "listing models")
    assert waits == [] and "serve" in info.value.hint


def test_timeout(stub):
    stub.add(CMPL, Reply(200, completion("late"), delay=2.0))
    c, waits = client(stub.url, timeout=0.3)
    with pytest.raises(EndpointError, match=r"no answer within 0.3s \(prompt '7'\)") as info:
        c.post("/completions", {}, "prompt '7'")
    assert "--timeout" in info.value.hint and waits == []


def test_dropped_connection_is_retried(stub):
    stub.add(CMPL, Reply(close=True), Reply(200, completion("ok")))
    c, waits = client(stub.url)
    assert c.post("/completions", {}, "p")["choices"][0]["text"] == "ok"
    assert len(waits) == 1


@pytest.mark.parametrize("body, words", [
    (b"<html>oops</html>", "not JSON"),
    (b"[1, 2]", "a JSON list, not an object"),
    (b"\xff\xfe", "not JSON"),
])
def test_malformed_bodies(stub, body, words):
    stub.add(CMPL, Reply(200, body))
    c, _ = client(stub.url)
    with pytest.raises(EndpointError, match=f"malformed response.*{words}"):
        c.post("/completions", {}, "p")


def test_status_errors_say_what_the_server_said(stub):
    stub.add(CMPL, Reply(401, {"error": {"message": "Unauthorized"}}),
             Reply(404, {"error": {"message": "The model `x` does not exist."}}),
             Reply(400, {"detail": "max_tokens too large"}))
    c, _ = client(stub.url)
    with pytest.raises(EndpointError, match="401: Unauthorized") as info:
        c.post("/completions", {}, "p")
    assert "--api-key" in info.value.hint
    with pytest.raises(NotFoundError, match="does not exist"):
        c.post("/completions", {}, "p")
    with pytest.raises(EndpointError, match="400.*max_tokens too large"):
        c.post("/completions", {}, "p")


def test_api_key_goes_in_the_header_only(stub):
    stub.add(CMPL, Reply(200, completion("x")))
    c, _ = client(stub.url, api_key="sk-secret-123456")
    c.post("/completions", {"model": "m"}, "p")
    req = stub.posts()[0]
    assert req["headers"]["Authorization"] == "Bearer sk-secret-123456"
    assert "sk-secret" not in repr(c.opts) and "sk-secret" not in str(req["body"])


def test_redirects_are_not_followed(stub):
    stub.add(CMPL, Reply(307, "", {"Location": "http://example.invalid/v1/completions"}))
    c, _ = client(stub.url, api_key="sk-secret-123456")
    with pytest.raises(EndpointError, match="307"):
        c.post("/completions", {}, "p")


# ----- names --------------------------------------------------------------------------------
def test_names_from_the_model_list(stub, tmp_path):
    folder = tmp_path / "upper-lora"
    folder.mkdir()
    stub.default["/v1/models"] = Reply(200, models("tiny", {"upper": str(folder)}, "/srv/tiny"))
    listed = list_models(client(stub.url)[0])
    assert listed[1] == ServedModel("upper", str(folder), "tiny")
    names = resolve_names(listed, stub.url, None, None, ["upper", str(folder)])
    assert names.base == "tiny" and names.adapters == {"upper": "upper", str(folder): "upper"}
    assert resolve_names(listed, stub.url, None, "/srv/tiny", []).base == "tiny"  # by path
    assert resolve_names(listed, stub.url, "other", None, []).base == "other"  # --model wins
    with pytest.raises(NotFoundError, match="serves no adapter named 'lower'; its adapters: upper"):
        resolve_names(listed, stub.url, None, None, ["lower"])


def test_several_bases_need_a_choice():
    listed = [ServedModel("a", "/a"), ServedModel("b", "/b")]
    with pytest.raises(UsageError, match="serves 2 base models"):
        resolve_names(listed, "u", None, None, [])
    # one model under two served names: its first name
    assert resolve_names([ServedModel("a", "/m"), ServedModel("b", "/m")], "u", None, None,
                         []).base == "a"


def test_a_server_without_a_model_list(stub):
    assert list_models(client(stub.url)[0]) is None  # the stub answers 404
    with pytest.raises(UsageError, match="does not list its models") as info:
        resolve_names(None, stub.url, None, None, [])
    assert "--model" in info.value.hint
    names = resolve_names(None, stub.url, None, "base", ["ad"])
    assert names.base == "base" and names.adapters == {"ad": "ad"}


# ----- generation ---------------------------------------------------------------------------
def run(stub, specs, cfg=DecodingConfig(max_new_tokens=4), concurrency=2, default=None,
        compare=None, chat=False, **kw):
    names = resolve_names(None, stub.url, "base", None, ["upper", "dragon"])
    c, _ = client(stub.url, **kw)
    seen = []
    results = EndpointRun(c, names, concurrency, chat=chat).generate(
        specs, cfg, default=default, compare=compare, on_complete=seen.append)
    return results, seen


def test_request_bodies_and_results(stub):
    stub.default[CMPL] = Reply(200, completion(" A B", [7, 8], "stop", "B", [-0.5, -0.25], 2))
    specs = [PromptSpec("a", "one", "upper", 9), PromptSpec("b", "two", BASE_KEY)]
    cfg = DecodingConfig(max_new_tokens=4, stop=("B",), logprobs=True, seed=3)
    (result,), seen = run(stub, specs, cfg)
    bodies = sorted((r["body"] for r in stub.posts()), key=lambda b: b["prompt"])
    assert bodies[0] == {"model": "upper", "prompt": "one", "max_tokens": 9, "n": 1,
                         "return_token_ids": True, "temperature": 0.0, "seed": 3,
                         "stop": ["B"], "logprobs": 1}
    assert bodies[1]["model"] == "base" and bodies[1]["max_tokens"] == 4
    assert [c.id for c in result.completions] == ["a", "b"] and len(seen) == 2
    d = result.completions[0].to_dict()
    assert d["adapter"] == "upper" and d["completion_token_ids"] == [7, 8]
    assert d["finish_reason"] == "stop" and d["logprobs"] == [-0.5, -0.25]
    assert d["prompt_tokens"] == 2 and d["completion_tokens"] == 2
    assert result.completions[1].adapter is None and result.mode == "endpoint"


def test_sampling_options_are_sent(stub):
    stub.default[CMPL] = Reply(200, completion("x", [1]))
    cfg = DecodingConfig(max_new_tokens=2, temperature=0.7, top_p=0.9, top_k=5,
                         repetition_penalty=1.2)
    run(stub, [PromptSpec("0", "p")], cfg)
    body = stub.posts()[0]["body"]
    assert (body["temperature"], body["top_p"], body["top_k"], body["repetition_penalty"]) == \
        (0.7, 0.9, 5, 1.2)


def test_finish_reasons(stub):
    stub.add(CMPL, Reply(200, completion("a", [1], "stop", None)),
             Reply(200, completion("b", [1], "stop", 13)),
             Reply(200, completion("c", [1], "length")))
    specs = [PromptSpec(str(i), "p") for i in range(3)]
    (result,), _ = run(stub, specs, concurrency=1)
    assert [c.finish_reason for c in result.completions] == ["eos", "eos", "length"]


def test_text_only_server(stub):
    stub.default[CMPL] = Reply(200, completion("three words here", None))
    (result,), _ = run(stub, [PromptSpec("0", "p")])
    d = result.completions[0].to_dict()
    assert d["completion_token_ids"] is None and d["completion_tokens"] == 3


def test_chat_requests(stub):
    stub.default["/v1/chat/completions"] = Reply(200, {
        "choices": [{"message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop",
                     "token_ids": [4], "logprobs": {"content": [{"token": "hello",
                                                                 "logprob": -0.1}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
    names = resolve_names(None, stub.url, "base", None, [])
    run_ = EndpointRun(client(stub.url)[0], names, 1, chat=True, system="be brief")
    (result,) = run_.generate([PromptSpec("0", "hi")], DecodingConfig(logprobs=True))
    body = stub.posts("/v1/chat/completions")[0]["body"]
    assert body["messages"] == [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "hi"}]
    assert result.completions[0].completion == "hello"
    assert result.completions[0].logprobs == (-0.1,)


def test_compare_runs_every_variant(stub):
    stub.default[CMPL] = Reply(200, completion("x", [1]))
    specs = [PromptSpec("0", "p"), PromptSpec("1", "q")]
    results, _ = run(stub, specs, compare=["upper", "dragon"])
    assert [[c.adapter for c in r.completions] for r in results] == \
        [[None, None], ["upper", "upper"], ["dragon", "dragon"]]
    assert sorted(r["body"]["model"] for r in stub.posts()) == \
        ["base", "base", "dragon", "dragon", "upper", "upper"]


def test_default_adapter_and_unknown_names(stub):
    stub.default[CMPL] = Reply(200, completion("x", [1]))
    (result,), _ = run(stub, [PromptSpec("0", "p")], default="upper")
    assert result.completions[0].adapter == "upper"
    with pytest.raises(UsageError, match="names adapter 'lower'"):
        run(stub, [PromptSpec("0", "p", "lower")])


def test_a_failure_keeps_what_was_made_and_sends_nothing_new(stub):
    stub.add(CMPL, Reply(200, completion("first", [1])), Reply(400, {"detail": "bad prompt"}))
    stub.default[CMPL] = Reply(200, completion("later", [2]))
    specs = [PromptSpec(str(i), "p") for i in range(5)]
    (result,), seen = run(stub, specs, concurrency=1)
    assert isinstance(result.error, EndpointError) and "bad prompt" in result.error.message
    assert [c.completion for c in result.completions] == ["first"] == [c.completion for c in seen]
    assert len(stub.posts()) == 2  # nothing sent after the failure


@pytest.mark.parametrize("doc, words", [
    ({"choices": []}, "no 'choices'"),
    ({"choices": [{"text": 5}]}, "no completion text"),
    ({"choices": [{"text": "x", "finish_reason": "abort"}]}, "finish_reason 'abort'"),
])
def test_malformed_completions(stub, doc, words):
    stub.add(CMPL, Reply(200, doc))
    (result,), _ = run(stub, [PromptSpec("0", "p")])
    assert result.error is not None and words in result.error.message
    assert "prompt '0'" in result.error.message


@pytest.mark.parametrize("message", ["hi", ["hi"], None])
def test_malformed_chat_message(stub, message):
    """A chat choice whose message is not an object is malformed (was an AttributeError: exit 1)."""
    stub.add("/v1/chat/completions", Reply(200, {"choices": [{"message": message}]}))
    (result,), _ = run(stub, [PromptSpec("0", "p")], chat=True)
    assert isinstance(result.error, EndpointError) and "no completion text" in result.error.message


def test_concurrency_is_bounded(stub):
    stub.default[CMPL] = Reply(200, completion("x", [1]), delay=0.2)
    import threading

    peak, live, lock = [0], [0], threading.Lock()
    real = Client.post

    def counting(self, *a, **k):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        try:
            return real(self, *a, **k)
        finally:
            with lock:
                live[0] -= 1

    Client.post = counting
    try:
        (result,), _ = run(stub, [PromptSpec(str(i), "p") for i in range(8)], concurrency=3)
    finally:
        Client.post = real
    assert len(result.completions) == 8 and peak[0] == 3


def test_a_folder_served_from_a_converted_copy_matches_by_its_name(tmp_path):
    """serve -a FOLDER names the adapter after the folder; a converted copy lives elsewhere."""
    folder = tmp_path / "dragon-dora"
    folder.mkdir()
    listed = [ServedModel("tiny", "/srv/tiny"), ServedModel("dragon-dora", "/cache/x", "tiny")]
    names = resolve_names(listed, "u", None, None, [str(folder)])
    assert names.adapters == {str(folder): "dragon-dora"}
    assert "matched by its folder's name" in names.notes["dragon-dora"]
    with pytest.raises(NotFoundError):  # a name that is not a folder here is not guessed
        resolve_names(listed, "u", None, None, [str(tmp_path / "missing" / "dragon-dora")])
