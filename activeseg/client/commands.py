"""Client commands of the ``activeseg`` CLI: they talk to a running server over HTTP.

``activeseg login URL --token T`` stores the server and token in
``~/.config/activeseg/config.json`` (mode 0600); ``ACTIVESEG_URL`` and ``ACTIVESEG_TOKEN``
override it. Errors print the server's explanation and exit with status 1.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from activeseg.client.api_client import ApiClient
    from activeseg.client.bulk_upload import Journal, LocalFile, UploadReport

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
SPLITS = ("pool", "train", "val", "test")
ACTIVE = ("pending", "queued", "running", "waiting")
PALETTE = ("#000000", "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4")
# Test hook (tests/client/test_cli.py), read with the client's other environment variables in
# upload_stop_after(): exit abruptly once this many files are stored, as a killed upload would.
STOP_AFTER_ENV = "ACTIVESEG_UPLOAD_STOP_AFTER"
RESUME = "run the same command again to upload the rest"

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


def upload_stop_after() -> int:
    """The test hook ``ACTIVESEG_UPLOAD_STOP_AFTER`` (0 = never). The client reads its own
    environment (it imports nothing of the server, so not the server's settings)."""
    raw = os.environ.get(STOP_AFTER_ENV, "0") or "0"
    if not raw.isdigit():
        _fail(f"{STOP_AFTER_ENV}={raw!r}: use a whole number of files, 0 or more")
    return int(raw)


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


class UploadProgress:
    """Progress on stderr: a bar on a terminal, else a line every ``every_s`` seconds (logs,
    CI), and a line for every wait (rate limit, retry) so a slow upload says why."""

    def __init__(self, total: int, every_s: float = 2.0) -> None:
        from rich.progress import Progress

        self.total, self.done, self.every_s = total, 0, every_s
        self.start = self.last = time.monotonic()
        self.bar: Progress | None = None
        if sys.stderr.isatty():
            self.bar = Progress(transient=False)
            self.task = self.bar.add_task("uploading", total=total)
            self.bar.start()

    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.start, 1e-9)

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.advance(self.task, n)
        elif time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            self.note(f"uploading: {self.done}/{self.total} files ({self.rate():.0f} images/s)")

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message)
        else:
            typer.echo(message, err=True)

    def waiting(self, reason: str, seconds: float) -> None:
        self.note(f"waiting {seconds:.1f} s: {reason}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _journaled(
    api: ApiClient, project: dict[str, Any], files: list[Path], use_journal: bool
) -> tuple[Journal | None, list[LocalFile], int]:
    """(journal, files to send, files skipped by the journal). A journal claiming more images
    than the project has (some were deleted since) is not trusted: every file is sent, and the
    server answers duplicates for those it has."""
    from activeseg.client.bulk_upload import Journal, LocalFile, split_by_journal

    local = [LocalFile.of(p) for p in files]
    if not use_journal:
        return None, local, 0
    journal = Journal.for_project(str(api.http.base_url), project)
    todo, skipped = split_by_journal(local, journal.load())
    if skipped and api.image_count(project["id"]) < len(skipped):
        typer.echo(
            f"note: {journal.path} lists images the project no longer has; ignoring it", err=True
        )
        return journal, local, 0
    return journal, todo, len(local) - len(todo)


class _BatchRecorder:
    """After each batch the server stored: journal it, advance the progress, and honour the
    test hook that kills the upload."""

    def __init__(self, log: Journal | None, progress: UploadProgress, stop_after: int) -> None:
        self.log, self.progress, self.stop_after = log, progress, stop_after
        self.stored = 0

    def __call__(self, batch: list[LocalFile], response: dict[str, Any]) -> None:
        if self.log is not None:
            shas = [d["image"]["sha256"] for d in response["data"]]
            self.log.record(zip(batch, shas, strict=True))
        self.stored += len(batch)
        self.progress.advance(len(batch))
        if self.stop_after and self.stored >= self.stop_after:
            typer.echo(f"stopping after {self.stored} files ({STOP_AFTER_ENV})", err=True)
            os._exit(3)  # abrupt on purpose: in-flight uploads are cut off


@cli_errors
def upload(
    project: Annotated[str, typer.Argument(help="project id or name")],
    paths: Annotated[list[Path], typer.Argument(help="image files or folders (recursive)")],
    split: Annotated[str, typer.Option(help="pool | train | val | test")] = "pool",
    workers: Annotated[int, typer.Option(min=1, max=32, help="requests in flight")] = 4,
    batch_files: Annotated[int, typer.Option(min=1, help="files per request, at most")] = 100,
    batch_mb: Annotated[float, typer.Option(min=0.001, help="MiB per request, at most")] = 16,
    journal: Annotated[
        bool, typer.Option(help="skip files a previous run uploaded (local journal)")
    ] = True,
) -> None:
    """Upload images, many per request, several requests in parallel. Resumable: a rerun
    skips the files a previous run of this machine uploaded (a journal under
    ~/.cache/activeseg/uploads) without reading them; the server keeps images by content, so
    a file sent twice is stored once. A file the server refuses (corrupt, too large) is named,
    the others still land; the exit status is 1 only then."""
    from activeseg.client.bulk_upload import BatchLimits, BulkUploader

    if split not in SPLITS:
        _fail(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    files = collect_files(paths)
    with client() as api:
        proj = api.project(project)
        log, todo, skipped = _journaled(api, proj, files, journal)
        progress = UploadProgress(len(todo))
        api.on_wait = progress.waiting
        recorder = _BatchRecorder(log, progress, upload_stop_after())
        uploader = BulkUploader(
            api,
            proj["id"],
            split=split,
            workers=workers,
            limits=BatchLimits(batch_files, max(1, int(batch_mb * 1024 * 1024))),
            on_batch=recorder,
            on_refused=lambda _path, _why: progress.advance(1),
        )
        try:
            report = uploader.run(todo)
        except KeyboardInterrupt:
            _fail(f"interrupted after {recorder.stored} files stored; {RESUME}", code=130)
        except Exception:
            if recorder.stored:
                typer.echo(f"stopped after {recorder.stored} files stored; {RESUME}", err=True)
            raise  # cli_errors prints the server's explanation
        finally:
            progress.close()
            if log is not None:
                log.close()
    _upload_summary(proj["id"], report, skipped, progress)


def _upload_summary(pid: int, report: UploadReport, skipped: int, progress: UploadProgress) -> None:
    typer.echo(
        f"uploaded {report.created}, skipped {skipped + report.duplicates} already in project "
        f"{pid}, failed {len(report.failed)} ({progress.done} files sent in "
        f"{time.monotonic() - progress.start:.1f} s, {progress.rate():.0f} images/s)"
    )
    for path, detail in report.failed:
        typer.echo(f"error: {path}: {detail}", err=True)
    if report.failed:
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
    note = note.splitlines()[0][:160] if note else ""
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


TtlOption = Annotated[
    int | None,
    typer.Option("--ttl", help="seconds the link works (default: the server's, 24 h)", min=60),
]


@cli_errors
def report(
    model: Annotated[int, typer.Argument(help="model version id")],
    as_json: Annotated[
        bool, typer.Option("--json", help="print the report's JSON instead of a link")
    ] = False,
    ttl: TtlOption = None,
) -> None:
    """Print a link to a model version's report page that a browser opens without a token
    (signed, expiring); with --json, the report itself."""
    with client() as api:
        if as_json:
            _print_json(api.model_report(model))
            return
        link = api.report_link(model, ttl)
    typer.echo(link["url"])
    typer.echo(f"open it in a browser; it works until {link['expires_at']}", err=True)


@cli_errors
def link(
    path: Annotated[
        str,
        typer.Argument(help="e.g. /images/5/file or /models/3/report.html (with its query)"),
    ],
    ttl: TtlOption = None,
) -> None:
    """Print a signed, expiring link that opens PATH without a token (an image file, mask,
    prediction or uncertainty PNG, report page or plot you may read)."""
    with client() as api:
        made = api.link(path, ttl)
    typer.echo(made["url"])
    typer.echo(f"it works until {made['expires_at']}", err=True)


labelstudio_app = typer.Typer(help="Connect Label Studio to a project.", no_args_is_help=True)


@labelstudio_app.command("connect")
@cli_errors
def labelstudio_connect(
    project: Annotated[str, typer.Argument(help="id or name")],
    config_out: Annotated[
        Path | None, typer.Option("--config-out", help="also write the labeling config here")
    ] = None,
) -> None:
    """Print a new ML-backend URL for Label Studio (a per-project key in the path: Label
    Studio's own webhook then authenticates with no hand edits) and the labeling config for
    the project's classes. The URL is shown once; revoke it with
    DELETE /projects/{id}/label-studio/keys/{key id}."""
    with client() as api:
        pid = _project_id(api, project)
        key = api.backend_key(pid)
        xml = api.label_config(pid)
    if config_out is not None:
        config_out.write_text(xml + "\n")
    typer.echo(key["backend_url"])
    typer.echo(
        f"Label Studio: Settings > Model > Connect Model, Backend URL above, no authentication "
        f"(key {key['id']}, prefix {key['prefix']}; shown once).\n"
        "Settings > Labeling Interface > Code: the config below"
        + (f" (also in {config_out})" if config_out else "")
        + ".\nLabel Studio on this machine? Start it with ML_BLOCK_LOCAL_IP=false "
        "SSRF_PROTECTION_ENABLED=false.",
        err=True,
    )
    typer.echo(xml)


def _iter_commands() -> Iterator[tuple[str, Callable[..., Any]]]:
    yield "login", login
    yield "upload", upload
    yield "export", export
    yield "import", import_
    yield "retrain", retrain
    yield "jobs", jobs
    yield "next", next_task
    yield "report", report
    yield "link", link


def register(app: typer.Typer) -> None:
    """Add the client commands to the ``activeseg`` Typer app."""
    for name, fn in _iter_commands():
        app.command(name)(fn)
    app.add_typer(project_app, name="project")
    app.add_typer(labelstudio_app, name="labelstudio")
