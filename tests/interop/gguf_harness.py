"""The real llama.cpp for the GGUF interop tests: its own converters and llama-completion.

llama.cpp is built by ``.ci/engines/llama_cpp.sh`` (path in ``$ADAPTERCTL_LLAMA_CPP``, default
``~/.cache/adapterctl-engines/llama.cpp-pypi-0.3.36``). Missing, the tests FAIL naming the script.

Test-harness-only patch: llama.cpp's converter identifies a BPE tokenizer by hashing known
vocabularies (``get_vocab_base_pre``) and refuses the test models' own byte-level BPE tokenizer;
for a byte-level BPE, GPT-2's pre-tokenizer ("gpt-2") is the right answer, so the wrapper returns
it. Likewise, architectures whose converter only reads SentencePiece vocabularies (Gemma, Phi-3)
write the GPT-2 (byte-level BPE) vocabulary when the folder has no tokenizer.model. Base
conversions only; tensors are never touched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

DEFAULT = Path.home() / ".cache/adapterctl-engines/llama.cpp-pypi-0.3.36"

WRAPPER = r'''
import json, runpy, sys
from pathlib import Path
root = Path(sys.argv[1])
sys.path.insert(0, str(root)); sys.path.insert(1, str(root / "gguf-py"))
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
_init = base.TextModel.__init__
def _init_gpt2_vocab(self, *a, **k):
    _init(self, *a, **k)
    if not (self.dir_model / "tokenizer.model").is_file():
        self.set_vocab = self._set_vocab_gpt2  # a byte-level BPE tokenizer.json, no SentencePiece
import traceback
results, jobs, results_path = [], json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3])
for script, argv in jobs:
    base.TextModel.__init__ = _init_gpt2_vocab if script == "convert_hf_to_gguf.py" else _init
    sys.argv = [str(root / script)] + argv
    try:
        runpy.run_path(str(root / script), run_name="__main__")
        results.append(None)
    except SystemExit as e:
        results.append(None if e.code in (0, None) else f"exit {e.code}")
    except Exception:
        results.append(traceback.format_exc()[-2000:])
results_path.write_text(json.dumps(results))
'''


def llama_cpp_dir() -> Path:
    root = Path(os.environ.get("ADAPTERCTL_LLAMA_CPP") or DEFAULT)
    if not ((root / ".complete").is_file() and (root / "build/bin/llama-completion").is_file()):
        pytest.fail(f"llama.cpp is not built at {root}: run `bash .ci/engines/llama_cpp.sh` "
                    "(CI does) or set ADAPTERCTL_LLAMA_CPP")
    return root


def run_converters(jobs: list[tuple[str, list[str]]], work: Path) -> list[str | None]:
    """Run llama.cpp's converter scripts (convert_hf_to_gguf.py, convert_lora_to_gguf.py) in one
    Python process (torch is imported once), through the wrapper above. Returns, per job, None or
    the converter's error."""
    root = llama_cpp_dir()
    work.mkdir(parents=True, exist_ok=True)
    (work / "wrapper.py").write_text(WRAPPER)
    (work / "jobs.json").write_text(json.dumps([[s, [str(a) for a in argv]] for s, argv in jobs]))
    proc = subprocess.run([sys.executable, str(work / "wrapper.py"), str(root),
                           str(work / "jobs.json"), str(work / "results.json")],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        pytest.fail(f"llama.cpp's converter wrapper failed:\n{proc.stderr[-3000:]}")
    return json.loads((work / "results.json").read_text())


def run_llama(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run one of llama.cpp's tools with stdout and stderr in files rather than pipes. llama.cpp
    prints through an asynchronous logger that it leaks at exit (common/log.cpp, common_log_main),
    so on a busy machine the tail of a run can be lost; a logger writing to a file keeps up far
    better than one waking a reader through a pipe (measured with llama-perplexity on 2 cores under
    4 busy processes: 22 of 30 runs whole, against 6 of 30). What arrives is an in-order prefix."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(cmd, stdout=out, stderr=err, timeout=timeout)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())


#: tokens asked for beyond those compared: llama-completion's last output can be lost at exit
#: (see below), and what a busy machine lost was up to 6 tokens
SPARE_TOKENS = 16


def complete(base_gguf: Path, prompt: str, n: int, lora: Path | None = None,
             scale: float | None = None) -> tuple[list[int], str]:
    """Greedy completion by llama-completion: (prompt token ids as llama.cpp tokenized them,
    completion text)."""
    exe = llama_cpp_dir() / "build/bin/llama-completion"
    cmd = [str(exe), "-m", str(base_gguf), "-p", prompt, "-n", str(n), "--temp", "0", "-no-cnv",
           "--no-display-prompt", "-t", "1", "--no-warmup", "--verbose-prompt", "-s", "0"]
    if lora is not None:
        cmd += (["--lora-scaled", f"{lora}:{scale}"] if scale is not None else ["--lora", str(lora)])
    best: tuple[list[int], bytes] | None = None
    for _ in range(10):
        proc = run_llama(cmd, timeout=120)
        err = proc.stderr.decode("utf-8", "replace")
        if proc.returncode:
            pytest.fail(f"llama-completion failed ({proc.returncode}):\n{err[-3000:]}")
        ids = [int(m) for m in re.findall(r"^\S+ I +(\d+) -> '", err, re.MULTILINE)]
        if best is None or (ids and len(proc.stdout) > len(best[1])):
            best = (ids, proc.stdout)
        # the tail of a run can be lost (run_llama); a run that reached the perf summary lost
        # nothing. Otherwise keep the longest prefix seen: callers ask for more tokens than they
        # compare.
        if "graphs reused" in err:
            break
    if not best[0]:
        pytest.fail(f"llama-completion printed no prompt tokens:\n{err[-3000:]}")
    return best


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (printable characters standing for the 256 bytes), inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(model_dir: Path, ids: list[int]) -> bytes:
    """The bytes llama.cpp prints for ``ids`` of a byte-level BPE tokenizer, so a completion
    compares byte for byte even where it is not valid UTF-8: special tokens print nothing, ids
    the tokenizer lacks are llama.cpp's ``[PAD<id>]`` filler tokens (conversion/base.py)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    vocab = {i: t for t, i in tok.get_vocab().items()}
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    dec = _byte_decoder()
    out = []
    for i in ids:
        if i in special:
            continue
        out.append(bytes(dec[c] for c in vocab[i]) if i in vocab else f"[PAD{i}]".encode())
    return b"".join(out)
