"""An individual of the search (:class:`Candidate`: a base network and one scaling state per stage) and the key
that deduplicates subnets by the network they build (:func:`built_key`)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from scalenas.search.markov import State
from scalenas.search.objectives import FamilyObjective
from scalenas.spaces.arch import Base, Subnet, base_to_json, derive_subnet
from scalenas.spaces.space import SearchSpace, load_space


@dataclass(frozen=True)
class Candidate:
    """A base network and one scaling state per stage 0..S (None: the stage is not part of this candidate).

    Family strategies fill every stage; ``compound`` and ``independent`` also use partial candidates.
    Stage 0's state is always (0, 0, 0), the base's single option.
    """

    base: Base
    states: tuple[State | None, ...]

    @property
    def stages(self) -> list[int]:
        return [s for s, x in enumerate(self.states) if x is not None]

    @property
    def is_family(self) -> bool:
        return all(x is not None for x in self.states)

    @property
    def chain(self) -> list[State]:
        """x_1..x_S (family candidates only)."""
        return [x for x in self.states[1:]]  # type: ignore[misc]

    def members(self, objective: FamilyObjective) -> list[tuple[int, Subnet]]:
        """(stage, subnet) of every stage this candidate covers."""
        return [(s, objective.subnet(self.base, s, self.states[s])) for s in self.stages]  # type: ignore[arg-type]

    def family_key(self, objective: FamilyObjective) -> tuple[tuple[int, str], ...]:
        """(stage, built key) per member: two candidates that build the same networks share it."""
        return tuple((s, built_key(objective.space, sub)) for s, sub in self.members(objective))

    def to_dict(self) -> dict[str, Any]:
        return {"base": base_to_json(self.base), "states": [None if x is None else list(x) for x in self.states]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Candidate":
        return cls(tuple(tuple(layers) for layers in data["base"]),
                   tuple(None if x is None else tuple(int(v) for v in x) for x in data["states"]))


@lru_cache(maxsize=200_000)
def _built_key(space: SearchSpace, subnet: Subnet) -> str:
    # A SearchSpace hashes and compares by its content_key, so this cache is keyed on (content, subnet): a space
    # rebuilt from a checkpoint (no YAML on disk, or num_classes fitted to the data) is never re-read by path.
    return derive_subnet(space, subnet).key()


def built_key(space: SearchSpace, subnet: Subnet) -> str:
    """Dedupe key of the network ``subnet`` builds (cached by the space's content_key and the subnet)."""
    return _built_key(load_space(space), subnet)
