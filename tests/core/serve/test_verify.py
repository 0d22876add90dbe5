"""verify's verdicts from completions: matches, no-op, differs (first divergent token), text-only
servers, logprob differences. The end-to-end verdicts against a real vLLM server are in
tests/interop/test_scale_vllm.py."""

from __future__ import annotations

from adapterctl.core.generate.results import Completion
from adapterctl.core.serve.verify import DIFFERS, MATCHES, NO_OP, judge, max_logprob_diff


def c(ids, pid="0", text=None, logprobs=None, ids_known=True):
    return Completion(pid, "p", "a", text if text is not None else " ".join(map(str, ids)),
                      tuple(ids) if ids_known else None, "length", 1, 1.0,
                      tuple(logprobs) if logprobs else None, len(ids))


def decode(ids):
    return f"<{ids[0]}>" if ids else ""


def test_matches_with_logprob_difference():
    ours = [c([1, 2, 3], logprobs=[-0.1, -0.2, -0.3]), c([4], "1")]
    served = [c([1, 2, 3], logprobs=[-0.1, -0.25, -0.3]), c([4], "1")]
    v = judge("upper", "./upper", ours, [c([9, 9, 9]), c([9], "1")], served, decode)
    assert v.verdict == MATCHES and v.ok and v.compared == "token ids"
    assert abs(v.max_logprob_diff - 0.05) < 1e-9 and v.first_divergence is None


def test_no_op_when_the_server_gives_the_base_output():
    ours, base = [c([1, 2]), c([3], "1")], [c([1, 7]), c([5], "1")]
    v = judge("upper", "./upper", ours, base, [c([1, 7]), c([5], "1")], decode)
    assert v.verdict == NO_OP and not v.ok
    d = v.first_divergence
    assert (d.prompt_id, d.position, d.ours_id, d.served_id, d.ours, d.served) == \
        ("0", 1, 2, 7, "<2>", "<7>")


def test_differs_shows_the_first_divergent_token():
    ours, base = [c([1, 2]), c([3, 4], "1")], [c([8]), c([8], "1")]
    v = judge("upper", "./upper", ours, base, [c([1, 2]), c([3], "1")], decode)
    assert v.verdict == DIFFERS
    assert v.first_divergence.describe() == "prompt '1', token 1: ours '<4>', served '<end>'"


def test_text_only_servers_compare_text():
    ours = [c([1, 2], text=" HELLO THERE")]
    served = [c([], text=" HELLO WORLD", ids_known=False)]
    v = judge("u", "./u", ours, [c([5], text=" hello")], served, decode)
    assert v.verdict == DIFFERS and v.compared == "text"
    assert (v.first_divergence.position, v.first_divergence.ours) == (7, "THERE")


def test_logprob_difference_stops_at_the_first_divergence():
    pairs = [(c([1, 2, 3], logprobs=[-1, -1, -1]), c([1, 5, 3], logprobs=[-1.5, -9, -9]))]
    assert max_logprob_diff(pairs) == 0.5
