"""Model-version reports: is this model's softmax a usable uncertainty, and does labelling pay?

One report per model version, computed by the ``evaluate`` job (:mod:`activeseg.jobs.evaluate`)
and stored in ``ModelVersion.report``:

- ``calibration``: ECE (equal-width and adaptive bins), MCE, Brier and NLL of the predictive
  distribution on held-out labelled pixels, before (``T = 1``) and after the version's fitted
  temperature, with reliability diagrams; also on the foreground pixels and per region
  (:mod:`activeseg.reports.calibration`);
- ``error_detection``: AUROC/AUPR of every uncertainty measure against the model's pixel errors,
  over all pixels, foreground pixels (true class other than the majority class) and regions
  (the project's superpixels or tiles), ROC curves, bootstrap intervals over images and a
  verdict that says when no measure finds the errors (:mod:`activeseg.reports.detection`);
- ``shift``: the same figures on perturbed copies of the held-out images and on pure-noise
  inputs (:mod:`activeseg.reports.shift`);
- ``learning_curve``: mIoU per version vs labelled pixels and regions, with an attached random
  baseline from ``activeseg simulate`` (:mod:`activeseg.reports.learning_curve`);
- ``rounds`` (added when the report is served, not stored): per round, the model's error rate
  on selected vs random control tasks (:mod:`activeseg.reports.rounds`).

Layering: pure computation on arrays and plain dicts (numpy, the uncertainty layer, and torch
only through :class:`activeseg.models.inference.Predictor`); no database, no HTTP. Plots are
PNG bytes (matplotlib, Agg, no pyplot state: :mod:`activeseg.reports.plots`) and the HTML page is
a string (:mod:`activeseg.reports.html`). Submodules are imported on demand so that the API
never imports torch or matplotlib just to serve a stored report.
"""

REPORT_SCHEMA_VERSION = 2
"""Bumped when the layout of the stored report changes (2: foreground and per-region figures,
``error_detection.best``, ``n_samples``)."""

__all__ = ["REPORT_SCHEMA_VERSION"]
