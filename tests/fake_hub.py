"""
An in-memory stand-in for the Hugging Face Hub's HTTP API, for tests without the internet.

It answers, at huggingface_hub's HTTP transport, the requests that `create_repo` and `upload_folder` (so
`Trainer.push_to_hub`) make: create a repository, ask how each file is uploaded ("preupload"), and commit. Everything
else is a 404 it records, so a test sees any call it does not expect.
"""

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import yaml
from huggingface_hub import constants
from huggingface_hub.utils import set_client_factory
from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook


REPO_ROUTE = re.compile(r"^/api/models/(?P<repo_id>[^/]+/[^/]+)/(?P<action>preupload|commit)/(?P<revision>[^/]+)$")


class FakeHub:
    """
    The Hub's repository and commit API over an in-memory store: `repos[repo_id][path] = content`.

    The preupload answer declares every file "regular", so contents travel base64-encoded inside the commit payload:
    the real Hub decides Git LFS / Xet storage by size and `.gitattributes`, which a tiny model does not need. Commits
    must therefore carry only regular files: an LFS pointer is refused.

    Failures on purpose: `fail_with(status, on=...)` answers `status` to every request whose path contains `on`;
    `go_offline()` refuses every connection, as an unreachable host does.
    """

    endpoint = "https://huggingface.co"
    user = "trl-var-tester"  # the namespace of a repository created without one
    token = "hf_fake_token"  # the only token it accepts

    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commit_messages: dict[str, list[str]] = {}
        self.requests: list[str] = []  # "METHOD /path", in order
        self._failure: tuple[int, str] | None = None
        self._offline = False

    # ------------------------------------------------------------------ test controls

    def fail_with(self, status: int, on: str = "/") -> None:
        self._failure = (status, on)

    def go_offline(self) -> None:
        self._offline = True

    def download(self, repo_id: str, folder: str | Path) -> Path:
        """Write the files of `repo_id` into `folder`, as `snapshot_download(repo_id, local_dir=folder)` would."""
        folder = Path(folder)
        for path, content in self.repos[repo_id].items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(content)
        return folder

    # ------------------------------------------------------------------ HTTP

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        self.requests.append(f"{request.method} {path}")
        if self._offline:
            raise httpx2.ConnectError("[Errno 111] Connection refused", request=request)
        if self._failure is not None and self._failure[1] in path:
            return httpx2.Response(self._failure[0], json={"error": "Internal Error - We're working hard to fix this"})
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx2.Response(401, json={"error": "Invalid credentials in Authorization header"})
        if request.method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(request.content))
        if request.method == "POST" and path == "/api/validate-yaml":  # the README's metadata, before an upload
            return self._validate_yaml(json.loads(request.content)["content"])
        route = REPO_ROUTE.match(path)
        if request.method == "POST" and route is not None:
            repo_id = route["repo_id"]
            if repo_id not in self.repos:
                return httpx2.Response(
                    404, headers={"X-Error-Code": "RepoNotFound"}, json={"error": "Repository not found"}
                )
            if route["action"] == "preupload":
                return self._preupload(json.loads(request.content))
            return self._commit(repo_id, request.content)
        return httpx2.Response(404, json={"error": f"FakeHub does not serve {request.method} {path}"})

    def _create_repo(self, payload: dict) -> httpx2.Response:
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            return httpx2.Response(409, json={"error": "You already created this model repo", "url": url})
        self.repos[repo_id] = {}
        self.commit_messages[repo_id] = []
        return httpx2.Response(200, json={"url": url, "name": repo_id})

    def _validate_yaml(self, readme: str) -> httpx2.Response:
        front_matter = re.match(r"^---\n(.*?)\n---\n", readme, re.DOTALL)
        try:
            metadata = yaml.safe_load(front_matter[1]) if front_matter else {}
        except yaml.YAMLError as error:
            metadata = str(error)
        if not isinstance(metadata, dict):
            return httpx2.Response(400, json={"errors": [{"message": f"Invalid YAML metadata: {metadata}"}]})
        return httpx2.Response(200, json={"errors": [], "warnings": []})

    def _preupload(self, payload: dict) -> httpx2.Response:
        files = [{"path": file["path"], "uploadMode": "regular", "shouldIgnore": False} for file in payload["files"]]
        return httpx2.Response(200, json={"files": files, "commitOid": "0" * 40})

    def _commit(self, repo_id: str, body: bytes) -> httpx2.Response:
        files = self.repos[repo_id]
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                self.commit_messages[repo_id].append(value["summary"])
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:
                return httpx2.Response(400, json={"error": f"FakeHub does not support {key!r} commit operations"})
        oid = hashlib.sha1(body).hexdigest()
        return httpx2.Response(
            200, json={"success": True, "commitOid": oid, "commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}"}
        )


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    """
    Route every request of huggingface_hub's shared HTTP client to `hub`, online (`HF_HUB_OFFLINE` off, telemetry off),
    with `hub.token` as the user's token. Restores the default client afterwards.
    """
    saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_TELEMETRY
    constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_TELEMETRY = False, True
    set_client_factory(
        lambda: httpx2.Client(
            transport=httpx2.MockTransport(hub.handle),
            event_hooks={"request": [hf_request_event_hook]},  # what the default client does to every request
            follow_redirects=True,
        )
    )
    try:
        yield hub
    finally:
        set_client_factory(default_client_factory)
        constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_TELEMETRY = saved
