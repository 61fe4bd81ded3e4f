"""Client commands of the ``activeseg`` CLI: they talk to a running server over HTTP.

``activeseg login URL --token T`` stores the server and token in
``~/.config/activeseg/config.json`` (mode 0600); ``ACTIVESEG_URL`` and ``ACTIVESEG_TOKEN``
override it. Errors print the server's explanation and exit with status 1.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from activeseg.client.api_client import ApiClient

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
ACTIVE = ("pending", "queued", "running", "waiting")
PALETTE = ("#000000", "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4")
# Test hook: exit abruptly after this many uploaded files (simulates a killed upload).
STOP_AFTER_ENV = "ACTIVESEG_UPLOAD_STOP_AFTER"

project_app = typer.Typer(help="Create, list and show projects.", no_args_is_help=True)
F = TypeVar("F", bound=Callable[..., Any])


# --- configuration -------------------------------------------------------------------------


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "activeseg" / "config.json"


def read_config() -> dict[str, str]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as exc:
        _fail(f"cannot read {path}: {exc}")
    if os.environ.get("ACTIVESEG_URL"):
        data["url"] = os.environ["ACTIVESEG_URL"]
    if os.environ.get("ACTIVESEG_TOKEN"):
        data["token"] = os.environ["ACTIVESEG_TOKEN"]
    return data


def write_config(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token}, f, indent=2)
    path.chmod(0o600)  # also when the file existed with wider permissions
    return path


def client() -> ApiClient:
    from activeseg.client.api_client import ApiClient

    cfg = read_config()
    if not cfg.get("url") or not cfg.get("token"):
        _fail(
            "not logged in: run `activeseg login URL --token TOKEN` (or set ACTIVESEG_URL "
            "and ACTIVESEG_TOKEN)"
        )
    return ApiClient(cfg["url"], cfg["token"])


def _fail(message: str, code: int = 1) -> Any:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def cli_errors(fn: F) -> F:
    """Print the server's ``detail`` (or the connection problem) and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import httpx

        from activeseg.client.http import ApiError

        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            _fail(f"{exc.detail} (HTTP {exc.status})")
        except httpx.HTTPError as exc:
            _fail(f"cannot reach the server: {exc}")

    return wrapper  # type: ignore[return-value]


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _project_id(api: ApiClient, ref: str) -> int:
    return int(api.project(ref)["id"])


# --- commands ------------------------------------------------------------------------------


@cli_errors
def login(
    url: Annotated[str, typer.Argument(help="server, e.g. http://127.0.0.1:8000")],
    token: Annotated[str, typer.Option(help="your API token", prompt=True, hide_input=True)],
) -> None:
    """Check the token against the server and store both in ~/.config/activeseg/config.json."""
    from activeseg.client.api_client import ApiClient

    url = url.rstrip("/")
    with ApiClient(url, token) as api:
        me = api.me()
    path = write_config(url, token)
    typer.echo(f"logged in to {url} as {me['name']} ({me['role']}); saved {path}")


@project_app.command("create")
@cli_errors
def project_create(
    name: str,
    classes: Annotated[
        str, typer.Option(help="comma-separated class names, optionally name:#rrggbb")
    ],
    settings: Annotated[str | None, typer.Option(help="project settings as JSON")] = None,
    description: str = "",
) -> None:
    """Create a project, e.g. `activeseg project create cells --classes background,nucleus`."""
    defs = []
    for i, item in enumerate(c.strip() for c in classes.split(",") if c.strip()):
        label, _, colour = item.partition(":")
        defs.append({"id": i, "name": label, "colour": colour or PALETTE[i % len(PALETTE)]})
    try:
        extra = json.loads(settings) if settings else None
    except ValueError as exc:
        _fail(f'--settings is not JSON: {exc}; e.g. \'{{"measure": "entropy"}}\'')
    with client() as api:
        _print_json(api.create_project(name, defs, extra, description))


@project_app.command("list")
@cli_errors
def project_list() -> None:
    """Projects you can see."""
    with client() as api:
        for p in api.projects():
            typer.echo(f"{p['id']:>5}  {p['name']}  ({len(p['classes'])} classes)")


@project_app.command("show")
@cli_errors
def project_show(project: Annotated[str, typer.Argument(help="id or name")]) -> None:
    """A project's settings and classes as JSON."""
    with client() as api:
        _print_json(api.project(project))


def collect_files(paths: list[Path]) -> list[Path]:
    """Files given, and image files under folders given (recursively), sorted, unique."""
    out: set[Path] = set()
    for path in paths:
        if path.is_dir():
            out.update(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            out.add(path)
        else:
            _fail(f"{path}: no such file or folder")
    return sorted(out)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@cli_errors
def upload(
    project: Annotated[str, typer.Argument(help="project id or name")],
    paths: Annotated[list[Path], typer.Argument(help="image files or folders (recursive)")],
    split: Annotated[str, typer.Option(help="pool | train | val | test")] = "pool",
    workers: Annotated[int, typer.Option(min=1, max=32, help="parallel uploads")] = 4,
) -> None:
    """Upload images in parallel. Resumable: files whose sha256 the project already has are
    skipped, so rerunning after an interruption uploads only the rest."""
    from rich.progress import Progress

    files = collect_files(paths)
    stop_after = int(os.environ.get(STOP_AFTER_ENV) or 0)
    with client() as api:
        pid = _project_id(api, project)
        known = {im["sha256"] for im in api.iter_images(pid)}
        with ThreadPoolExecutor(workers) as pool:
            digests = list(pool.map(sha256_file, files))
        todo: list[Path] = []
        for path, digest in zip(files, digests, strict=True):
            if digest not in known:
                known.add(digest)  # the same content twice in the folder: send it once
                todo.append(path)
        skipped = len(files) - len(todo)
        failed: list[str] = []
        done = 0
        with (
            Progress(transient=False, disable=not sys.stderr.isatty()) as bar,
            ThreadPoolExecutor(workers) as pool,
        ):
            task = bar.add_task("uploading", total=len(todo))
            futures = {pool.submit(api.upload_file, pid, p, split): p for p in todo}
            for fut in as_completed(futures):
                try:
                    fut.result()
                    done += 1
                except Exception as exc:  # noqa: BLE001 - reported per file below
                    detail = getattr(exc, "detail", exc)
                    failed.append(f"{futures[fut]}: {detail}")
                bar.advance(task)
                if stop_after and done >= stop_after:
                    typer.echo(f"stopping after {done} files ({STOP_AFTER_ENV})", err=True)
                    os._exit(3)  # abrupt on purpose: in-flight uploads are cut off
    typer.echo(f"uploaded {done}, skipped {skipped} already in project {pid}, failed {len(failed)}")
    for line in failed:
        typer.echo(f"error: {line}", err=True)
    if failed:
        raise typer.Exit(1)


@cli_errors
def export(
    project: Annotated[str, typer.Argument(help="project id or name")],
    output: Annotated[Path, typer.Option("-o", "--output", help="file (or folder for png)")],
    format: Annotated[str, typer.Option(help="coco | png | labelstudio")] = "coco",
) -> None:
    """Download the project's labels. With --format png and an output that is a folder (or
    does not end in .zip) the zip is unpacked there."""
    from rich.progress import DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    unpack = format == "png" and (output.is_dir() or output.suffix.lower() != ".zip")
    target = output.with_name(output.name + ".part") if not unpack else None
    buffer = io.BytesIO()
    with client() as api:
        pid = _project_id(api, project)
        columns = (TextColumn("exporting"), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("export", total=None)
            if target is None:
                size = api.export_to(pid, format, buffer, lambda n: bar.advance(task, n))
            else:
                with target.open("wb") as f:
                    size = api.export_to(pid, format, f, lambda n: bar.advance(task, n))
    if target is not None:
        target.replace(output)
        typer.echo(f"wrote {output} ({size} bytes)")
        return
    output.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(buffer) as zf:
        zf.extractall(output)
    typer.echo(f"wrote {output}/ ({size} bytes zipped)")


def _zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


@cli_errors
def import_(
    project: Annotated[str, typer.Argument(help="project id or name")],
    path: Annotated[Path, typer.Argument(help="file, or folder of PNG masks")],
    format: Annotated[str, typer.Option(help="coco | png | labelstudio")] = "coco",
) -> None:
    """Upload labels for images already in the project (all or nothing)."""
    if path.is_dir():
        if format != "png":
            _fail("a folder can only be imported with --format png")
        data, name = _zip_folder(path), path.name + ".zip"
    elif path.is_file():
        data, name = path.read_bytes(), path.name
    else:
        _fail(f"{path}: no such file or folder")
    with client() as api:
        result = api.import_bytes(_project_id(api, project), format, name, data)
    typer.echo(
        f"{result['images']} images in the file: {result['updated']} updated, "
        f"{result['unchanged']} unchanged"
    )


@cli_errors
def retrain(
    project: Annotated[str, typer.Argument(help="project id or name")],
    wait: Annotated[bool, typer.Option(help="wait until the job ends")] = False,
    from_scratch: Annotated[bool, typer.Option(help="do not warm-start")] = False,
) -> None:
    """Train a new model version on the current labels."""
    with client() as api:
        job = api.retrain(_project_id(api, project), from_scratch=from_scratch)
        typer.echo(f"job {job['id']} ({job['kind']}) {job['state']}")
        if wait:
            job = api.wait_job(job["id"])
            typer.echo(f"job {job['id']} {job['state']}: {json.dumps(job['result'])}")


def _job_line(job: dict[str, Any]) -> str:
    note = (job.get("error") or job.get("message") or "").strip()
    note = note.splitlines()[0][:60] if note else ""
    return (
        f"{job['id']:>6}  {job['kind']:<15} {job['state']:<10} "
        f"{100 * job['progress']:5.1f}%  {note}"
    )


@cli_errors
def jobs(
    project: Annotated[str, typer.Argument(help="project id or name")],
    follow: Annotated[bool, typer.Option(help="live progress until no job is active")] = False,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    interval: Annotated[float, typer.Option(help="seconds between polls")] = 1.0,
    timeout: Annotated[float, typer.Option(help="give up following after this long")] = 3600,
) -> None:
    """The project's recent jobs; --follow shows a live bar per running job."""
    with client() as api:
        pid = _project_id(api, project)
        if not follow:
            for job in api.jobs(pid, limit):
                typer.echo(_job_line(job))
            return
        _follow(api, pid, limit, interval, timeout)


def _follow(api: ApiClient, pid: int, limit: int, interval: float, timeout: float) -> None:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    deadline = time.monotonic() + timeout
    bars: dict[int, Any] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[state]}"),
    )
    failed = []
    with Progress(*columns) as progress:
        while True:
            current = api.jobs(pid, limit)
            for job in current:
                if job["id"] not in bars and job["state"] in ACTIVE:
                    bars[job["id"]] = progress.add_task(
                        f"job {job['id']} {job['kind']}", total=1.0, state=job["state"]
                    )
                if job["id"] in bars:
                    progress.update(bars[job["id"]], completed=job["progress"], state=job["state"])
                    if job["state"] == "failed" and job["id"] not in failed:
                        failed.append(job["id"])
            if not any(j["state"] in ACTIVE for j in current):
                break
            if time.monotonic() > deadline:
                _fail(f"jobs still running after {timeout}s")
            time.sleep(interval)
    for job in current:
        if job["id"] in bars:
            typer.echo(_job_line(job))
    if failed:
        raise typer.Exit(1)


@cli_errors
def next_task(
    project: Annotated[str, typer.Argument(help="project id or name")],
    full: Annotated[bool, typer.Option(help="include the base64 region mask")] = False,
) -> None:
    """Lease the next task of the project's queue and print it as JSON."""
    with client() as api:
        lease = api.next_task(_project_id(api, project))
    if lease is None:
        typer.echo("no task is queued")
        return
    if not full:
        lease = {k: v for k, v in lease.items() if not k.endswith("_png")}
    _print_json(lease)


@cli_errors
def report(model: Annotated[int, typer.Argument(help="model version id")]) -> None:
    """A model version's report (its metrics until the server offers /models/{id}/report)."""
    with client() as api:
        _print_json(api.model_report(model))


def _iter_commands() -> Iterator[tuple[str, Callable[..., Any]]]:
    yield "login", login
    yield "upload", upload
    yield "export", export
    yield "import", import_
    yield "retrain", retrain
    yield "jobs", jobs
    yield "next", next_task
    yield "report", report


def register(app: typer.Typer) -> None:
    """Add the client commands to the ``activeseg`` Typer app."""
    for name, fn in _iter_commands():
        app.command(name)(fn)
    app.add_typer(project_app, name="project")
