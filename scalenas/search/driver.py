"""The plain search loop: ask → evaluate → tell until the strategy is done, saved after every generation.

The driver writes only ``state.json`` (the strategy's :meth:`~scalenas.search.strategy.Strategy.state_dict`);
whatever else a caller wants after each generation (``scalenas search`` writes its reports) goes into the
``on_generation`` callback, which receives the search's :class:`~scalenas.search.results.SearchResults`, so the
search layer never depends on the report layer and the reports never see the strategy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from scalenas.errors import ScalenasError
from scalenas.runs import SearchFolder
from scalenas.search.results import SearchResults
from scalenas.search.strategy import Strategy
from scalenas.spaces.arch import Subnet
from scalenas.spaces.space import SearchSpace, load_space

def run_search(space: SearchSpace | str, strategy: Strategy,
               evaluate: Callable[[list[Subnet]], Sequence[float | Mapping[str, Any] | None]],
               out_dir: str | Path, resume: bool = False, progress: bool = True,
               on_generation: Callable[[SearchResults], Any] | None = None) -> dict[str, Any]:
    """ask → evaluate → tell until done; after every generation write ``out_dir/state.json``, then call
    ``on_generation(strategy.results)`` if given (also after the final save and the save on KeyboardInterrupt).

    ``evaluate`` returns one result per subnet, as :meth:`Strategy.tell` takes it: the value of the search's
    metric, or a dict with it (and optionally ``top1``, ``loss``, ``top1_se``, ``loss_se``), None when it failed.
    ``resume=True`` continues from ``out_dir/state.json``. A KeyboardInterrupt saves the state, then re-raises.
    Returns :meth:`Strategy.best` plus ``evaluations``, ``generations`` and ``out_dir``.
    """
    from tqdm.auto import tqdm

    space = load_space(space)
    if space != strategy.space:  # same content (a space rebuilt from a checkpoint has no file)
        raise ScalenasError(f"space {space.name!r} differs from the strategy's {strategy.space.name!r}")
    out = Path(out_dir)
    folder = SearchFolder(out)
    if resume:
        strategy.load_state_dict(folder.read_state())
    elif folder.holds_state():
        raise ScalenasError(f"{out} already holds a search ({folder.STATE}): resume it or choose another folder")

    def save() -> None:
        folder.write_state(strategy.state_dict())
        if on_generation is not None:
            on_generation(strategy.results)

    bar = tqdm(total=strategy.max_generations(), initial=min(strategy.generation, strategy.max_generations()),
               desc=f"search {strategy.name}", unit="gen", disable=not progress)
    try:
        while not strategy.done:
            subnets = strategy.ask()
            if not subnets:  # cannot happen: a generation with nothing to evaluate finishes inside tell/_begin
                raise RuntimeError("search asked for nothing but is not done")
            values = list(evaluate(subnets))
            if len(values) != len(subnets):
                raise ValueError(f"evaluator returned {len(values)} values for {len(subnets)} subnets")
            before = strategy.generation
            strategy.tell({s.to_json(): v for s, v in zip(subnets, values)})
            if strategy.generation != before or strategy.done:
                save()
                last = strategy.results.history[-1] if strategy.results.history else {}
                bar.update(strategy.generation - before)
                rate = last.get("evaluations_per_s")
                best = last.get("best_fitness")
                bar.set_postfix(best="-" if best is None else f"{best:.4f}",
                                evals_per_s=f"{rate:.1f}" if rate else "-", refresh=False)
    except KeyboardInterrupt:
        save()
        raise
    finally:
        bar.close()
    save()
    return {**strategy.best(), "evaluations": strategy.evaluations, "generations": strategy.generation,
            "out_dir": str(out)}
