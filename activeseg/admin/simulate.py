"""``activeseg simulate``: the active-learning loop against services of its own, with a
simulated annotator (the driver is :mod:`activeseg.admin.simulation`)."""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from activeseg.uncertainty.measures import DEFAULT_MEASURE

SIMULATE_STEPS = 300
"""``simulate``'s optimiser steps per retrain: under a third of a project's default (1000), so
that ``--rounds 2 --budget 20`` on digits stays within a few minutes on a laptop CPU."""


class AnnotatorProtocol(StrEnum):
    """How ``simulate``'s annotator answers (activeseg.admin.simulation.PROTOCOLS)."""

    dominant = "dominant"
    exact = "exact"


def simulate(
    dataset: Annotated[str, typer.Option(help="digits | nuclei | folder:PATH")] = "digits",
    count: Annotated[int, typer.Option(help="images to generate or read")] = 120,
    measure: Annotated[str, typer.Option(help="uncertainty measure that ranks regions")] = (
        DEFAULT_MEASURE
    ),
    strategy: Annotated[str, typer.Option(help="top_k | random | power | softmax | softrank")] = (
        "power"
    ),
    region_kind: Annotated[str, typer.Option(help="superpixel | grid")] = "superpixel",
    region_size: Annotated[int, typer.Option(help="superpixel or tile side in pixels")] = 12,
    rounds: Annotated[int, typer.Option(help="label -> retrain rounds")] = 4,
    budget: Annotated[int, typer.Option(help="regions labelled per round")] = 40,
    seeds: Annotated[int, typer.Option(help="repetitions with seeds 0..S-1")] = 1,
    method: Annotated[str, typer.Option(help="mc_dropout | ensemble | single")] = "mc_dropout",
    steps: Annotated[
        int,
        typer.Option(
            help="optimiser steps per retrain (the project default is "
            "activeseg.config_compat.DEFAULT_STEPS; fewer keep a simulation short)"
        ),
    ] = SIMULATE_STEPS,
    protocol: Annotated[
        AnnotatorProtocol,
        typer.Option(
            help="the simulated annotator's answer: the region's majority class (dominant) "
            "or its exact ground-truth pixels as a mask patch (exact)",
        ),
    ] = AnnotatorProtocol.dominant,
    control_fraction: Annotated[
        float | None,
        typer.Option(
            help="share of each queue drawn at random as a control (project setting "
            "control_fraction); default: the project's default"
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for curve.csv and curve.png")] = Path(
        "simulation"
    ),
    keep: Annotated[bool, typer.Option(help="keep each seed's service folder")] = False,
) -> None:
    """Run the whole loop against a real service (API + worker) with a simulated annotator
    who answers from the ground truth; write the learning curve as CSV and PNG."""
    from activeseg.admin.simulation import (
        SimulationConfig,
        plot_learning_curves,
        run_simulation,
        write_csv,
    )

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request hides the rounds
    cfg = SimulationConfig(
        dataset=dataset,
        count=count,
        measure=measure,
        strategy=strategy,
        region_kind=region_kind,
        region_size=region_size,
        rounds=rounds,
        budget=budget,
        seeds=list(range(seeds)),
        model={"method": method, "steps": steps},
        protocol=protocol.value,
        control_fraction=control_fraction,
    )
    rows = run_simulation(cfg, workdir=out / "runs" if keep else None, keep=keep)
    write_csv(rows, out / "curve.csv")
    plot_learning_curves(rows, out / "curve.png", title=f"{dataset}: {cfg.label}")
    for row in rows:
        typer.echo(
            f"seed {row['seed']} round {row['round']}: {row['labelled_regions']} regions,"
            f" {100 * row['labelled_fraction']:.1f}% pixels, test mIoU {row['test_miou']},"
            f" {row['round_s']:.1f} s (label {row['label_s']:.1f}, retrain {row['retrain_s']:.1f},"
            f" re-score/queue {row['requeue_s']:.1f})"
        )
    for seed in cfg.seeds:
        mine = [row for row in rows if row["seed"] == seed]
        if mine:
            typer.echo(f"seed {seed}: {mine[-1]['seed_elapsed_s']:.1f} s in all")
    typer.echo(f"wrote {out / 'curve.csv'} and {out / 'curve.png'}")
