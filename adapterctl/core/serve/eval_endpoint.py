"""``eval``'s endpoint variants (``--variant NAME=URL#served-name``): a served model's
log-probabilities of the reference's own token ids, teacher-forced, from an OpenAI-compatible
``/v1/completions`` with vLLM's ``prompt_logprobs`` (the prompt given as token ids, one generated
token). Here rather than in ``core/eval`` because it composes eval with serve's HTTP client.

vLLM returns, per prompt position, the log-probabilities of its top ``prompt_logprobs`` tokens and
of the actual next token. With the whole vocabulary (``prompt_logprobs`` >= its size, allowed when
the server runs with ``--max-logprobs`` that high) the KL is exact; otherwise (vLLM's default cap is
20) it is the **top-k estimate**, labelled ``kl_method: "top-k (k=K)"``: the tokens the server did
not list share the probability it left (1 - the listed mass) in the reference's proportions, which
makes their part of the KL ``P_tail log(P_tail / Q_tail)``: the log-sum inequality's lower bound
of the true KL's tail (exact when the two tails are proportional; no unlisted token is put above the
k-th listed one, which can add a little). It is weak when the top k hold little of the mass. Top-1 agreement and perplexity are
exact either way (the server's first choice and the actual token are always listed).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from adapterctl.core.eval.scorers import Scorer, about
from adapterctl.core.eval.specs import VariantSpec
from adapterctl.core.serve.client import Client, EndpointOptions
from adapterctl.core.serve.endpoint import list_models
from adapterctl.errors import EndpointError, IncompatibleBaseError, NotFoundError, UsageError

#: vLLM's default --max-logprobs: what is asked for when the whole vocabulary is refused
DEFAULT_TOP_K = 20
_MAX_ALLOWED = re.compile(r"max(?:imum)?[^0-9]{0,40}?(\d+)", re.IGNORECASE)


@dataclass
class EndpointScorer(Scorer):
    """An endpoint variant: one request per row of a batch."""

    client: Client | None = None
    served: str = ""
    size: int = 0  # the reference's vocabulary
    k: int = 0  # prompt_logprobs asked for (>= size: the whole vocabulary)

    @property
    def _client(self) -> Client:
        assert self.client is not None  # endpoint_scorer always sets it
        return self.client

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(ids.shape[0], ids.shape[1], self.size, dtype=torch.float64)
        with about(self.name):
            for row in range(ids.shape[0]):
                n = int(mask[row].sum())
                out[row, : n - 1] = self._row(ids[row, :n].tolist())
        return out

    def _row(self, ids: list[int]) -> torch.Tensor:
        entries = self._prompt_logprobs(ids)
        if len(entries) != len(ids):
            raise EndpointError(
                f"{self._client.root}: prompt_logprobs has {len(entries)} entries for {len(ids)} prompt tokens",
                hint="The server must score the token ids it is given, one entry per prompt token.",
            )
        rows = torch.empty(len(ids) - 1, self.size, dtype=torch.float64)
        for t, entry in enumerate(entries[1:]):  # entry t + 1: the distribution after tokens 0..t
            rows[t] = self._distribution(entry, ids[t + 1])
        return rows

    def _prompt_logprobs(self, ids: list[int]) -> list:
        body = {"model": self.served, "prompt": ids, "max_tokens": 1, "temperature": 0.0}
        while True:
            try:
                doc = self._client.post(
                    "/completions", {**body, "prompt_logprobs": self.k}, "prompt_logprobs"
                )
                break
            except EndpointError as err:
                capped = _MAX_ALLOWED.search(err.message) if "logprob" in err.message.lower() else None
                if self.k <= DEFAULT_TOP_K or capped is None:
                    raise
                self.k = min(int(capped.group(1)), self.k - 1) or DEFAULT_TOP_K  # the server's cap
                self.kl_method = f"top-k (k={self.k})"
        choices = doc.get("choices")
        entries = choices[0].get("prompt_logprobs") if isinstance(choices, list) and choices else None
        if not isinstance(entries, list):
            raise EndpointError(
                f"{self._client.root}: the answer has no prompt_logprobs",
                hint="eval scores endpoints through vLLM's prompt_logprobs (an OpenAI-compatible "
                "vLLM server); for other servers convert the copy and pass its folder or GGUF.",
            )
        return entries

    def _distribution(self, entry, target: int) -> torch.Tensor:
        if not isinstance(entry, dict) or not entry:
            raise EndpointError(f"{self._client.root}: a prompt_logprobs entry is not a token -> logprob map")
        known: dict[int, float] = {}
        for key, value in entry.items():
            lp = value.get("logprob") if isinstance(value, dict) else value
            try:
                if lp is None:
                    raise TypeError("no logprob")
                tok, lp = int(key), float(lp)
            except (TypeError, ValueError):
                raise EndpointError(
                    f"{self._client.root}: prompt_logprobs entry {key!r}: {value!r}"
                ) from None
            if not 0 <= tok < self.size:
                raise IncompatibleBaseError(
                    f"{self.served} returns token id {tok}; the base's vocabulary has {self.size}",
                    hint="Compare copies of the same model: the server must serve this base.",
                )
            known[tok] = lp
        if target not in known:
            raise EndpointError(
                f"{self._client.root}: prompt_logprobs leaves out the prompt's own token {target}"
            )
        row = torch.full((self.size,), math.nan, dtype=torch.float64)  # not listed: see complete()
        row[list(known)] = torch.tensor(list(known.values()), dtype=torch.float64)
        return row

    def complete(self, ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Unlisted tokens share the mass the server left, in the reference's proportions, none above
        the k-th listed log-probability (a top-k list holds every token above it): water-filling,
        so each row still sums to 1 and the listed log-probabilities stay as the server gave them."""
        missing = logits.isnan()
        if not missing.any():
            return logits
        p = torch.log_softmax(ref_logits.double(), -1)
        known = logits.masked_fill(missing, -math.inf)
        q_tail = (1 - known.exp().sum(-1, keepdim=True)).clamp_min(1e-300)
        # the k-th listed log-probability (the actual token, listed too, may sit below the top k)
        floor = known.topk(min(self.k, known.shape[-1]), -1).values[:, -1:]
        capped = torch.zeros_like(missing)
        share = known  # replaced in the loop's first round (it always runs)
        for _ in range(32):  # each round caps at least one more token of a row that overflows
            free = missing & ~capped
            mass = (q_tail - capped.sum(-1, keepdim=True) * floor.exp()).clamp_min(1e-300).log()
            share = mass + p - torch.logsumexp(p.masked_fill(~free, -math.inf), -1, keepdim=True)
            over = free & (share > floor)
            if not over.any():
                break
            capped |= over
        tail = torch.where(capped, floor, share)
        return torch.where(missing, tail, logits)


def endpoint_scorer(spec: VariantSpec, tokenizer, size: int, api_key: str | None = None) -> EndpointScorer:
    """An endpoint variant, checked before scoring: the server answers and serves ``spec.served``."""
    if spec.served is None:
        raise UsageError(
            f"variant {spec.name!r}: an endpoint needs the served model's name: URL#NAME",
            hint="e.g. --variant vllm=http://127.0.0.1:8000#my-lora",
        )
    with about(spec.name):
        client = Client(EndpointOptions(spec.target, api_key=api_key))
        models = list_models(client)
        if models is not None and spec.served not in [m.id for m in models]:
            raise NotFoundError(
                f"{spec.target} does not serve {spec.served!r} (it serves: {', '.join(m.id for m in models)})",
                hint="Name a served model after '#': URL#NAME (the server's /v1/models lists them).",
            )
    scorer = EndpointScorer(spec.name, None, None, spec, [f"served by {spec.target} as {spec.served}"],
                            client=client, served=spec.served, size=size, k=size)  # fmt: skip
    scorer.kl_method = "full"
    return scorer


def served_kl(client: Client, served: str, model, active: dict[str, float], sequences, size: int) -> dict:
    """``verify``'s KL: the served adapter's ``prompt_logprobs`` of ``sequences`` (each prompt and our
    greedy completion, only the completion scored) against our engine's (``model`` with ``active``
    adapters), teacher-forced as ``eval`` does: KL mean and max, top-1 agreement and how the KL was
    computed (``"full"`` or the labelled top-k estimate). A server that gives no prompt_logprobs
    raises :class:`EndpointError`."""
    from adapterctl.core.eval.run import Passes, RefCache

    spec = VariantSpec(served, "endpoint", client.root, served)
    scorer = EndpointScorer(served, None, None, spec, client=client, served=served, size=size, k=size)
    with RefCache(False) as cache:
        _, (tally,) = Passes(list(sequences), 1).first(Scorer("reference", model, active), [scorer], cache)
    f = tally.figures()
    return {
        "positions": f.positions,
        "kl_mean": f.kl_mean,
        "kl_max": f.kl_max,
        "top1_agreement": f.top1_agreement,
        "kl_method": scorer.kl_method,
    }
