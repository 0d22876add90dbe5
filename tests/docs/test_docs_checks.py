"""The transcript checker itself, and what the docs must not hold.

- A changed character in a transcript's output fails the check (run on a mutated copy).
- Every block that shows an ``$ adapterctl`` command is a ```console transcript (so it runs), and
  the blocks that never run are few and say why.
- No committed text file shows a path of the machine it was written on.
- The site's navigation names every page, and the CLI reference is the app's.
"""

from __future__ import annotations

import random
import re
import subprocess

import pytest

from tests.docs.transcripts import (
    REPO,
    Workdir,
    console_blocks,
    differences,
    fenced_blocks,
    mask,
    pages,
    run_until_same,
)

#: blocks that never run (illustrations needing a fixture model or a running server); each has a
#: reason in its fence. Keep this small: a new one should rather run.
MAX_NORUN = 2


def _first_fast_block():
    """README's first transcript: `inspect`, torch-free and without masked parts."""
    block = console_blocks(REPO / "README.md")[0]
    assert block.commands[0].line.startswith("adapterctl inspect "), block.commands[0].line
    return block


def test_a_changed_character_fails_the_check(tmp_path):
    block = _first_fast_block()
    work = Workdir(tmp_path / "page")
    actual = work.run(block)
    assert differences(block, actual) == [], "the README's first transcript is stale: pytest tests/docs --update"
    expected = block.commands[0].output
    positions = [i for i, c in enumerate(expected) if c.isalnum()]
    for i in random.Random(0).sample(positions, 5):
        mutated = expected[:i] + ("x" if expected[i] != "x" else "y") + expected[i + 1 :]
        block.commands[0].output = mutated
        assert differences(block, actual), f"a change at {i} ({expected[i]!r}) went unnoticed"
    block.commands[0].output = expected + "\nan extra line"
    assert differences(block, actual)


def test_rerun_passes_once_a_run_prints_the_transcript_and_fails_a_real_difference(tmp_path):
    """rerun=N: a tool whose end of output can be lost runs again; one whole run is enough, and a
    difference that every run shows still fails (after N + 1 runs)."""
    page = tmp_path / "page.md"
    # prints a cut line twice, then the whole one: as llama.cpp's logger does when it loses a tail
    cmd = "n=$(cat runs 2>/dev/null || echo 0); echo $((n+1)) > runs; [ $n -ge 2 ] && echo 'a whole line' || echo 'a who'"
    for reruns, shown, runs, passed in ((2, "a whole line", 3, True), (1, "a whole line", 2, False),
                                        (3, "another line", 4, False)):
        page.write_text(f"```console requires=llama.cpp rerun={reruns}\n$ {cmd}\n{shown}\n```\n")
        (block,) = console_blocks(page)
        work = Workdir(tmp_path / f"work-{reruns}")
        actual, report = run_until_same(work, block)
        assert (report == []) is passed and (work.root / "runs").read_text().strip() == str(runs)
        assert actual == ["a whole line" if runs >= 3 else "a who"]
    page.write_text(f"```console rerun=2\n$ {cmd}\na whole line\n```\n")
    with pytest.raises(ValueError, match="requires=llama.cpp"):
        run_until_same(Workdir(tmp_path / "work-plain"), console_blocks(page)[0])


def test_masks_hide_timings_and_temporary_paths_only():
    assert mask("loaded in 2.62s; 0.0s on cpu") == mask("loaded in 9.01s; 0.4s on cpu")
    assert mask('{"elapsed_s": 2.062, "tokens_per_second": 2.91}') == mask('{"elapsed_s": 0.3, "tokens_per_second": 19}')
    assert mask("into /tmp/adapterctl-vllm-swc_pnve/x") == mask("into /tmp/adapterctl-vllm-abc/x")
    assert mask("39 tensors (28 merged)") != mask("39 tensors (27 merged)")
    assert mask("7.6 MB") != mask("7.5 MB")


def test_every_adapterctl_command_is_in_a_console_block():
    offenders = []
    for page in pages():
        for start, _, _, info, body in fenced_blocks(page.read_text()):
            shown = [line for line in body if line.startswith("$ ")]
            if shown and info.split(" ", 1)[0] != "console":
                offenders.append(f"{page.relative_to(REPO)}:{start + 1} ({info or 'no language'})")
    assert not offenders, "transcripts must be ```console blocks so that tests/docs runs them: " + ", ".join(offenders)


def test_blocks_that_never_run_are_few_and_say_why():
    norun = [b for page in pages() for b in console_blocks(page) if "norun" in b.info]
    for block in norun:
        assert block.norun and len(block.norun) > 20, f"{block.where()}: norun needs a reason"
    assert len(norun) <= MAX_NORUN, [b.where() for b in norun]
    ran = [b for page in pages() for b in console_blocks(page) if "norun" not in b.info]
    assert len(ran) > 2 * len(norun)


def test_blocks_that_rerun_are_llama_cpp_tools_and_few():
    """rerun= only where llama.cpp's logger can lose the end of a run (tests/docs/transcripts.py)."""
    blocks = [b for page in pages() for b in console_blocks(page)]
    rerun = [b for b in blocks if b.reruns]  # reruns raises where rerun= is misused
    assert 0 < len(rerun) <= 4, [b.where() for b in rerun]
    for block in rerun:
        assert all("/llama-" in c.line for c in block.commands), block.where()


# --- no machine paths -----------------------------------------------------------------------

#: an absolute path of a machine (a home, a work tree, a temporary folder named by hand); the
#: temporary names adapterctl and Python's tempfile make (masked in transcripts) are allowed
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:root|home|work|Users|tmp/(?!adapterctl-[\w-]+|tmp[\w]{8}))[\w./-]*")
TEXT = (".md", ".txt", ".json", ".jsonl", ".yml", ".yaml", ".toml", ".cfg", ".bash", ".fish", "")


def _committed_text_files():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in listed.stdout.split("\0"):
        path = REPO / name
        top = name.split("/", 1)[0]
        if not name or top in ("tests", "adapterctl", ".ci") or not path.is_file() or path.is_symlink():
            continue
        if name.startswith("benchmarks/") and name.endswith(".py"):
            continue  # the benchmarks' own usage lines (flock /tmp/adapterctl-bench.lock)
        if path.suffix in TEXT or name.startswith(("docs/", "completions/")):
            yield name, path


def test_no_machine_path_in_committed_text():
    offenders = []
    for name, path in _committed_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for m in MACHINE_PATH.finditer(line):
                offenders.append(f"{name}:{n}: {m.group(0)}")
    assert not offenders, "absolute paths of a machine (write them relative, or ~):\n" + "\n".join(offenders)


@pytest.mark.parametrize("text,found", [
    ("wrote /tmp/qs/demo/merged", True), ("see /root/.cache/x", True), ("/work/main/.venv", True),
    ("/home/me/lora", True), ("into /tmp/adapterctl-vllm-swc_pnve/x", False), ("~/.cache/adapterctl", False),
    ("examples/tiny-base", False), ("https://host/tmp/x", False),
])
def test_machine_path_pattern(text, found):
    assert bool(MACHINE_PATH.search(text)) is found


# --- the site ------------------------------------------------------------------------------

def test_nav_names_every_page():
    nav = (REPO / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", nav, re.M))
    pages_on_disk = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    #: written by other work in parallel; the nav names them once they exist
    later = {"guides/eval.md", "guides/ray.md", "explanation/merge-performance.md"}
    assert pages_on_disk - later <= listed, sorted(pages_on_disk - listed)
    assert listed <= pages_on_disk | later, sorted(listed - pages_on_disk)


def test_cli_reference_is_the_app():
    """docs/reference/cli.md is Typer's Markdown of the app: every command, option and help text."""
    from adapterctl.cli.app import COMMANDS
    from adapterctl.cli.reference import PAGE, render

    current = render()
    assert (REPO / PAGE).read_text() == current, f"{PAGE} is stale: python -m adapterctl.cli.reference"
    for name in COMMANDS:
        assert f"## `adapterctl {name}`" in current


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250
