"""Beyond one process: generation on vLLM's offline engine (``generate --engine vllm``) and on any
OpenAI-compatible server (``generate --endpoint``), starting a server (``serve``) and checking
what it serves against our own engine (``verify``).

``client`` (HTTP, stdlib), ``endpoint`` (generate against a server), ``jobs`` (prompts to
requests and back), ``vllm_offline`` (vLLM's engine in this process). Only ``vllm_offline``
imports vLLM, and only when it runs.
"""
