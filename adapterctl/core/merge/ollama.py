"""The Ollama Modelfile of a merged GGUF (``ollama create NAME -f Modelfile``).

Ollama reads the model, its tokenizer and ``tokenizer.chat_template`` from the GGUF itself; a
Modelfile names the file (``FROM ./model.gguf``, relative to the Modelfile) and may add a Go
``TEMPLATE`` and ``PARAMETER`` lines (Ollama's docs/modelfile.md). A Jinja chat template cannot be
translated in general, so a TEMPLATE is written only for the two chat formats recognised from the
base's Jinja template (ChatML and Llama 3 headers), in Ollama's own spelling of them; stop
sequences are the chat format's end-of-turn token, and sampling defaults come from
generation_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
LLAMA3 = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def chat_template(root: Path) -> str:
    """The base's Jinja chat template (chat_template.jinja or tokenizer_config.json), or ''."""
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8", errors="replace")
    t = _read_json(root / "tokenizer_config.json").get("chat_template")
    return t if isinstance(t, str) else ""


def ollama_modelfile(root: Path, gguf_path: Path, tokens: list[str]) -> str:
    """The Modelfile text, to be saved beside the GGUF."""
    lines = [f"FROM ./{gguf_path.name}"]
    template = chat_template(root)
    if "<|im_start|>" in template and "<|im_end|>" in tokens:
        lines.append(f'TEMPLATE """{CHATML}"""')
        lines.append('PARAMETER stop "<|im_end|>"')
    elif "<|start_header_id|>" in template and "<|eot_id|>" in tokens:
        lines.append(f'TEMPLATE """{LLAMA3}"""')
        lines.append('PARAMETER stop "<|eot_id|>"')
    gen = _read_json(root / "generation_config.json")
    for key in ("temperature", "top_p", "top_k"):
        if isinstance(gen.get(key), (int, float)) and not isinstance(gen.get(key), bool):
            lines.append(f"PARAMETER {key} {gen[key]}")
    return "\n".join(lines) + "\n"
