"""The `activeseg` client commands, run as real subprocesses against a running server."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.integrations.helpers import hand_mask, put_mask
from tests.utils import build_queue_inline, image_bytes, make_user, png_bytes


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "activeseg.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def cli(stack: Stack, admin, tmp_path: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """An engineer logged in with `activeseg login` in a private HOME."""
    _, token = make_user(admin, "engineer")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVESEG_")}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "home" / ".config"),
        XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"),  # the upload journal
    )
    out = run(env, "login", stack.base_url, "--token", token)
    assert "logged in" in out.stdout
    return {"env": env, "token": token, "tmp": tmp_path}


def test_login_stores_a_private_config_and_env_overrides(stack: Stack, cli) -> None:  # type: ignore[no-untyped-def]
    path = Path(cli["env"]["XDG_CONFIG_HOME"]) / "activeseg" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": stack.base_url, "token": cli["token"]}
    bad = dict(cli["env"], ACTIVESEG_TOKEN="as_wrong")
    proc = run(bad, "project", "list", check=False)
    assert proc.returncode == 1 and "invalid API token" in proc.stderr
    proc = run(cli["env"], "login", stack.base_url, "--token", "as_wrong", check=False)
    assert proc.returncode == 1 and "invalid API token" in proc.stderr
    assert json.loads(path.read_text())["token"] == cli["token"]  # unchanged


def test_project_commands(cli) -> None:  # type: ignore[no-untyped-def]
    env = cli["env"]
    name = f"cli-{os.getpid()}-{id(cli)}"
    created = json.loads(run(env, "project", "create", name, "--classes", "bg,cell:#ff8800").stdout)
    assert [c["name"] for c in created["classes"]] == ["bg", "cell"]
    assert created["classes"][1]["colour"] == "#ff8800"
    assert name in run(env, "project", "list").stdout
    shown = json.loads(run(env, "project", "show", name).stdout)
    assert shown["id"] == created["id"]
    proc = run(env, "project", "create", name, "--classes", "bg,cell", check=False)
    assert proc.returncode == 1 and "already exists" in proc.stderr
    proc = run(env, "project", "show", "999999", check=False)
    assert proc.returncode == 1 and "not found" in proc.stderr


def _image_tree(root: Path, n: int) -> list[bytes]:
    blobs = []
    for i in range(n):
        folder = root / f"part{i % 3}" / ("deep" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        data = image_bytes(16, 16, seed=100 + i)
        (folder / f"im{i}.png").write_bytes(data)
        blobs.append(data)
    (root / "notes.txt").write_text("not an image")
    return blobs


def test_upload_resumes_after_an_interruption(stack: Stack, admin, cli) -> None:  # type: ignore[no-untyped-def]
    """Killed after its second batch of 2, the upload leaves 4 files journaled and up to 4 more
    in flight. The rerun skips the journaled ones without sending them and sends the other 5:
    the server answers duplicates for those that landed in flight, so every landed file counts
    as skipped. A third run sends nothing."""
    env = cli["env"]
    pid = json.loads(run(env, "project", "create", f"up-{id(cli)}", "--classes", "a,b").stdout)[
        "id"
    ]
    blobs = _image_tree(cli["tmp"] / "imgs", 9)
    killed = run(
        dict(env, ACTIVESEG_UPLOAD_STOP_AFTER="3"),
        "upload",
        str(pid),
        str(cli["tmp"] / "imgs"),
        "--workers",
        "2",
        "--batch-files",
        "2",
        check=False,
    )
    assert killed.returncode == 3, killed.stderr
    assert "stopping after 4 files" in killed.stderr
    landed = admin.get(f"/projects/{pid}/images", params={"limit": 100}).json()["count"]
    assert 4 <= landed < 9
    done = run(env, "upload", str(pid), str(cli["tmp"] / "imgs"), "--split", "train")
    uploaded, skipped = map(int, re.findall(r"uploaded (\d+), skipped (\d+)", done.stdout)[0])
    # A request cut off in flight may still land after the count above: at least `landed`.
    assert uploaded + skipped == 9 and skipped >= landed
    assert f"({9 - 4} files sent" in done.stdout  # the 4 journaled ones were not
    images = admin.get(f"/projects/{pid}/images", params={"limit": 100}).json()["data"]
    assert len(images) == 9
    import hashlib

    assert sorted(i["sha256"] for i in images) == sorted(
        hashlib.sha256(b).hexdigest() for b in blobs
    )
    again = run(env, "upload", str(pid), str(cli["tmp"] / "imgs"))
    assert "uploaded 0, skipped 9" in again.stdout
    assert "0 files sent" in again.stdout


def test_upload_journal_is_not_trusted_once_the_project_lost_images(  # type: ignore[no-untyped-def]
    stack: Stack, admin, cli
) -> None:
    """A changed file is sent again (its size and mtime differ from the journal's). Once the
    project has fewer images than the journal lists (two were deleted), the journal is ignored
    and every file is sent: the server stores the two again and answers duplicates for the
    rest. With --no-journal every file is sent too."""
    import hashlib

    env = cli["env"]
    pid = json.loads(run(env, "project", "create", f"jr-{id(cli)}", "--classes", "a,b").stdout)[
        "id"
    ]
    blobs = _image_tree(cli["tmp"] / "imgs", 6)
    assert "uploaded 6, skipped 0" in run(env, "upload", str(pid), str(cli["tmp"] / "imgs")).stdout
    (cli["tmp"] / "imgs" / "part0" / "im0.png").write_bytes(image_bytes(16, 16, seed=999))
    out = run(env, "upload", str(pid), str(cli["tmp"] / "imgs")).stdout
    assert "uploaded 1, skipped 5" in out and "(1 files sent" in out
    images = admin.get(f"/projects/{pid}/images", params={"limit": 100}).json()["data"]
    gone = {hashlib.sha256(b).hexdigest() for b in blobs[1:3]}
    for image in images:
        if image["sha256"] in gone:
            assert admin.delete(f"/images/{image['id']}").status_code == 204
    proc = run(env, "upload", str(pid), str(cli["tmp"] / "imgs"))
    assert "lists images the project no longer has" in proc.stderr
    assert "uploaded 2, skipped 4" in proc.stdout and "(6 files sent" in proc.stdout
    assert admin.get(f"/projects/{pid}/images").json()["count"] == 7
    proc = run(env, "upload", str(pid), str(cli["tmp"] / "imgs"), "--no-journal")
    assert "uploaded 0, skipped 6" in proc.stdout and "(6 files sent" in proc.stdout


def test_export_import_retrain_jobs_next_report(stack: Stack, admin, cli) -> None:  # type: ignore[no-untyped-def]
    env, tmp = cli["env"], cli["tmp"]
    pid = json.loads(run(env, "project", "create", f"ex-{id(cli)}", "--classes", "a,b,c").stdout)[
        "id"
    ]
    (tmp / "src").mkdir()
    (tmp / "src" / "one.png").write_bytes(image_bytes(24, 32, seed=5))
    run(env, "upload", str(pid), str(tmp / "src"))
    [image] = admin.get(f"/projects/{pid}/images").json()["data"]
    mask = hand_mask(24, 32, seed=4)
    put_mask(admin, image["id"], mask)

    run(env, "export", str(pid), "--format", "coco", "-o", str(tmp / "labels.json"))
    doc = json.loads((tmp / "labels.json").read_text())
    assert doc["images"][0]["file_name"] == "one.png"
    run(env, "export", str(pid), "--format", "png", "-o", str(tmp / "masks"))
    assert (tmp / "masks" / "masks" / "one.png").exists()
    run(env, "export", str(pid), "--format", "png", "-o", str(tmp / "masks.zip"))
    assert zipfile.is_zipfile(tmp / "masks.zip")

    # change the mask on disk, import the folder back: one new revision
    changed = mask.copy()
    changed[:3, :3] = 2
    (tmp / "masks" / "masks" / "one.png").write_bytes(png_bytes(changed))
    out = run(env, "import", str(pid), str(tmp / "masks"), "--format", "png")
    assert "1 updated, 0 unchanged" in out.stdout
    out = run(env, "import", str(pid), str(tmp / "labels.json"), "--format", "coco")
    assert "1 updated" in out.stdout
    bad = tmp / "bad.json"
    bad.write_text('{"images": [{"id": 1, "file_name": "nope.png"}]}')
    proc = run(env, "import", str(pid), str(bad), "--format", "coco", check=False)
    assert proc.returncode == 1 and "nope.png" in proc.stderr and "HTTP 422" in proc.stderr

    out = run(env, "retrain", str(pid))
    assert "retrain" in out.stdout
    listing = run(env, "jobs", str(pid)).stdout
    assert "retrain" in listing
    assert run(env, "next", str(pid)).stdout.strip() == "no task is queued"
    proc = run(env, "report", "999999", check=False)
    assert proc.returncode == 1 and "not found" in proc.stderr


def _job_list_requests() -> float:
    """GET /projects/{id}/jobs answered so far by this process's API (the stack's server
    runs in a thread of the test process, so its Prometheus histogram is readable here)."""
    from activeseg.api.metrics import REQUEST_DURATION

    return sum(
        sample.value
        for metric in REQUEST_DURATION.collect()
        for sample in metric.samples
        if sample.name.endswith("_count")
        and sample.labels.get("route") == "/projects/{project_id}/jobs"
        and sample.labels.get("method") == "GET"
    )


def test_jobs_follow_shows_a_job_until_it_ends(stack: Stack, admin, cli) -> None:  # type: ignore[no-untyped-def]
    from activeseg.core.services.jobs import request_job
    from activeseg.jobs.registry import inline_dispatcher

    env = cli["env"]
    out = run(env, "project", "create", f"fo-{id(cli)}", "--classes", "a,b")
    pid = json.loads(out.stdout)["id"]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        job, _ = request_job(s, project_id=pid, kind="verify_storage", params={})
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "activeseg.cli",
            "jobs",
            str(pid),
            "--follow",
            "--interval",
            "0.2",
            "--timeout",
            "600",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Ready when the follower has polled twice while the job was pending (its start-up
        # takes seconds, minutes on a busy machine): it is waiting, not gone.
        polls = _job_list_requests() + 2
        deadline = time.monotonic() + 600
        while _job_list_requests() < polls:
            assert follow.poll() is None, follow.communicate()
            assert time.monotonic() < deadline, "the follower never polled"
            time.sleep(0.05)
        assert follow.poll() is None
        inline_dispatcher(stack.db, stack.store, stack.settings)(job.id)  # type: ignore[arg-type]
        stdout, stderr = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 0, stderr
    assert f"{job.id}  verify_storage" in stdout and "succeeded" in stdout


def test_next_prints_a_lease(stack: Stack, admin, cli) -> None:  # type: ignore[no-untyped-def]

    env = cli["env"]
    settings = json.dumps({"region_kind": "grid", "region_size": 16, "batch_size": 2})
    proj = run(
        env, "project", "create", f"nx-{id(cli)}", "--classes", "a,b", "--settings", settings
    )
    pid = json.loads(proj.stdout)["id"]
    (cli["tmp"] / "n").mkdir()
    (cli["tmp"] / "n" / "x.png").write_bytes(image_bytes(32, 32, seed=9))
    run(env, "upload", str(pid), str(cli["tmp"] / "n"))
    build_queue_inline(stack, pid)
    lease = json.loads(run(env, "next", str(pid)).stdout)
    assert lease["task"]["project_id"] == pid
    assert not any(k.endswith("_png") for k in lease)
