"""A whole search over a trained supernet: inputs, targets, the Ray evaluation pool and the driver.

``scalenas search`` and ``scalenas demo`` both call :func:`search_supernet`; they pass the report writer as
``on_generation`` (the search layer never writes reports itself; the writer gets the search's results).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from scalenas.errors import ScalenasError
from scalenas.io import folder_lock, remove_file, remove_stale_temps
from scalenas.options import check_options, option
from scalenas.runs import SUPERNET_CKPT, RunFolder, SearchFolder, latest_run
from scalenas.search.driver import run_search
from scalenas.search.fitness import SupernetEvaluator
from scalenas.search.objectives import LatencyTargets
from scalenas.search.raylocal import default_workers
from scalenas.search.raypool import EvaluatorPool
from scalenas.search.results import SearchResults
from scalenas.search.strategies import make_strategy, strategy_names
from scalenas.search.strategy import SearchOptions, Strategy
from scalenas.spaces.flops import FLOPS_CONVENTION
from scalenas.spaces.targets import check_targets, stage_targets
from scalenas.train.checkpoint import checkpoint_space, read_checkpoint, resolve_checkpoint

FITNESS = {  # per --metric: what a member's score is (the fitness is their weighted mean)
    "top1": "supernet holdout top-1 after BN recalibration, coupling side 0",
    "loss": "minus the supernet holdout log-loss (natural log, mean per image) after BN recalibration, coupling "
            "side 0",
}
NOISE = "bootstrap standard error of the metric over the holdout images (200 seeded resamples)"


@dataclass
class EvaluationSettings:
    """How candidates are evaluated (everything else about the search is in :class:`SearchOptions`)."""

    workers: int | None = option(None, "Ray evaluation workers (None: one per GPU, else one per CPU core); "
                                 "0 = in-process", min=0)
    threads_per_worker: int = option(1, "torch threads per evaluation worker", min=1)
    ray_address: str | None = option(None, "join an existing Ray cluster (host:port or 'auto'); None: a private "
                                     "local instance on 127.0.0.1")
    calib_batches: int = option(4, "BN recalibration batches per candidate", min=1)
    device: str | None = option(None, "evaluation device (None: cuda if available)", choices=("cpu", "cuda"))


def resolve_inputs(run: str | None, supernet: str | None) -> tuple[Path, Path]:
    """(checkpoint file, run directory) from ``--run`` / ``--supernet`` / the most recent run."""
    if supernet:
        ckpt = resolve_checkpoint(supernet)
        return ckpt, ckpt.parent
    run_dir = Path(run) if run else latest_run(SUPERNET_CKPT)
    if not run_dir.is_dir():
        raise ScalenasError(f"--run {run_dir}: not a directory")
    return resolve_checkpoint(run_dir / SUPERNET_CKPT), run_dir


def resolve_out(run_dir: Path, out: str | Path | None, force: bool, resume: bool) -> Path:
    """The report folder: ``out``, else ``RUN/search`` (``RUN/search-2``, ... when one exists)."""
    if out:
        path = Path(out)
        if resume:
            return path
        if SearchFolder(path).holds_state() and not force:
            raise ScalenasError(f"{path} already holds a search; use --resume, --force or another --out")
        return path
    base = run_dir / "search"
    if resume:
        done = sorted(run_dir.glob("search*"), key=lambda p: p.stat().st_mtime)
        if not done:
            raise ScalenasError(f"--resume: no search folder in {run_dir}")
        return done[-1]
    if not SearchFolder(base).holds_state() or force:
        return base
    k = 2
    while SearchFolder(run_dir / f"search-{k}").holds_state():
        k += 1
    return run_dir / f"search-{k}"


def check_resumable(folder: SearchFolder, probe: Strategy) -> dict[str, Any]:
    """Load the saved search state into ``probe`` (a fresh strategy like the one that will resume), which
    checks that it fits (format, strategy, space, targets); returns the saved options. Nothing is written."""
    import logging
    import warnings

    state = folder.read_state()
    state_path = folder.state_file
    log = logging.getLogger(type(probe).__module__)
    quiet = log.disabled
    try:
        # The resume itself warns about options that differ; this check stays silent.
        log.disabled = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe.load_state_dict(state)
    except ScalenasError as exc:
        text = str(exc)
        raise ScalenasError(text if text.startswith("cannot resume") else f"cannot resume {state_path}: {text}") \
            from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ScalenasError(f"cannot resume: {state_path} is damaged ({type(exc).__name__}: {exc})") from None
    finally:
        log.disabled = quiet
    return probe.options.to_dict()


def write_search_inputs(out_dir: Path, run_dir: Path, space) -> None:
    """The search folder's own copies of what it was run on: the space (``space.yaml``, num_classes fitted to the
    data) and the run's data record (``data.json``), so member files and ``train --family`` never depend on the
    run folder staying where it is (:class:`~scalenas.runs.SearchFolder`)."""
    from scalenas.train.config import legacy_data_record

    folder = SearchFolder(out_dir)
    folder.write_space(space.raw)
    record = RunFolder(run_dir).data_record() or legacy_data_record(run_dir)
    if record is not None:
        folder.write_data_record(record)


def latency_targets(space, target_latency: str, table_path: str | Path, stages: int | None, growth: float | None,
                    tolerance: float, lazy: bool = False, allow_other_device: bool = False) -> LatencyTargets:
    """The latency targets of stages 0..S (``8ms``: the top stage, halving per stage at growth 2; or a comma list)
    predicted from the table at ``table_path``, checked: the table fits the space and this device (else one
    line), covers every layer of stages 0..S unless ``lazy``, and every stage can reach its target."""
    from scalenas.latency.layers import space_layer_configs
    from scalenas.latency.table import LatencyTable
    from scalenas.latency.targets import check_latency_targets, latency_stage_targets

    n = space.num_scaling_stages if stages is None else stages
    targets = latency_stage_targets(target_latency, n, space.growth if growth is None else growth)
    table = LatencyTable.open(table_path, space, lazy=lazy, allow_other_device=allow_other_device)
    table.measure_missing(space_layer_configs(space))  # lazy: times them now; else names the first one missing
    check_latency_targets(space, targets, tolerance, table.predict)
    return LatencyTargets(targets, table.predict)


def search_supernet(ckpt: Path, run_dir: Path, target_flops: str | None, *, strategy: str = "markov",
                    options: SearchOptions | None = None, evaluation: EvaluationSettings | None = None,
                    stages: int | None = None, growth: float | None = None, out: str | Path | None = None,
                    resume: bool = False, force: bool = False, progress: bool = True,
                    on_generation: Callable[[Path, SearchResults], Any] | None = None,
                    announce: Callable[[str], None] = print, target_latency: str | None = None,
                    latency_table: str | Path | None = None, latency_lazy: bool = False,
                    allow_other_device: bool = False) -> dict[str, Any]:
    """Search a family on the supernet ``ckpt``; returns the driver's result plus ``out_dir``, ``seconds``.

    ``target_latency`` (with ``latency_table``, a table of :mod:`scalenas.latency`) constrains the members' predicted
    latency as ``target_flops`` does their FLOPs; either may be None, not both.

    ``on_generation(out_dir, results)`` runs after every generation with the search's
    :class:`~scalenas.search.results.SearchResults` (``scalenas search`` writes its reports).
    Nothing is written or deleted before the inputs, the targets and the evaluation pool are in place.
    """
    import torch

    if strategy not in strategy_names():
        raise ScalenasError(f"--strategy {strategy!r}: unknown (choose from {', '.join(strategy_names())})")
    options = options or SearchOptions()
    evaluation = check_options(evaluation or EvaluationSettings(), "evaluation settings")
    payload = read_checkpoint(ckpt)
    space = checkpoint_space(payload, str(ckpt))
    del payload
    if target_flops is None and target_latency is None:
        raise ScalenasError("give --target-flops, --target-latency or both")
    if (target_latency is None) != (latency_table is None):
        raise ScalenasError("--target-latency needs --latency-table (a table of scalenas latency build) and the "
                            "other way round")
    targets = None
    if target_flops is not None:
        targets = stage_targets(space, target_flops, stages, growth)
        check_targets(space, targets, options.tolerance)
    latency = None if target_latency is None else \
        latency_targets(space, target_latency, latency_table, stages, growth, options.tolerance, latency_lazy,
                        allow_other_device)
    search = make_strategy(strategy, space, targets, options, latency)
    out_dir = resolve_out(run_dir, out, force, resume)
    recorded_options = search.options.to_dict()
    if resume:  # the saved state must fit this search (strategy, space, targets) before anything is written
        probe = make_strategy(strategy, space, targets, options, latency)
        recorded_options = check_resumable(SearchFolder(out_dir), probe)
        if probe.done and SearchFolder(out_dir).reports_complete():  # a finished search stays as it is
            announce(f"the search in {out_dir} is already finished ({probe.generation} generations, "
                     f"{probe.evaluations} evaluations); nothing changed")
            return {**probe.best(), "evaluations": probe.evaluations, "generations": probe.generation,
                    "out_dir": str(out_dir), "seconds": 0.0, "targets": targets, "already_finished": True}
    device = evaluation.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ScalenasError("--device cuda: no CUDA device is available")
    workers = default_workers() if evaluation.workers is None else evaluation.workers
    make = functools.partial(SupernetEvaluator, str(ckpt), calib_batches=evaluation.calib_batches, device=device,
                             threads=evaluation.threads_per_worker)
    t0 = time.perf_counter()
    # One search writes a folder at a time; a folder this creates is removed again if the search fails first.
    with folder_lock(out_dir, "search"), \
            EvaluatorPool(make, workers, threads_per_worker=evaluation.threads_per_worker,
                          ray_address=evaluation.ray_address,
                          gpus_per_worker=1.0 if device == "cuda" else 0.0) as pool:
        remove_stale_temps(out_dir)
        if force and not resume:
            for name in SearchFolder.SEARCH_FILES:
                remove_file(out_dir / name)
        write_search_inputs(out_dir, run_dir, space)
        SearchFolder(out_dir).write_config({
            "supernet": str(Path(ckpt).resolve()), "run_dir": str(Path(run_dir).resolve()), "space": space.name,
            "space_key": space.content_key, "strategy": strategy, "targets": targets,
            "options": recorded_options, "workers": workers, "threads_per_worker": evaluation.threads_per_worker,
            "ray_address": evaluation.ray_address, "device": device, "calib_batches": evaluation.calib_batches,
            "metric": recorded_options["metric"],
            "fitness": FITNESS[recorded_options["metric"]], "noise": NOISE,
            "tie_tolerance": recorded_options["tie_tolerance"], "flops_convention": FLOPS_CONVENTION,
            **({} if latency is None else {"latency": {
                "table": str(Path(latency_table).resolve()), "targets_ms": list(latency.targets),
                "lazy": latency_lazy, "allow_other_device": allow_other_device}})})
        from scalenas.spaces.targets import format_flops

        from scalenas.latency.targets import format_latency

        shown = [" / ".join(([format_flops(targets[s])] if targets else [])
                            + ([format_latency(latency.targets[s])] if latency else [])) for s in range(search.n + 1)]
        announce(f"search {strategy} on {space.name}: targets "
                 + ", ".join(f"s{s} {x}" for s, x in enumerate(shown))
                 + f" (±{options.tolerance:.0%}); metric {recorded_options['metric']}; supernet {ckpt}; "
                 f"{workers} worker(s); reports in {out_dir}")

        def evaluate(subnets):  # the evaluators' whole results: top-1, loss and their noise
            return pool.map([s.to_json() for s in subnets])

        callback = None if on_generation is None else functools.partial(on_generation, out_dir)
        result = run_search(space, search, evaluate, out_dir, resume=resume, progress=progress,
                            on_generation=callback)
    return {**result, "out_dir": str(out_dir), "seconds": time.perf_counter() - t0, "targets": targets}
