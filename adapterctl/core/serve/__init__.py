"""Beyond one process: generation on vLLM's offline engine (``generate --engine vllm``) and on any
OpenAI-compatible server (``generate --endpoint``), starting a server (``serve``) and checking
what it serves against our own engine (``verify``).

``jobs`` (prompts to one-adapter requests and back), ``vllm_offline`` (vLLM's engine in this
process), ``client`` (HTTP, stdlib), ``endpoint`` (generate against a server), ``prepare``
(adapters checked and converted for an engine, its LoRA limits), ``run`` (generate on vLLM or an
endpoint as library calls), ``server`` (the engines' server command lines), ``verify``. Only
``vllm_offline`` imports vLLM, and only when it runs.
"""
