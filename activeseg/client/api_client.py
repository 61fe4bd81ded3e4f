"""A typed client for the whole API, on top of :class:`activeseg.client.http.Client`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from activeseg.client.http import ApiError, Client

PAGE = 500


class ApiClient(Client):
    """Projects, images, export/import, jobs, tasks and models by name."""

    def __enter__(self) -> ApiClient:
        return self

    def me(self) -> dict[str, Any]:
        return self.get("/users/me")  # type: ignore[no-any-return]

    # projects -----------------------------------------------------------------------------
    def projects(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self.get("/projects", params={"offset": len(out), "limit": PAGE})
            out.extend(page["data"])
            if not page["data"] or len(out) >= page["count"]:
                return out

    def project(self, ref: str | int) -> dict[str, Any]:
        """A project by id, or by its exact name."""
        if isinstance(ref, int) or str(ref).isdigit():
            return self.get(f"/projects/{int(ref)}")  # type: ignore[no-any-return]
        for p in self.projects():
            if p["name"] == ref:
                return p
        raise ApiError(404, f"no project named {ref!r}", "GET", "/projects")

    def create_project(
        self,
        name: str,
        classes: list[dict[str, Any]],
        settings: dict[str, Any] | None = None,
        description: str = "",
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "classes": classes, "description": description}
        if settings:
            body["settings"] = settings
        return self.post("/projects", json=body)  # type: ignore[no-any-return]

    # images -------------------------------------------------------------------------------
    def iter_images(self, project_id: int) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self.get(
                f"/projects/{project_id}/images", params={"offset": offset, "limit": PAGE}
            )
            yield from page["data"]
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                return

    def image_count(self, project_id: int) -> int:
        """How many images the project has (one small request)."""
        page = self.get(f"/projects/{project_id}/images", params={"limit": 1})
        return int(page["count"])

    def upload_batch(
        self, project_id: int, files: list[tuple[str, bytes]], split: str = "pool"
    ) -> dict[str, Any]:
        """Upload ``files`` (name, bytes) in one request, all or nothing; the server's
        ``UploadResponse`` (``data`` in the order sent, ``created``, ``duplicates``). Sent again
        after a transient failure: the server keeps images by content, so a batch that landed
        before its answer was lost comes back as duplicates, never as copies."""
        r = self.request(
            "POST",
            f"/projects/{project_id}/images",
            idempotent=True,
            files=[("files", (name, data, "application/octet-stream")) for name, data in files],
            data={"split": split},
        )
        return r.json()  # type: ignore[no-any-return]

    def upload_file(self, project_id: int, path: Path, split: str = "pool") -> dict[str, Any]:
        """One file in a request of its own (many files: :meth:`upload_batch`)."""
        data = path.read_bytes()  # bytes, not a file object: a retried request resends it
        return self.upload_batch(project_id, [(path.name, data)], split)["data"][0]  # type: ignore[no-any-return]

    # export / import ----------------------------------------------------------------------
    def export_to(
        self,
        project_id: int,
        fmt: str,
        out: IO[bytes],
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Stream the export into ``out``; returns the byte count."""
        url = f"/projects/{project_id}/export"
        with self.http.stream("GET", url, params={"format": fmt}) as r:
            if r.status_code >= 400:
                r.read()
                try:
                    detail = r.json().get("detail", r.text)
                except ValueError:
                    detail = r.text
                raise ApiError(r.status_code, detail, "GET", url)
            total = 0
            for chunk in r.iter_bytes():
                out.write(chunk)
                total += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        return total

    def import_bytes(self, project_id: int, fmt: str, name: str, data: bytes) -> dict[str, Any]:
        r = self.request(
            "POST",
            f"/projects/{project_id}/import",
            params={"format": fmt},
            files={"file": (name, data, "application/octet-stream")},
        )
        return r.json()  # type: ignore[no-any-return]

    # loop ---------------------------------------------------------------------------------
    def retrain(self, project_id: int, **options: Any) -> dict[str, Any]:
        return self.post(f"/projects/{project_id}/retrain", json=options)  # type: ignore[no-any-return]

    def jobs(self, project_id: int, limit: int = 50) -> list[dict[str, Any]]:
        return self.get(f"/projects/{project_id}/jobs", params={"limit": limit})["data"]  # type: ignore[no-any-return]

    def next_task(self, project_id: int) -> dict[str, Any] | None:
        r = self.request("POST", f"/projects/{project_id}/tasks/next")
        return None if r.status_code == 204 else r.json()

    def model(self, model_id: int) -> dict[str, Any]:
        return self.get(f"/models/{model_id}")  # type: ignore[no-any-return]

    # Label Studio -------------------------------------------------------------------------
    def backend_key(self, project_id: int) -> dict[str, Any]:
        """A new ML-backend key of the project: ``backend_url`` is shown this once."""
        return self.post(f"/projects/{project_id}/label-studio/keys")  # type: ignore[no-any-return]

    def label_config(self, project_id: int) -> str:
        """The Label Studio labeling config (XML) for the project's classes."""
        return self.request("GET", f"/ls/{project_id}/label_config").text

    # signed links -------------------------------------------------------------------------
    def link(self, path: str, ttl_s: int | None = None) -> dict[str, Any]:
        """A signed link (``url``, ``path``, ``expires_at``) that opens ``path`` without a
        token; ``ttl_s``: the server's default when None."""
        body: dict[str, Any] = {"path": path}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return self.post("/links", json=body)  # type: ignore[no-any-return]

    def report_link(self, model_id: int, ttl_s: int | None = None) -> dict[str, Any]:
        """A signed link to the model version's ``report.html``, once the report exists (the
        server's 404 says how to compute it otherwise)."""
        self.get(f"/models/{model_id}/report")
        return self.link(f"/models/{model_id}/report.html", ttl_s)

    def model_report(self, model_id: int) -> dict[str, Any]:
        """``/models/{id}/report`` where the server has it, else the model's metrics."""
        try:
            return self.get(f"/models/{model_id}/report")  # type: ignore[no-any-return]
        except ApiError as exc:
            if exc.status not in (404, 405):
                raise
            return self.model(model_id)
