"""Serving: adapters on an engine beyond this process. ``generate --endpoint`` against any
OpenAI-compatible server, starting a server (``serve``) and checking what it serves against our
own engine (``verify``).

``client`` (HTTP, stdlib), ``endpoint`` (generate against a server, as a library call), ``prepare``
(adapters checked and converted for an engine: it composes ``convert``, which is why it sits
here and ``generate --engine vllm`` takes it as an argument), ``server`` (the engines' server
command lines), ``verify``. vLLM's offline engine in this process is generation:
:mod:`adapterctl.core.generate.vllm_offline`.
"""
