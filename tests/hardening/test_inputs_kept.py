"""Nothing lost (issue 29): an output never replaces an input, with or without --force.

Every writer (merge, merge --to-adapter, convert in each mode and --to gguf|mlx, serve's converted
copies) against every relation of its output to its inputs (equal, parent, inside, a symlink, ./x
and absolute spellings, a trailing slash, a Hub id's cache entry): each refusal exits 2 with an
``output_is_input`` error naming the flag and the input, and every input stays byte for byte as it
was (trees hashed before and after). What is allowed inside an adapter folder (a subfolder) is
written, and ``--force`` still replaces an old output. The property at the end throws random
output paths around the inputs and checks the same against an independent, string-based oracle.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.hardening.conftest import FUZZ_SLOW, count
from tests.helpers import REPO, invoke, run_cli


def tree_hash(root: Path) -> dict[str, str]:
    """Every entry under ``root``: files by content, symlinks by target, folders by name."""
    found = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs + files):
            p = Path(folder) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                found[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def pristine(tiny_models, peft_adapter, tmp_path_factory) -> Path:
    """work/{base, lora, lora2}: a tiny Llama and two PEFT adapters for it."""
    root = tmp_path_factory.mktemp("kept") / "work"
    shutil.copytree(tiny_models["llama"], root / "base")
    shutil.copytree(peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"]), root / "lora")
    shutil.copytree(peft_adapter("llama", seed=1, r=2, target_modules=["q_proj", "v_proj"]), root / "lora2")
    return root


def make_sandbox(pristine: Path, root: Path) -> Path:
    """``root``/work (a copy), ``root``/link -> work, ``root``/outlink -> work/lora; cwd ``root``."""
    shutil.copytree(pristine, root / "work")
    (root / "link").symlink_to("work")
    (root / "outlink").symlink_to("work/lora")
    return root


@pytest.fixture
def sandbox(pristine, tmp_path, monkeypatch) -> Path:
    root = make_sandbox(pristine, tmp_path / "s")
    monkeypatch.chdir(root)
    return root


# ----- writers: argv for an output, the output's flag, and whether it is a file ---------------------
WRITERS = {
    "merge": (lambda out: ["merge", "work/base", "work/lora", "--output", out], "--output"),
    "merge --to-adapter": (
        lambda out: ["merge", "--to-adapter", "work/lora", "work/lora2", "--output", out],
        "--output",
    ),
    "convert --rank": (lambda out: ["convert", "work/lora", out, "--rank", "2"], "OUT"),
    "convert --to mlx": (lambda out: ["convert", "work/lora", out, "--to", "mlx", "--base", "work/base"], "OUT"),
    "convert --to gguf": (
        lambda out: ["convert", "work/lora", out, "--to", "gguf", "--base", "work/base"],
        "OUT",
    ),
}
WITH_BASE = ["merge", "convert --to mlx", "convert --to gguf"]

#: output -> (relation word, the input's role) for the adapter every writer reads
ADAPTER_RELATIONS = {
    "work/lora": ("is the", "adapter"),
    "work/lora/": ("is the", "adapter"),
    "./work/lora": ("is the", "adapter"),
    "{abs}/work/lora": ("is the", "adapter"),
    "link/lora": ("is the", "adapter"),  # through a symlinked parent
    "outlink": ("is the", "adapter"),  # the output itself a symlink to the input
    "work": ("contains the", ""),  # holds every input: the first one found is named
    "link": ("contains the", ""),
    ".": ("contains the", ""),
    "work/lora/adapter_model.safetensors": ("is inside the", "adapter"),  # one of its files
}
BASE_RELATIONS = {
    "work/base": ("is the", "base model"),
    "link/base/": ("is the", "base model"),
    "work/base/merged": ("is inside the", "base model"),  # a model folder is read as a whole
}


def _refused(sandbox: Path, argv: list[str], flag: str, relation: str, role: str, force: bool = True) -> None:
    before = tree_hash(sandbox)
    res = invoke("--json", *argv, *(["--force"] if force else []))
    assert res.code == 2, (argv, res.stdout, res.stderr)
    err = res.json["error"]
    assert err["type"] == "output_is_input", err
    assert err["message"].startswith(f"{flag} ") and f": {relation} " in err["message"], err
    assert role in err["message"] and "an input of this command" in err["message"], err
    assert "never an input" in err["hint"]
    assert tree_hash(sandbox) == before  # nothing written, nothing moved, no lock left


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("out", list(ADAPTER_RELATIONS))
def test_output_around_the_adapter_is_refused(sandbox, writer, out):
    argv, flag = WRITERS[writer]
    relation, role = ADAPTER_RELATIONS[out]
    _refused(sandbox, argv(out.format(abs=sandbox)), flag, relation, role)


@pytest.mark.parametrize("writer", WITH_BASE)
@pytest.mark.parametrize("out", list(BASE_RELATIONS))
def test_output_around_the_base_is_refused(sandbox, writer, out):
    argv, flag = WRITERS[writer]
    relation, role = BASE_RELATIONS[out]
    role = "--base model" if writer.startswith("convert") else role
    _refused(sandbox, argv(out), flag, relation, role)


def test_human_message_names_the_input_and_the_flag(sandbox):
    res = invoke("merge", "./work/base", "./work/lora", "--output", "./work/base", "--force")
    assert res.code == 2 and "Traceback" not in res.stderr
    assert "error: --output work/base: is the base model ./work/base, an input of this command" in res.stderr
    assert "hint: Write the output elsewhere: --force replaces an old output, never an input" in res.stderr


def test_unused_base_of_to_adapter_is_kept_too(sandbox):
    before = tree_hash(sandbox)
    res = invoke("merge", "--to-adapter", "work/base", "work/lora", "work/lora2", "-o", "work/base", "--force")
    assert res.code == 2 and "base model (unused by --to-adapter)" in res.stderr
    assert tree_hash(sandbox) == before


# ----- allowed: a subfolder of an adapter folder; --force replaces an old output --------------------
@pytest.mark.parametrize("writer", list(WRITERS))
def test_subfolder_of_the_adapter_is_written_and_force_replaces_it(sandbox, writer):
    """The adapter's reads use only the files at the top of its folder, so an output in a
    subfolder leaves them unchanged; a second run with --force replaces that old output."""
    argv, _ = WRITERS[writer]
    out = "work/lora/exports/lora.gguf" if writer.endswith("gguf") else "work/lora/out"
    before = tree_hash(sandbox)
    first = invoke(*argv(out))
    assert first.code == 0, first.stderr
    again = invoke(*argv(out))
    assert again.code == 2 and "already exists" in again.stderr  # an old output needs --force
    forced = invoke(*argv(out), "--force")
    assert forced.code == 0, forced.stderr
    after = tree_hash(sandbox)
    new = {k for k in after if k not in before}
    assert all(k.startswith(("work/lora/exports", "work/lora/out")) for k in new), new
    assert {k: after[k] for k in before} == before  # every input file byte for byte


def test_new_file_at_the_top_of_the_adapter_is_refused(sandbox):
    argv, flag = WRITERS["convert --to gguf"]
    _refused(sandbox, argv("work/lora/lora.gguf"), flag, "is inside the", "adapter")


def test_force_replaces_an_old_output_beside_the_inputs(sandbox):
    for writer, (argv, _) in WRITERS.items():
        out = f"old-{writer.replace(' ', '_')}" + (".gguf" if writer.endswith("gguf") else "")
        (sandbox / out).mkdir() if not out.endswith(".gguf") else (sandbox / out).write_text("old")
        if not out.endswith(".gguf"):
            (sandbox / out / "stale.txt").write_text("old")
        inputs = {k: v for k, v in tree_hash(sandbox).items() if k.startswith("work/")}
        assert invoke(*argv(out)).code == 2  # exists: needs --force
        res = invoke(*argv(out), "--force")
        assert res.code == 0, (writer, res.stderr)
        assert not (sandbox / out / "stale.txt").exists() and (sandbox / out).stat().st_size > 3
        assert {k: v for k, v in tree_hash(sandbox).items() if k.startswith("work/")} == inputs


# ----- the other inputs: --extract, --pissa-init, --from gguf|mlx, serve --convert-dir ------------
def test_extract_source_and_base_are_kept(sandbox):
    shutil.copytree(sandbox / "work" / "base", sandbox / "work" / "tuned")
    argv = ["convert", "--extract", "work/base", "work/tuned"]
    _refused(sandbox, [*argv, "work/tuned", "--rank", "2"], "OUT", "is the", "source model (fine-tuned)")
    _refused(sandbox, [*argv, "work/base/x", "--rank", "2"], "OUT", "is inside the", "--extract base model")
    _refused(sandbox, [*argv, "work", "--rank", "2"], "OUT", "contains the", "source model")


def test_pissa_init_is_kept(sandbox):
    shutil.copytree(sandbox / "work" / "lora", sandbox / "work" / "init")
    _refused(sandbox, ["convert", "--pissa-init", "work/init", "work/lora", "work/init"], "OUT", "is the",
             "--pissa-init adapter")


def test_gguf_and_mlx_sources_are_kept(sandbox):
    assert invoke("convert", "work/lora", "exported.gguf", "--to", "gguf", "--base", "work/base").code == 0
    assert invoke("convert", "work/lora", "exported-mlx", "--to", "mlx", "--base", "work/base").code == 0
    _refused(sandbox, ["convert", "--from", "gguf", "--base", "work/base", "exported.gguf", "exported.gguf"],
             "OUT", "is the", "source GGUF adapter")
    _refused(sandbox, ["convert", "--from", "gguf", "--base", "work/base", "exported.gguf", "."],
             "OUT", "contains the", "source GGUF adapter")
    _refused(sandbox, ["convert", "--from", "mlx", "exported-mlx", "exported-mlx"], "OUT", "is the",
             "source MLX adapter")


def test_serve_converted_copies_never_land_in_an_input(sandbox):
    """serve converts a DoRA adapter for vLLM into --convert-dir: inside the base is refused
    before anything is made there; inside the adapter's own folder is a subfolder (allowed)."""
    shutil.copytree(REPO / "examples" / "tiny-base", sandbox / "tiny")
    shutil.copytree(REPO / "examples" / "dragon-dora", sandbox / "dora")
    args = ["serve", "tiny", "-a", "d=dora", "--python", sys.executable, "--dry-run"]
    for convert_dir in ("tiny/converted", "tiny"):
        _refused(sandbox, [*args, "--convert-dir", convert_dir], "--convert-dir", "is inside the", "base model",
                 force=False)
    dora = tree_hash(sandbox / "dora")
    res = invoke("--json", *args, "--convert-dir", "dora/vllm")
    assert res.code == 0, res.stdout + res.stderr
    copy = Path(res.json["adapters"][0]["path"])
    assert copy.parent == Path("dora/vllm") and (copy / "adapter_config.json").is_file()
    assert {k: v for k, v in tree_hash(sandbox / "dora").items() if not k.startswith("vllm")} == dora


# ----- Hub ids: the cache entry (models--org--name) is the input -----------------------------------
def test_hub_cache_entry_is_never_an_output(hub, pristine, tmp_path, monkeypatch):
    root = make_sandbox(pristine, tmp_path / "s")
    monkeypatch.chdir(root)
    hub.seed("testuser/lora", root / "work" / "lora")
    hub.seed("testuser/base", root / "work" / "base")
    assert invoke("convert", "testuser/lora", "ok", "--rank", "2").code == 0  # fills the cache
    cache = hub.home / "hub"
    entry = cache / "models--testuser--lora"
    snap = next((entry / "snapshots").iterdir())
    refusals = {
        str(entry): "is the Hugging Face cache entry",
        str(entry) + "/": "is the Hugging Face cache entry",
        str(cache): "contains the Hugging Face cache entry",
        str(hub.home): "contains the Hugging Face cache entry",
        str(entry / "blobs"): "is inside the Hugging Face cache entry",
        str(snap): "is the source adapter testuser/lora",
        str(snap / "r2"): "is inside the Hugging Face cache entry",  # no subfolder in the cache
    }
    before = tree_hash(hub.home)
    for out, words in refusals.items():
        res = invoke("--json", "convert", "testuser/lora", out, "--rank", "2", "--force")
        assert res.code == 2 and res.json["error"]["type"] == "output_is_input", (out, res.stdout)
        assert words in res.json["error"]["message"] and "testuser/lora" in res.json["error"]["message"], out
        assert tree_hash(hub.home) == before, out
    assert invoke("merge", "testuser/base", "work/lora", "-o", "ok-merged").code == 0
    before = tree_hash(hub.home)
    res = invoke("merge", "testuser/base", "work/lora", "-o", str(cache / "models--testuser--base"), "--force")
    assert res.code == 2 and "cache entry" in res.stderr and "base model testuser/base" in res.stderr
    assert tree_hash(hub.home) == before


# ----- plans say what they would replace ----------------------------------------------------------
def test_dry_run_plans_list_what_they_replace(sandbox):
    res = invoke("--json", "merge", "work/base", "work/lora", "-o", "merged", "--dry-run")
    assert res.code == 0 and res.json["replaces"] == [{"path": str(sandbox / "merged"), "exists": False}]
    (sandbox / "merged").mkdir()
    res = invoke("--json", "merge", "work/base", "work/lora", "-o", "merged", "--dry-run")
    assert res.json["replaces"] == [{"path": str(sandbox / "merged"), "exists": True}]
    assert "output " + str(sandbox / "merged") + " (exists" in invoke(
        "merge", "work/base", "work/lora", "-o", "merged", "--dry-run").stdout
    res = invoke("--json", "merge", "--to-adapter", "work/lora", "work/lora2", "-o", "ab", "--dry-run")
    assert res.json["replaces"] == [{"path": str(sandbox / "ab"), "exists": False}]
    before = tree_hash(sandbox)
    res = invoke("--json", "merge", "work/base", "work/lora", "-o", "work", "--dry-run")
    assert res.code == 2 and res.json["error"]["type"] == "output_is_input"  # a dry run tells the truth
    assert tree_hash(sandbox) == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "refused port"])
def test_push_dry_run_without_network_does_not_wait(pristine, tmp_path, offline):
    """No retries: one line saying the remote was not compared, then the plan. The subprocess
    timeout bounds it (huggingface_hub's retries took ~25 s)."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_x", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if offline == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    res = run_cli("--json", "push", pristine / "lora", "me/lora", "--dry-run", env=env, timeout=20)
    assert res.code == 0, res.stderr
    notes = [line for line in res.stderr.splitlines() if "was not compared" in line]
    assert len(notes) == 1 and "Retry" not in res.stderr, res.stderr
    assert res.json["remote"]["compared"] is False
    assert {r["exists"] for r in res.json["replaces"]} == {None}
    assert [r["path"] for r in res.json["replaces"]] == [f["path"] for f in res.json["files"]]


# ----- the property: random output paths around the inputs ----------------------------------------
SEGMENTS = ["work", "lora", "base", "link", "outlink", "..", ".", "sub", "adapter_model.safetensors",
            "config.json", "new"]
FUZZ_WRITERS = {  # argv, and the inputs: (path, nested)
    "convert --rank": (lambda out: ["convert", "work/lora", out, "--rank", "2", "--force"],
                       [("work/lora", True)]),
    "merge": (lambda out: ["merge", "work/base", "work/lora", "-o", out, "--force"],
              [("work/base", False), ("work/lora", True)]),
}


def expected_refusal(out: str, inputs: list[tuple[str, bool]]) -> bool:
    """The rule, written again with strings: the spots a write at ``out`` touches (the entry in its
    real parent folder, and where that leads) against each input's real path."""
    parts = [p for p in out.split("/") if p not in ("", ".")]
    full = ("/" if out.startswith("/") else "") + "/".join(parts) if parts else "."
    if not parts or parts[-1] == "..":
        spots = {os.path.realpath(full)}
    else:
        head = os.path.dirname(full) or "."
        spots = {os.path.join(os.path.realpath(head), parts[-1]), os.path.realpath(full)}
    for path, nested in inputs:
        real = os.path.realpath(path)
        for spot in spots:
            if spot == real or real.startswith(spot.rstrip("/") + "/"):
                return True  # is or contains the input
            if spot.startswith(real + "/"):  # inside: only a subfolder of an adapter folder
                top = os.path.join(real, spot[len(real) + 1 :].split("/")[0])
                if not nested or os.path.isfile(top):
                    return True
    return False


@FUZZ_SLOW
@given(writer=st.sampled_from(sorted(FUZZ_WRITERS)),
       parts=st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4),
       absolute=st.booleans(), slash=st.booleans())
def test_random_output_paths_around_the_inputs(pristine, tmp_path, monkeypatch, writer, parts, absolute,
                                                slash):
    """Refused exactly when the oracle says so (exit 2, output_is_input), whatever else happens
    (written, or refused for another reason); every input file byte for byte as before."""
    count("random output paths around the inputs")
    root = make_sandbox(pristine, tmp_path / "fuzz")
    monkeypatch.chdir(root)
    try:
        out = "/".join(parts) + ("/" if slash else "")
        if absolute:
            out = f"{root}/{out}"
        if not os.path.realpath(out).startswith(str(tmp_path) + "/"):
            return  # climbs out of the test's folder: not ours to write
        argv, inputs = FUZZ_WRITERS[writer]
        refuse = expected_refusal(out, inputs)
        kept = {k: v for k, v in tree_hash(root).items() if k.startswith(tuple(p for p, _ in inputs))}
        res = invoke("--json", *argv(out))
        doc = res.json
        is_refusal = not doc["ok"] and doc["error"]["type"] == "output_is_input"
        assert is_refusal == refuse, (out, doc)
        assert res.code == 2 or not is_refusal
        now = tree_hash(root)
        assert {k: now.get(k) for k in kept} == kept, out  # every input file byte for byte
    finally:
        os.chdir(tmp_path)  # never stay in a removed folder
        shutil.rmtree(root)  # the next example starts from a fresh sandbox
