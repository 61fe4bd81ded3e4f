"""The CLI's client waits out rate limits: an upload of more images than the per-minute limit
allows completes (every image stored once) because the client honours 429's Retry-After."""

from __future__ import annotations

from pathlib import Path

from activeseg.client.api_client import ApiClient
from tests.conftest import running_stack, stack_env
from tests.utils import image_bytes, make_project


def test_uploads_past_the_rate_limit_wait_and_complete(tmp_path: Path) -> None:
    env = stack_env("sqlite", tmp_path / "data")
    # A burst of 6, then a token back every 10 s: the 7th upload hits the limit unless the
    # first six took 10 s, which even a machine with every core busy does not take.
    env["ACTIVESEG_RATE_LIMIT_UPLOADS_PER_MINUTE"] = "6"
    with running_stack("sqlite", env) as stack:
        with stack.client(stack.admin_token) as admin:
            pid = make_project(admin)["id"]
        files = []
        for i in range(8):
            path = tmp_path / f"img{i:03d}.png"
            path.write_bytes(image_bytes(16, 16, seed=i))
            files.append(path)
        with ApiClient(stack.base_url, stack.admin_token) as client:
            ids = [client.upload_file(pid, f)["image"]["id"] for f in files]
            assert client.retries >= 1  # the limit was really hit, and waited out
        assert len(set(ids)) == 8
        with stack.client(stack.admin_token) as admin:
            assert admin.get(f"/projects/{pid}/images").json()["count"] == 8
