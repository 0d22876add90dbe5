"""The ``hub`` fixture: a local Hub server (tests/hubserver.py) and an environment pointing the
real huggingface_hub client and the real CLI at it, with a private HF_HOME."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hubserver import HubState, serve

USER, TOKEN = "testuser", "hf_testTOKEN_0123456789abcdef"
OTHER, OTHER_TOKEN = "otheruser", "hf_otherTOKEN_9876543210fedcba"


@dataclass
class Hub:
    endpoint: str
    state: HubState
    home: Path

    def seed(self, repo_id: str, folder: Path, **repo_kw) -> str:
        """A new repo holding ``folder``'s files, put in directly (no client); returns the sha."""
        self.state.create(repo_id, **repo_kw)
        return self.seed_commit(repo_id, folder)

    def seed_commit(self, repo_id: str, folder: Path, extra: dict[str, bytes] | None = None) -> str:
        """A new commit on main with ``folder``'s files (plus ``extra``); returns its sha."""
        from tests.hubserver import Blob, Commit, is_lfs

        repo = self.state.repos[repo_id]
        files = dict(repo.resolve("main").files)
        found = {p.relative_to(folder).as_posix(): p.read_bytes()
                 for p in sorted(folder.rglob("*")) if p.is_file()}
        for rel, data in {**found, **(extra or {})}.items():
            files[rel] = Blob(data, is_lfs(rel, data))
        sha = self.state.new_sha()
        repo.commits[sha] = Commit(sha, files, "seed", repo.branches["main"])
        repo.branches["main"] = sha
        return sha


@pytest.fixture
def hub(tmp_path, monkeypatch):
    running = serve({TOKEN: USER, OTHER_TOKEN: OTHER})
    home = tmp_path / "hf_home"
    env = {
        "HF_ENDPOINT": running.endpoint, "HF_TOKEN": TOKEN, "HF_HOME": str(home),
        "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # subprocess runs, and our own call-time reads
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(k, raising=False)
    import huggingface_hub.constants as c  # in-process: these were read at import

    monkeypatch.setattr(c, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(c, "HF_HOME", str(home))
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(c, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(c, "HF_HUB_ETAG_TIMEOUT", 5)
    yield Hub(running.endpoint, running.state, home)
    running.close()
