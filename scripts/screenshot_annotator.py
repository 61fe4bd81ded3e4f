"""Make docs/annotator.png: the annotator page on a real trained model.

Starts `activeseg serve` (embedded, with the digits demo project) in a temporary folder,
labels the demo's first queue from the ground truth, retrains (which re-scores the pool and
builds the next queue from the new model), then opens /annotate in headless Chromium as the
demo annotator with the uncertainty heatmap on, and saves the screenshot.

    .venv/bin/python scripts/screenshot_annotator.py [--out docs/annotator.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from activeseg.admin.simulation import annotate_queue, embedded_service
from activeseg.datasets.registry import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "annotator.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, embedded_service(Path(tmp), demo=True) as admin:
        project = next(p for p in admin.get("/projects")["data"] if p["name"] == "digits-demo")
        pid = project["id"]
        # The demo was built from load_dataset("digits", count=80, seed=0): same masks by name.
        by_name = {f"{s.name}.png": s.mask for s in load_dataset("digits", count=80, seed=0)}
        truth = {}
        offset = 0
        while True:
            page = admin.get(f"/projects/{pid}/images", params={"offset": offset, "limit": 500})
            truth.update({im["id"]: by_name[im["filename"]] for im in page["data"]})
            offset += len(page["data"])
            if offset >= page["count"]:
                break
        admin.wait_idle(pid)  # the demo's first model, then its first queue
        annotate_queue(admin, pid, truth)
        job = admin.post(f"/projects/{pid}/retrain", json={"request_id": "docs"})
        admin.wait_job(job["id"])
        admin.wait_idle(pid)
        token = (Path(tmp) / "demo-annotator-token").read_text().strip()
        base = str(admin.http.base_url)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            tab = browser.new_page(viewport={"width": 1280, "height": 800})
            tab.goto(f"{base}/annotate?project={pid}")
            tab.fill("#token", token)
            tab.press("#token", "Enter")
            tab.wait_for_selector(".class-btn .proposed", timeout=60_000)
            # Show a region the model thinks is a digit (skip background ones; a throwaway
            # service, so skipping costs nothing).
            for _ in range(25):
                picked = tab.get_attribute(".class-btn[aria-pressed='true']", "data-class-id")
                if picked not in (None, "0"):
                    break
                task = tab.text_content("#task-info") or ""
                tab.keyboard.press("s")
                tab.wait_for_function(
                    "t => (document.querySelector('#task-info')?.textContent || '') !== t", arg=task
                )
                tab.wait_for_selector(".class-btn .proposed", timeout=60_000)
            tab.keyboard.press("u")
            # The key handler redraws the canvas before it returns: checked means drawn.
            tab.wait_for_function("document.getElementById('show-heat').checked")
            tab.mouse.move(5, 5)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(args.out))
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
