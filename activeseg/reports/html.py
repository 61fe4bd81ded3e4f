"""A report as one self-contained HTML page: inline CSS, plots embedded as base64 PNG, no
scripts and no external assets (it opens offline, can be mailed or archived as one file)."""

from __future__ import annotations

import base64
import html
import math
from typing import Any

from activeseg.uncertainty.measures import ENTROPY, MUTUAL_INFORMATION

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1150px;
color:#1d2330;padding:0 1rem;line-height:1.45}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem;
border-bottom:1px solid #d6dae3;padding-bottom:.2rem}
.meta{color:#5b6475;font-size:.9rem}.verdict{background:#f1f5fb;border-left:4px solid #4c78a8;
padding:.7rem 1rem;margin:1rem 0}.note{color:#5b6475;font-size:.85rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #d6dae3;padding:.25rem .55rem;text-align:right}
th{background:#f5f6f8}td.l,th.l{text-align:left}tr.best td{font-weight:600;background:#fbf6e9}
img{max-width:100%;height:auto;display:block;margin:.6rem 0;border:1px solid #eceef2}
"""


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    return "–" if not math.isfinite(number) else f"{number:.{digits}f}"


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text))


def _img(plots: dict[str, bytes], name: str, alt: str) -> str:
    data = plots.get(name)
    if not data:
        return f'<p class="note">No {_e(alt)} plot.</p>'
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img id="plot-{_e(name)}" alt="{_e(alt)}" src="data:image/png;base64,{encoded}">'


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(
        f'<th class="l">{h}</th>' if i == 0 else f"<th>{h}</th>" for i, h in enumerate(header)
    )
    body = []
    for k, row in enumerate(rows):
        cls = f' class="{classes[k]}"' if classes and classes[k] else ""
        cells = "".join(
            f'<td class="l">{c}</td>' if i == 0 else f"<td>{c}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _calibration(cal: dict[str, Any] | None, plots: dict[str, bytes]) -> str:
    if not cal:
        return '<p class="note">No held-out labelled images: nothing to calibrate against.</p>'
    fg = cal.get("foreground") or {}
    regions = cal.get("regions") or {}
    # Side by side: all pixels, foreground pixels, regions; each at T = 1 and at the fitted T.
    scopes = [cal, fg, regions]
    rows = [
        [label]
        + [
            _num((scope.get(when) or {}).get(key)) if scope.get(when) else "–"
            for scope in scopes
            for when in ("before", "after")
        ]
        for key, label in (
            ("ece", f"ECE ({cal['n_bins']} equal-width bins)"),
            ("ece_adaptive", f"ECE ({cal['n_bins']} adaptive bins)"),
            ("mce", "MCE"),
            ("brier", "Brier score"),
            ("nll", "NLL"),
            ("accuracy", "pixel accuracy"),
            ("mean_confidence", "mean confidence"),
        )
    ]
    t = f"T = {_num(cal.get('temperature'))}"
    header = [
        "metric",
        "pixels, T = 1",
        f"pixels, {t}",
        "foreground px, T = 1",
        f"foreground px, {t}",
        "regions, T = 1",
        f"regions, {t}",
    ]
    scope_note = (
        f"Foreground: the {_num(fg.get('n_pixels'))} sampled pixels whose true class is not "
        f"the majority class ({_e(fg.get('majority_class'))}). "
        if fg
        else ""
    )
    scope_note += (
        f"Regions: {_num(regions.get('n_regions'))} {_e(regions.get('kind'))} regions, each "
        "counted once with its mean confidence against its share of right pixels (no Brier or "
        "NLL per region)."
        if regions
        else "No per-region figures (no region maps were given to this report)."
    )
    return (
        f"<p>All {_num(cal['n_pixels_total'])} labelled pixels in {_num(cal['n_images'])} "
        f"<b>{_e(cal['split'])}</b> images (the adaptive ECE and the foreground on "
        f"{_num(cal['n_pixels'])} sampled of them).</p>"
        + _table(header, rows)
        + f'<p class="note">{scope_note}</p>'
        + f'<p class="note">{_e(cal.get("note"))}</p>'
        + _img(plots, "reliability", "reliability diagram")
    )


def _detection(det: dict[str, Any] | None, plots: dict[str, bytes]) -> str:
    if not det:
        return '<p class="note">No held-out labelled images: no errors to detect.</p>'
    finite = [r for r in det["rows"] if r["auroc"] is not None and r["family"] != "single pass"]
    best = max(finite, key=lambda r: r["auroc"])["measure"] if finite else None
    rows = []
    for r in det["rows"]:
        fg, region = r.get("foreground") or {}, r.get("region") or {}
        rows.append(
            [
                _e(r["measure"]),
                _e(r["family"]),
                _num(r["auroc"]),
                _num(fg.get("auroc")),
                _num(region.get("auroc")),
                _num(r["aupr"]),
                _num(fg.get("aupr")),
                _num(region.get("aupr")),
                _num(region.get("spearman")),
                _e(r["description"]),
            ]
        )
    classes = ["best" if r["measure"] == best else "" for r in det["rows"]]
    header = [
        "measure",
        "family",
        "AUROC pixels",
        "AUROC foreground",
        "AUROC regions",
        "AUPR pixels",
        "AUPR foreground",
        "AUPR regions",
        "Spearman regions",
        "what",
    ]
    fg = det.get("foreground") or {}
    regions = det.get("regions") or {}
    base = (
        f"<p>{_num(det['n_errors'])} wrong pixels among {_num(det['n_pixels'])} sampled "
        f"(error rate {_num(det['error_rate'])} = the AUPR of a measure that knows nothing)"
    )
    if fg:
        base += (
            f"; foreground: {_num(fg.get('n_errors'))} wrong among {_num(fg.get('n_pixels'))} "
            f"(error rate {_num(fg.get('error_rate'))})"
        )
    if regions:
        base += (
            f"; regions: {_num(regions.get('n_with_error'))} of "
            f"{_num(regions.get('n_regions'))} {_e(regions.get('kind'))} regions hold an error "
            f"(share {_num(regions.get('share_with_error'))}, mean error fraction "
            f"{_num(regions.get('mean_error_fraction'))})"
        )
    out = base + ".</p>" + _table(header, rows, classes)
    notes = []
    if fg:
        notes.append(f"Foreground: {_e(fg.get('definition'))}.")
    notes.append(
        f"Regions: {_e(regions.get('definition'))}."
        if regions
        else "No per-region figures (no region maps were given to this report)."
    )
    best_ci = det.get("best") or {}
    if best_ci.get("ci_low") is not None:
        notes.append(
            f"Best measure {_e(best_ci.get('measure'))}: AUROC {_num(best_ci.get('auroc'))}, 95% "
            f"bootstrap CI over {_num(best_ci.get('n_images'))} images "
            f"[{_num(best_ci.get('ci_low'))}, {_num(best_ci.get('ci_high'))}]."
        )
    out += f'<p class="note">{" ".join(notes)}</p>'

    comp = det.get("comparison")
    if comp:
        out += (
            f"<p>Best ensemble ({_e(comp['ensemble'])}) minus best softmax "
            f"({_e(comp['softmax'])}) AUROC: {_num(comp['difference'])}, 95% bootstrap CI over "
            f"{_num(comp['n_images'])} images [{_num(comp['ci_low'])}, {_num(comp['ci_high'])}] "
            f"({_num(comp['n_boot'])} resamples).</p>"
        )
    if det.get("single_pass_accuracy") is not None:
        out += (
            f'<p class="note">One deterministic pass: pixel accuracy '
            f"{_num(det['single_pass_accuracy'])}; its row is scored against its own errors."
            " Softmax measures of a several-sample model are computed on the mean over the"
            " samples (as the scorer does), so 'entropy' there equals predictive entropy.</p>"
        )
    return out + _img(plots, "error_detection_roc", "error detection ROC curves")


def _shift(shift: dict[str, Any] | None, plots: dict[str, bytes]) -> str:
    if not shift:
        return '<p class="note">Shift check not run.</p>'
    rows = []
    for name, c in shift["conditions"].items():
        mm = c.get("mean_measures", {})
        rise = c.get("rise", {})
        rows.append(
            [
                _e(name),
                _e(c.get("description")),
                _num(c["mean_max_prob"]),
                _num(c.get("mean_max_prob_t")),
                _num(c["frac_confident"]),
                _num(c["accuracy"]),
                _num(c["ece"]),
                _num(c.get("ece_t")),
                _num(mm.get(ENTROPY.name)),
                _num(mm.get(MUTUAL_INFORMATION.name), 4),
                _num(rise.get(MUTUAL_INFORMATION.name), 2),
            ]
        )
    header = [
        "condition",
        "what",
        "mean max-prob",
        "mean max-prob (T)",
        "share &gt; 0.9",
        "accuracy",
        "ECE",
        "ECE (T)",
        "mean entropy",
        "mean MI",
        "MI / clean",
    ]
    return (
        f"<p>{_e(shift.get('summary'))}</p>"
        + _table(header, rows)
        + _img(plots, "shift", "shift check")
    )


def _curve(curve: dict[str, Any] | None, plots: dict[str, bytes]) -> str:
    if not curve:
        return '<p class="note">No learning curve.</p>'
    rows = [
        [
            f"v{p['version']}",
            _num(p["rounds"]),
            _num(p["labelled_pixels"]),
            _num(None if p["labelled_fraction"] is None else 100 * p["labelled_fraction"], 2),
            _num(p["labelled_regions"]),
            _num(p["miou"]),
            _e(p["split"]),
        ]
        for p in curve["points"]
    ]
    header = ["version", "rounds", "labelled px", "labelled %", "regions", "mIoU", "on"]
    baseline = curve.get("baseline")
    note = (
        f"Baseline: {len(baseline['curves'])} curve(s) from <code>{_e(baseline['source'])}</code>."
        if baseline
        else "No baseline attached: run <code>activeseg simulate --strategy random</code> and "
        "POST its curve.csv to <code>/projects/{id}/baseline</code>."
    )
    return (
        f"<p>{_e(curve.get('summary'))}</p>"
        + _table(header, rows)
        + f'<p class="note">{note}</p>'
        + _img(plots, "learning_curve", "learning curve")
    )


def _rate_row(label: str, r: dict[str, Any]) -> list[str]:
    tasks, answered = r.get("tasks") or {}, r.get("answered") or {}
    lo, hi = r.get("ratio_ci") or [None, None]
    return [
        label,
        f"{_num(tasks.get('selected'))} / {_num(tasks.get('control'))}",
        f"{_num(answered.get('selected'))} / {_num(answered.get('control'))}",
        _num(r.get("labelled_pixels")),
        _num(r.get("clicks")),
        _num(r.get("selected_error_rate")),
        _num(r.get("control_error_rate")),
        _num(r.get("ratio"), 2),
        f"[{_num(lo, 2)}, {_num(hi, 2)}]",
        _e(r.get("sentence")),
    ]


def _rounds(section: dict[str, Any]) -> str:
    rows = [
        _rate_row(f"{_num(r.get('number'))} ({_e(r.get('strategy'))}, {_e(r.get('measure'))})", r)
        for r in section.get("rounds") or []
    ]
    classes = [""] * len(rows)
    if section.get("cumulative"):
        rows.append(_rate_row("all rounds", section["cumulative"]))
        classes.append("best")
    header = [
        "round",
        "tasks selected / control",
        "answered selected / control",
        "labelled px",
        "clicks",
        "error rate selected",
        "error rate control",
        "ratio",
        "95% CI",
        "reading",
    ]
    return (
        f"<p>{_e(section.get('summary'))}</p>"
        + (_table(header, rows, classes) if rows else "")
        + '<p class="note">Controls are tasks drawn at random from the regions a round did not '
        "select, hidden among the selected ones; the error rate is the model's share of wrong "
        "pixels among the answered pixels; ratio = selected / control (above 1: the queue finds "
        "errors better than random), with a 95% bootstrap interval over tasks. Read live when "
        "the report is served, not when it was computed.</p>"
    )


def render_html(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    """The report page. ``report``: a stored report (JSON-ready dict; see
    :mod:`activeseg.jobs.evaluate`); ``plots``: ``{name: PNG bytes}``."""
    model = report.get("model", {})
    title = (
        f"{model.get('project_name', 'project')}: model version {model.get('version', '?')} report"
    )
    det = report.get("error_detection") or {}
    verdicts = [det.get("verdict"), (report.get("shift") or {}).get("summary")]
    verdicts.append((report.get("learning_curve") or {}).get("summary"))
    verdicts.append((report.get("rounds") or {}).get("summary"))
    verdict = "".join(f"<p>{_e(v)}</p>" for v in verdicts if v)
    meta = (
        f"model version id {_e(model.get('id'))} · method {_e(model.get('method'))} · "
        f"S = {_e(model.get('n_samples'))} · temperature {_num(model.get('temperature'))} · "
        f"held-out split {_e(report.get('split'))} · computed {_e(report.get('computed_at'))}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{_e(title)}</title><link rel="icon" href="data:,">'
        f"<style>{_CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="meta">{meta}</p>'
        f'<div class="verdict">{verdict or "<p>No verdict yet.</p>"}</div>'
        "<h2>Is softmax a good uncertainty? Error detection</h2>"
        + _detection(report.get("error_detection"), plots)
        + "<h2>Calibration before and after temperature scaling</h2>"
        + _calibration(report.get("calibration"), plots)
        + "<h2>Shift check</h2>"
        + _shift(report.get("shift"), plots)
        + "<h2>Learning curve</h2>"
        + _curve(report.get("learning_curve"), plots)
        + (
            "<h2>Selected vs random (control share)</h2>" + _rounds(report["rounds"])
            if report.get("rounds")
            else ""
        )
        + f'<p class="note">{_e(report.get("held_out_note"))}</p>'
        + "</body></html>\n"
    )
