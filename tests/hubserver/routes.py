"""Endpoints of the local test Hub (hub-protocol.md section 3.2), one function per endpoint."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from urllib.parse import parse_qs

from tests.hubserver.handler import Handler
from tests.hubserver.state import BAD_TOKEN_MESSAGE, Blob, Commit, HubError, Repo, git_sha1, is_lfs


def route(h: Handler, method: str, seg: list[str], raw_path: str) -> None:
    if seg[:1] == ["api"]:
        return _route_api(h, method, seg[1:])
    if seg[:1] == ["_lfs"] and len(seg) >= 2:
        return _lfs_object(h, method, seg[1], seg[2:] == ["verify"])
    if len(seg) >= 4 and seg[2] == "resolve":
        # the file path keeps its slashes; each segment was quoted separately
        return _resolve(h, method, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
    if len(seg) >= 2 and seg[1].endswith(".git") and seg[2:] == ["info", "lfs", "objects", "batch"]:
        return _lfs_batch(h, f"{seg[0]}/{seg[1][:-4]}")
    raise HubError(404, f"no route for {method} {raw_path}")


def _route_api(h: Handler, method: str, seg: list[str]) -> None:
    st = h.state
    if seg == ["whoami-v2"] and method == "GET":
        if h.user is None:
            raise HubError(401, BAD_TOKEN_MESSAGE)
        return h.send_json({"type": "user", "name": h.user, "orgs": [],
                            "auth": {"accessToken": {"role": "write"}}})
    if seg == ["validate-yaml"] and method == "POST":
        content = h.json_body().get("content", "")
        if "INVALID-YAML" in content:
            return h.send_json({"errors": [{"message": "bad metadata"}]}, 400)
        return h.send_json({"errors": [], "warnings": []})
    if seg == ["repos", "create"] and method == "POST":
        return _create_repo(h)
    if seg == ["repos", "delete"] and method == "DELETE":
        doc = h.json_body()
        repo_id = f"{doc.get('organization') or h.user}/{doc['name']}"
        h.writable(repo_id)
        with st.lock:
            del st.repos[repo_id]
        return h.send_json({})
    if len(seg) < 3 or seg[0] != "models":
        raise HubError(404, f"no route for /api/{'/'.join(seg)}")
    repo_id, rest = f"{seg[1]}/{seg[2]}", seg[3:]
    with st.lock:
        return _route_repo(h, method, repo_id, rest)


def _route_repo(h: Handler, method: str, repo_id: str, rest: list[str]) -> None:
    if method == "GET" and (not rest or rest[0] == "revision"):
        repo = h.readable(repo_id)
        commit = h.commit_of(repo, rest[1] if rest else "main")
        return h.send_json(_repo_info(repo, commit, h.query.get("blobs") == ["true"]))
    if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
        repo = h.readable(repo_id)
        return _tree(h, repo, h.commit_of(repo, rest[1]), "/".join(rest[2:]))
    if method == "GET" and rest == ["refs"]:
        repo = h.readable(repo_id)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                    for n, s in repo.branches.items() if not n.startswith("refs/")]
        doc = {"branches": branches, "converts": [], "tags": []}
        if h.query.get("include_prs") == ["1"]:
            doc["pullRequests"] = [{"name": n, "ref": n, "targetCommit": s}
                                   for n, s in repo.branches.items() if n.startswith("refs/pr/")]
        return h.send_json(doc)
    if method == "POST" and rest[:1] == ["paths-info"]:
        repo = h.readable(repo_id)
        commit = h.commit_of(repo, rest[1])
        wanted = parse_qs(h.body.decode()).get("paths", [])
        return h.send_json([b.tree_entry(p) for p, b in commit.files.items() if p in wanted])
    if method == "POST" and rest[:1] == ["preupload"]:
        repo = h.writable(repo_id)
        return _preupload(h, repo, rest[1])
    if method == "POST" and rest[:1] == ["commit"]:
        repo = h.writable(repo_id)
        return _commit(h, repo, "/".join(rest[1:]))
    if rest[:1] == ["branch"] and len(rest) >= 2:
        repo = h.writable(repo_id)
        return _branch(h, repo, method, "/".join(rest[1:]))
    raise HubError(404, f"no route for {method} /api/models/{repo_id}/{'/'.join(rest)}")


def _create_repo(h: Handler) -> None:
    if h.user is None:
        raise HubError(401, "You must be authenticated to create a repo")
    doc = h.json_body()
    owner = doc.get("organization") or h.user
    repo_id = f"{owner}/{doc['name']}"
    url = f"{h.base_url()}/{repo_id}"
    if owner != h.user:
        raise HubError(403, f"You don't have the rights to create a repo under {owner}")
    with h.state.lock:
        if repo_id in h.state.repos:
            return h.send_json({"error": "You already created this model repo", "url": url}, 409)
        private = doc.get("private") or doc.get("visibility") == "private"
        h.state.create(repo_id, private=bool(private))
    h.send_json({"url": url, "name": repo_id, "id": repo_id})


def _repo_info(repo: Repo, commit: Commit, blobs: bool) -> dict:
    siblings = []
    for path, blob in sorted(commit.files.items()):
        s: dict = {"rfilename": path}
        if blobs:
            s.update(size=len(blob.data), blobId=git_sha1(blob.data))
            if blob.lfs:
                s["lfs"] = {"sha256": blob.etag, "size": len(blob.data), "pointerSize": 134}
        siblings.append(s)
    return {"id": repo.repo_id, "modelId": repo.repo_id, "author": repo.owner, "sha": commit.sha,
            "private": repo.private, "gated": "auto" if repo.gated else False, "disabled": False,
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
            "tags": [], "downloads": 0, "likes": 0, "siblings": siblings}


def _tree(h: Handler, repo: Repo, commit: Commit, prefix: str) -> None:
    recursive = h.query.get("recursive") == ["true"]
    base = prefix + "/" if prefix else ""
    entries, dirs = [], set()
    for path, blob in sorted(commit.files.items()):
        if not path.startswith(base):
            continue
        rel = path[len(base):]
        if "/" in rel:
            parts = rel.split("/")
            for i in range(1, len(parts) if recursive else 2):
                dirs.add(base + "/".join(parts[:i]))
            if not recursive:
                continue
        entries.append(blob.tree_entry(path))
    if prefix and not entries and not dirs:
        raise HubError(404, f"{prefix} does not exist", "EntryNotFound",
                       {"X-Repo-Commit": commit.sha})
    entries += [{"type": "directory", "oid": git_sha1(d.encode()), "size": 0, "path": d}
                for d in sorted(dirs)]
    h.send_json(entries)


def _preupload(h: Handler, repo: Repo, rev: str) -> None:
    commit = repo.resolve(rev) if h.query.get("create_pr") != ["1"] else repo.resolve("main")
    files = []
    for f in h.json_body().get("files", []):
        sample = base64.b64decode(f.get("sample", ""))
        lfs = is_lfs(f["path"], sample) or f.get("size", 0) >= 10 * 1024 * 1024
        existing = commit.files.get(f["path"]) if commit else None
        files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                      "shouldIgnore": False, "oid": existing.etag if existing else None})
    h.send_json({"files": files, "commitOid": commit.sha if commit else None})


def _lfs_batch(h: Handler, repo_id: str) -> None:
    with h.state.lock:
        h.writable(repo_id)
    doc = h.json_body()
    objects = []
    for obj in doc.get("objects", []):
        out = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
        if obj["oid"] not in h.state.lfs:
            href = f"{h.base_url()}/_lfs/{obj['oid']}"
            out["actions"] = {"upload": {"href": href}, "verify": {"href": href + "/verify"}}
        objects.append(out)
    h.send_bytes(json.dumps({"transfer": "basic", "objects": objects}).encode(), 200,
                 {"Content-Type": "application/vnd.git-lfs+json"})


def _lfs_object(h: Handler, method: str, oid: str, verify: bool) -> None:
    if method == "PUT" and not verify:
        if "Authorization" in h.headers:
            raise HubError(400, "LFS PUT must not carry the Hub token")
        if hashlib.sha256(h.body).hexdigest() != oid:
            raise HubError(400, "sha256 mismatch")
        with h.state.lock:
            h.state.lfs[oid] = h.body
        return h.send_bytes(b"", 200, {"ETag": f'"{oid}"'})
    if method == "POST" and verify:
        if h.user is None:
            raise HubError(401, "verify needs auth")
        if oid not in h.state.lfs:
            raise HubError(404, f"object {oid} was never uploaded")
        return h.send_json({})
    raise HubError(405, "method not allowed")


def _commit(h: Handler, repo: Repo, rev: str) -> None:
    create_pr = h.query.get("create_pr") == ["1"]
    base = h.commit_of(repo, "main" if create_pr else rev)
    files, title, parent = dict(base.files), "", None
    for line in h.body.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        key, value = item["key"], item["value"]
        if key == "header":
            title, parent = value.get("summary", ""), value.get("parentCommit")
        elif key == "file":
            data = base64.b64decode(value["content"])
            files[value["path"]] = Blob(data, is_lfs(value["path"], data))
        elif key == "lfsFile":
            if value["oid"] not in h.state.lfs:
                raise HubError(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
            files[value["path"]] = Blob(h.state.lfs[value["oid"]], True)
        elif key == "deletedFile":
            files.pop(value["path"], None)
        elif key == "deletedFolder":
            files = {p: b for p, b in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
    if parent and parent != base.sha:
        raise HubError(412, "A commit has happened since. Please refresh and try again.")
    sha = h.state.new_sha()
    repo.commits[sha] = Commit(sha, files, title, base.sha)
    pr_url = None
    if create_pr:
        repo.prs += 1
        repo.branches[f"refs/pr/{repo.prs}"] = sha
        pr_url = f"{h.base_url()}/{repo.repo_id}/discussions/{repo.prs}"
    else:
        repo.branches[rev] = sha
    h.send_json({"success": True, "commitOid": sha, "commitUrl": f"{h.base_url()}/{repo.repo_id}/commit/{sha}",
                 "hookOutput": "", "pullRequestUrl": pr_url})


def _branch(h: Handler, repo: Repo, method: str, name: str) -> None:
    if method == "POST":
        if name in repo.branches:
            raise HubError(409, f"Reference refs/heads/{name} already exists")
        start = h.json_body().get("startingPoint") or "main"
        repo.branches[name] = h.commit_of(repo, start).sha
        return h.send_json({})
    if method == "DELETE":
        if name not in repo.branches or name == "main":
            raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
        del repo.branches[name]
        return h.send_json({})
    raise HubError(405, "method not allowed")


def _resolve(h: Handler, method: str, repo_id: str, rev: str, path: str) -> None:
    with h.state.lock:
        repo = h.readable(repo_id)
        if repo.gated and h.user != repo.owner:  # nobody else has been granted access
            raise HubError(403, f"Access to model {repo_id} is restricted", "GatedRepo")
        commit = h.commit_of(repo, rev)
        blob = commit.files.get(path)
    if blob is None:
        raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
    data, size = blob.data, len(blob.data)
    headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
    if blob.lfs:
        headers.update({"X-Linked-Etag": f'"{blob.etag}"', "X-Linked-Size": size})
    rng = h.headers.get("Range") or h.headers.get("range")
    if method == "GET" and rng:
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
        if not m:
            raise HubError(416, f"bad range {rng}")
        start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
        if start >= size:
            raise HubError(416, "range past end", headers={"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return h.send_bytes(data[start:end + 1], 206, headers)
    h.send_bytes(data, 200, headers, length=size)
