"""A Hugging Face Hub stand-in on loopback, so that pushing and downloading are tested end to end with no network.

`HubServer` answers the HTTP calls that huggingface_hub 2.4's `create_repo`, `create_branch`, `create_commit` /
`upload_folder`, `model_info` / `repo_info`, `list_repo_tree`, `snapshot_download` and `hf_hub_download` make, which is
what `llava push` and `from_pretrained(repo_id)` (with or without `trust_remote_code`) need. Point a process at it with
`HF_ENDPOINT=server.url`.

What it covers:
- `POST /api/repos/create` (model repos named `namespace/name`, `visibility: private`; 409 when the repo exists; a new
  repo has one empty commit on `main`), `POST /api/models/{repo}/branch/{branch}` (from `main` or `startingPoint`;
  409 when it exists), `POST /api/validate-yaml` (the card's front matter must be a YAML mapping).
- `POST /api/models/{repo}/preupload/{rev}`, which answers `uploadMode: "regular"` for every file, so the client
  sends every file base64-encoded inside the commit and no LFS or Xet transfer takes place; and
  `POST /api/models/{repo}/commit/{rev}` with `header` and `file` lines (adds and overwrites).
- `GET /api/models/{repo}[/revision/{rev}]` (`sha`, `private`, `siblings`), `GET /api/models/{repo}/tree/{rev}[/path]`
  (`recursive`, one page), and `HEAD`/`GET /{repo}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag` (the git blob
  sha1) and `Content-Length`, or 404 with `X-Error-Code: EntryNotFound` / `RevisionNotFound` / `RepoNotFound`, as the
  Hub answers. It sends no Xet headers and no redirects, so the client downloads over plain HTTP.
- Auth: every write needs `Authorization: Bearer <token>`: none or an unknown one gets 401, `read_token` gets 403.
  Reads need no token on public repos; a private repo answers 401 (`RepoNotFound`) without a valid one.

What it does not cover: LFS and Xet transfers (the real Hub sends binary and large files through them), deletions,
copies, pull requests, `parentCommit`, Range requests, pagination, tags, dataset and Space repos, `whoami`, rate
limits; an unknown route or commit operation is answered 400/404 with a message saying the server lacks it. Blobs are
kept on disk under `root`, named by their git sha1; commits and trees are kept in memory.
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
REV = r"(?P<rev>[^/]+)"  # quoted by the client, so a branch like `refs/pr/1` arrives as one segment


class HubError(Exception):
    """An HTTP error answer, with the `X-Error-Code` the client turns into a specific exception."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None, **fields: str):
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.fields = status, message, code, commit, fields


@dataclass
class Repo:
    """A model repo: where each branch points, and the tree of every commit."""

    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    trees: dict[str, dict[str, str]] = field(default_factory=dict)  # commit sha -> {path: blob sha1}

    def resolve(self, revision: str) -> str:
        """A branch name or a commit sha, as the commit sha."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.trees:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def git_blob_sha1(content: bytes) -> str:
    """The id git (and the Hub's ETag for non-LFS files) gives a file's content."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubServer:
    """The Hub stand-in: `with HubServer(tmp_path) as hub: ...` serves on `hub.url` from a background thread.

    Args:
        root (`Path`): where blobs are written.
        token (`str`): the token allowed to write.
        read_token (`str`): a token that may read private repos but whose writes are refused with 403.
    """

    def __init__(self, root: str | Path, token: str = "hf_test_write", read_token: str = "hf_test_read"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token, self.read_token = token, read_token
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []  # "METHOD /path STATUS", in the order they were answered
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.hub = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The contents of a repo at a revision, as the server stores them."""
        with self.lock:
            repo = self.repos[repo_id]
            tree = repo.trees[repo.resolve(revision)]
        return {path: (self.root / blob).read_bytes() for path, blob in tree.items()}

    # Writes. The handler has checked the token.

    def create_repo(self, body: dict) -> dict:
        if body.get("type", "model") != "model":
            raise HubError(400, f"This test server holds model repos only, not {body['type']!r} ones.")
        if not body.get("organization"):
            raise HubError(400, "This test server needs a namespace: name repos `namespace/name`.")
        repo_id = f"{body['organization']}/{body['name']}"
        with self.lock:
            if repo_id in self.repos:
                # The Hub still says where the repo is, and `create_repo(exist_ok=True)` reads it.
                raise HubError(409, "You already created this model repo", url=f"{self.url}/{repo_id}")
            repo = self.repos[repo_id] = Repo(private=body.get("visibility") == "private")
            self._commit(repo, "main", {}, "initial commit")
        return {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}

    def create_branch(self, repo_id: str, branch: str, body: dict) -> dict:
        with self.lock:
            repo = self._repo(repo_id)
            if branch in repo.branches:
                raise HubError(409, f"Branch {branch} already exists")
            repo.branches[branch] = repo.resolve(body.get("startingPoint") or "main")
        return {}

    def preupload(self, repo_id: str, revision: str, body: dict) -> dict:
        with self.lock:
            self._repo(repo_id).resolve(revision)
        files = [{"path": file["path"], "uploadMode": "regular", "shouldIgnore": False} for file in body["files"]]
        return {"files": files, "commitOid": None}

    def commit(self, repo_id: str, branch: str, lines: list[dict]) -> dict:
        summary, added = "", {}
        for line in lines:
            if line["key"] == "header":
                summary = line["value"]["summary"]
            elif line["key"] == "file" and line["value"].get("encoding") == "base64":
                content = base64.b64decode(line["value"]["content"])
                blob = git_blob_sha1(content)
                # Written aside and renamed, since another request may be reading the same blob meanwhile.
                staging = self.root / f"{blob}.{threading.get_ident()}"
                staging.write_bytes(content)
                staging.replace(self.root / blob)
                added[line["value"]["path"]] = blob
            else:
                raise HubError(400, f"This test server does not implement the commit operation {line['key']!r}.")
        with self.lock:
            repo = self._repo(repo_id)
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            sha = self._commit(repo, branch, added, summary)
        return {"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}

    def _commit(self, repo: Repo, branch: str, added: dict[str, str], summary: str) -> str:
        parent = repo.branches.get(branch, "")
        tree = {**repo.trees.get(parent, {}), **added}
        sha = hashlib.sha1(json.dumps([parent, summary, sorted(tree.items())]).encode()).hexdigest()
        repo.trees[sha] = tree
        repo.branches[branch] = sha
        return sha

    # Reads. `anonymous`: no token came with the request (an unknown one is refused by the handler).

    def model_info(self, repo_id: str, revision: str, anonymous: bool) -> dict:
        with self.lock:
            repo = self._repo(repo_id, anonymous)
            sha = repo.resolve(revision)
            tree = dict(repo.trees[sha])
        siblings = [
            {"rfilename": path, "size": (self.root / blob).stat().st_size, "blobId": blob}
            for path, blob in sorted(tree.items())
        ]
        return {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private, "siblings": siblings}

    def tree(self, repo_id: str, revision: str, folder: str, recursive: bool, anonymous: bool) -> list[dict]:
        with self.lock:
            repo = self._repo(repo_id, anonymous)
            tree = dict(repo.trees[repo.resolve(revision)])
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries: dict[str, dict] = {}
        for path, blob in sorted(tree.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            folders = parts[:-1] if recursive else parts[:1] if len(parts) > 1 else []
            for depth in range(1, len(folders) + 1):
                name = prefix + "/".join(folders[:depth])
                entries[name] = {"type": "directory", "path": name, "oid": hashlib.sha1(name.encode()).hexdigest()}
            if recursive or len(parts) == 1:
                size = (self.root / blob).stat().st_size
                entries[path] = {"type": "file", "path": path, "size": size, "oid": blob}
        if prefix and not entries:
            raise HubError(404, f"{folder} does not exist at {revision}", "EntryNotFound")
        return list(entries.values())

    def resolve(self, repo_id: str, revision: str, path: str, anonymous: bool) -> tuple[bytes, dict[str, str]]:
        with self.lock:
            repo = self._repo(repo_id, anonymous)
            sha = repo.resolve(revision)
            blob = repo.trees[sha].get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path} at {revision}", "EntryNotFound", commit=sha)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{blob}"', "Content-Type": "application/octet-stream"}
        return (self.root / blob).read_bytes(), headers

    def _repo(self, repo_id: str, anonymous: bool = False) -> Repo:
        """The repo, if the caller may see it: the Hub hides a private repo behind 401 from anonymous reads."""
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        if repo.private and anonymous:
            raise HubError(401, f"Repository {repo_id} not found", "RepoNotFound")
        return repo


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects; every answer has a length

    WRITES = [
        (re.compile(r"^/api/repos/create$"), lambda hub, match, body: hub.create_repo(body)),
        (
            re.compile(rf"^/api/models/{REPO}/branch/{REV}$"),
            lambda hub, match, body: hub.create_branch(match["repo"], unquote(match["rev"]), body),
        ),
        (
            re.compile(rf"^/api/models/{REPO}/preupload/{REV}$"),
            lambda hub, match, body: hub.preupload(match["repo"], unquote(match["rev"]), body),
        ),
        (
            re.compile(rf"^/api/models/{REPO}/commit/{REV}$"),
            lambda hub, match, body: hub.commit(match["repo"], unquote(match["rev"]), body),
        ),
    ]
    INFO = re.compile(rf"^/api/models/{REPO}(?:/revision/{REV})?$")
    TREE = re.compile(rf"^/api/models/{REPO}/tree/{REV}(?:/(?P<path>.*))?$")
    RESOLVE = re.compile(rf"^/{REPO}/resolve/{REV}/(?P<path>.+)$")

    def log_message(self, format: str, *args) -> None:
        pass  # the test output stays clean; `HubServer.requests` keeps the log instead

    def do_POST(self) -> None:
        self._answer(self._post)

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_HEAD(self) -> None:
        self._answer(self._get, with_body=False)

    def _answer(self, route, with_body: bool = True) -> None:
        hub: HubServer = self.server.hub
        url = urlsplit(self.path)
        headers: dict[str, str] = {}
        try:
            status, payload = 200, route(hub, url.path, parse_qs(url.query), headers)
        except HubError as error:
            # `error` for the client's message, `errors` for `validate-yaml`'s, the headers for its exception type.
            status = error.status
            payload = {"error": error.message, "errors": [{"message": error.message}], **error.fields}
            headers["X-Error-Message"] = error.message
            if error.code:
                headers["X-Error-Code"] = error.code
            if error.commit:
                headers["X-Repo-Commit"] = error.commit
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        hub.requests.append(f"{self.command} {url.path} {status}")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if with_body:
            self.wfile.write(payload)

    def _token(self) -> str | None:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None

    def _post(self, hub: HubServer, path: str, query: dict, headers: dict) -> object:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if path == "/api/validate-yaml":
            return validate_card_metadata(json.loads(raw)["content"])
        for pattern, action in self.WRITES:
            if (match := pattern.match(path)) is None:
                continue
            token = self._token()
            if token == hub.read_token:
                raise HubError(403, "You don't have the rights to write to this repository (read-only token)")
            if token != hub.token:
                raise HubError(401, "Invalid credentials in Authorization header")
            if query.get("create_pr"):
                raise HubError(400, "This test server does not implement pull requests.")
            if self.headers.get("Content-Type") == "application/x-ndjson":
                body = [json.loads(line) for line in raw.splitlines() if line.strip()]
            else:
                body = json.loads(raw or b"{}")
            return action(hub, match, body)
        raise HubError(404, f"This test server does not implement POST {path}.")

    def _get(self, hub: HubServer, path: str, query: dict, headers: dict) -> object:
        token = self._token()
        if token is not None and token not in (hub.token, hub.read_token):
            raise HubError(401, "Invalid credentials in Authorization header")
        anonymous = token is None
        if match := self.INFO.match(path):
            return hub.model_info(match["repo"], unquote(match["rev"] or "main"), anonymous)
        if match := self.TREE.match(path):
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            folder = unquote(match["path"] or "")
            return hub.tree(match["repo"], unquote(match["rev"]), folder, recursive, anonymous)
        if match := self.RESOLVE.match(path):
            revision, file = unquote(match["rev"]), unquote(match["path"])
            content, file_headers = hub.resolve(match["repo"], revision, file, anonymous)
            headers.update(file_headers)
            return content
        raise HubError(404, f"This test server does not implement {self.command} {path}.")


def validate_card_metadata(content: str) -> dict:
    """What `/api/validate-yaml` checks here: a card's front matter, if it has one, is a YAML mapping."""
    match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
    if match is not None:
        try:
            metadata = yaml.safe_load(match[1])
        except yaml.YAMLError as error:
            raise HubError(400, f"Invalid YAML in the card's metadata: {error}") from error
        if not isinstance(metadata, dict):
            raise HubError(400, "The card's metadata is not a YAML mapping.")
    return {"errors": [], "warnings": []}


__all__ = ["HubServer"]
