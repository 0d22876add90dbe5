"""Serving engines: what vLLM, SGLang, LoRAX, TGI, llama.cpp and MLX do with a PEFT LoRA adapter.

One data module per engine (``vllm``, ``sglang``, ``lorax``, ``tgi``, ``llama_cpp``, ``mlx``)
holds its rules, each with the engine version and source file it was read from; ``rules`` is
what they share, ``facts`` what they look at (headers only), ``check`` runs them. Torch-free:
``check`` is in the start-up tier.
"""
