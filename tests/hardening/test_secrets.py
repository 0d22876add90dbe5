"""A known token string never appears anywhere adapterctl writes: stdout, stderr, ``--json``,
``--debug`` tracebacks, model cards and other files on the Hub, output folders, the cache.
Each scenario runs the real entry point in a subprocess, with good and with refused tokens."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import run_cli

SECRET = "hf_SECRETtoken1234567890"
BAD_SECRET = "hf_SECRETbadtoken0987654321"  # not known to the server: refused with 401


@pytest.fixture
def lora(peft_adapter, tmp_path):
    return shutil.copytree(peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"]),
                           tmp_path / "lora")


def _scan_files(root, secrets):
    leaks = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            leaks += [f"{p}: {s}" for s in secrets if s.encode() in data]
    return leaks


def test_known_token_never_leaks(hub, lora, tiny_models, tmp_path):
    hub.state.tokens[SECRET] = "testuser"
    base = tiny_models["llama"]
    down = {"HF_ENDPOINT": "http://127.0.0.1:9"}
    by_env = {"HF_TOKEN": SECRET}
    runs = [  # (expected exit code, args, extra env)
        (0, ["--json", "push", lora, "testuser/lora", "--token", SECRET], {"HF_TOKEN": ""}),
        (0, ["--debug", "push", lora, "testuser/lora2"], by_env),
        (8, ["--debug", "push", lora, "otheruser/x", "--token", SECRET], {}),
        (8, ["--debug", "--json", "push", lora, "testuser/lora3", "--token", BAD_SECRET], {}),
        (8, ["--debug", "push", lora, "testuser/lora4"], {"HF_TOKEN": BAD_SECRET}),
        (0, ["--debug", "--json", "inspect", "testuser/lora", "--token", SECRET], {}),
        (0, ["--debug", "inspect", "testuser/lora"], by_env),
        (8, ["--debug", "inspect", "testuser/lora", "--token", BAD_SECRET], {}),
        (8, ["--debug", "--json", "inspect", "testuser/lora"], {"HF_TOKEN": BAD_SECRET}),
        (3, ["--debug", "inspect", "testuser/nope", "--token", SECRET], {}),
        (8, ["--debug", "push", lora, "testuser/lora5", "--token", SECRET], down),
        (8, ["--debug", "--json", "inspect", "testuser/nope"], {**down, **by_env}),
        (0, ["--debug", "convert", "--rank", "2", "testuser/lora", tmp_path / "conv",
             "--token", SECRET], {}),
        (8, ["--debug", "convert", "--rank", "2", "testuser/lora", tmp_path / "conv2",
             "--token", BAD_SECRET], {}),
        (0, ["--debug", "--json", "attach", base, "testuser/lora", "--token", SECRET], {}),
        (8, ["--debug", "attach", base, "testuser/lora", "--token", BAD_SECRET], {}),
        (0, ["generate", base, "--adapter", "testuser/lora", "--prompt", "hi", "-n", "2"], by_env),
        (0, ["merge", base, "testuser/lora", "--output", tmp_path / "merged", "--token", SECRET], {}),
        (0, ["merge", base, lora, "--output", tmp_path / "merged2", f"--token={SECRET}"], {}),
    ]
    results = [(code, run_cli(*args, env=env)) for code, args, env in runs]
    hub.state.fail("POST", r"/commit/", 500)  # a commit that fails after the upload
    (lora / "adapter_config.json").write_text((lora / "adapter_config.json").read_text() + " ")
    results.append((8, run_cli("--debug", "push", lora, "testuser/lora", "--token", SECRET)))
    for (code, res), args in zip(results, [r[1] for r in runs] + [["push (commit fails)"]]):
        assert res.code == code, (args, res.stderr[-2000:])
        for s in (SECRET, BAD_SECRET):
            assert s not in res.stdout and s not in res.stderr, (args, res.stderr[-2000:])
    assert any("Traceback" in r.stderr for _, r in results)  # --debug did print tracebacks
    for repo in hub.state.repos.values():  # model cards and every file of every commit
        for commit in repo.commits.values():
            for name, blob in commit.files.items():
                assert SECRET.encode() not in blob.data and BAD_SECRET.encode() not in blob.data, name
    assert _scan_files(tmp_path, (SECRET, BAD_SECRET)) == []  # outputs, HF_HOME cache, stubs
    assert "--token '***'" in (tmp_path / "merged" / "README.md").read_text()  # merge's card
    sent = {v for _, _, h in hub.state.requests for k, v in h.items() if k.lower() == "authorization"}
    assert f"Bearer {SECRET}" in sent  # the token was used, only never shown


def test_internal_error_quoting_the_token_is_redacted(monkeypatch, tmp_path):
    """Defence in depth: a library exception whose text holds the token (an internal error, and
    its --debug traceback) is printed with the token replaced by ***."""
    import adapterctl.io.hub.resolve as resolve

    def boom(ref, kind):
        raise RuntimeError(f"library said: Authorization: Bearer {SECRET}")

    monkeypatch.setattr(resolve, "resolve_local", boom)
    from tests.helpers import invoke

    for args in (["--debug", "inspect", "x/y", "--token", SECRET],
                 ["--json", "inspect", "x/y", f"--token={SECRET}"]):
        res = invoke(*args)
        assert res.code == 1 and "internal error" in res.stdout + res.stderr
        assert SECRET not in res.stdout + res.stderr and "Bearer ***" in res.stdout + res.stderr
    monkeypatch.setenv("HF_TOKEN", SECRET)
    res = invoke("--debug", "inspect", "x/y")
    assert res.code == 1 and SECRET not in res.stdout + res.stderr and "Traceback" in res.stderr
