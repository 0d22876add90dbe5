"""Run inside vLLM's own virtualenv (``$ADAPTERCTL_VLLM_PYTHON``): hand adapters to the real vLLM
and write, per adapter, vLLM's refusal or its greedy token ids.

    python vllm_runner.py SPEC.json RESULT.json

SPEC: {"mode": "engine" | "validate", "model", "max_lora_rank", "max_tokens",
       "prompts": [[token ids], ...], "adapters": [{"name", "path"}, ...]}
RESULT: {"vllm": version, "seconds": {...}, "adapters": {name: {"error": str} |
         {"tokens": [[ids], ...]} | {"valid": true}}}

``engine``: one engine start for all adapters. The engine core runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0, executor "uni"), so a refused adapter raises vLLM's own
ValueError here, from the loader a server runs (WorkerLoRAManager._load_adapter, through
LLMEngine.add_lora), instead of killing the engine; then every accepted adapter generates in ONE
batch (one LoRA per request, Punica-style), greedy. ``validate``: no engine, only vLLM's config
check (PEFTHelper.validate_legal against a LoRAConfig with ``max_lora_rank``): what a server
started without a flag says. Stdlib and vLLM only: this file never imports adapterctl.
"""

import json
import os
import sys
import time


def validate(spec: dict) -> dict:
    from vllm.config.lora import LoRAConfig
    from vllm.lora.peft_helper import PEFTHelper

    config = LoRAConfig(max_lora_rank=spec["max_lora_rank"])
    out = {}
    for a in spec["adapters"]:
        try:
            PEFTHelper.from_local_dir(os.path.abspath(a["path"]), None).validate_legal(config)
            out[a["name"]] = {"valid": True}
        except Exception as err:
            out[a["name"]] = {"error": f"{type(err).__name__}: {err}"}
    return out


def engine(spec: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    n = len(spec["adapters"])
    llm = LLM(model=spec["model"], enable_lora=True, max_lora_rank=spec["max_lora_rank"],
              max_loras=max(1, min(n, 16)), max_cpu_loras=max(1, n), dtype="float32",
              enforce_eager=True, seed=0, max_model_len=256,
              gpu_memory_utilization=spec.get("memory", 0.1), distributed_executor_backend="uni")
    spec["_ready"] = time.time()
    out, accepted = {}, []
    for i, a in enumerate(spec["adapters"]):
        request = LoRARequest(a["name"], i + 1, os.path.abspath(a["path"]))
        try:
            llm.llm_engine.add_lora(request)
            accepted.append((a["name"], request))
        except Exception as err:  # vLLM's refusal, in its own words
            out[a["name"]] = {"error": f"{type(err).__name__}: {err}"}
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in spec["prompts"]]
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"])
    batch = [(name, req, p) for name, req in accepted for p in prompts]
    gens = llm.generate([p for _, _, p in batch], params, lora_request=[r for _, r, _ in batch],
                        use_tqdm=False)
    for (name, _, _), g in zip(batch, gens):
        out.setdefault(name, {"tokens": []})["tokens"].append(list(g.outputs[0].token_ids))
    return out


def main(spec_path: str, result_path: str) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    start = time.time()
    with open(spec_path) as f:
        spec = json.load(f)
    import vllm

    adapters = validate(spec) if spec.get("mode") == "validate" else engine(spec)
    seconds = {"total": round(time.time() - start, 1)}
    if "_ready" in spec:
        seconds["engine_start"] = round(spec["_ready"] - start, 1)
    with open(result_path, "w") as f:
        json.dump({"vllm": vllm.__version__, "adapters": adapters, "seconds": seconds}, f)


if __name__ == "__main__":  # vLLM's workers re-import the main module
    main(sys.argv[1], sys.argv[2])
