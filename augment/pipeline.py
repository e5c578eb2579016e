"""The random augmentation pipelines for training: positive views built from the registry.

Two ways to draw a view, one interface (``sample_specs``, ``view``, calling it on an image):

- ``RandomAugment``: each ``Step`` names a registered transform, the probability that it is
  applied, and the range its parameter is drawn from; the steps run in order.
- ``FamilyAugment``: one edit family (``augment.families``), or with some probability 2-3 of
  them at once, each drawing its parameters from its ranges; the held-out families are left out
  unless asked for.

A view is described by its list of canonical spec strings, so ``apply_transforms(image, specs)``
reproduces it exactly and a training log can say what a positive pair was made of.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .families import HELD_OUT_FAMILIES, draw_combo, draw_edit, family_names
from .transforms import TRANSFORMS, TransformSpec, apply_transforms, parse_transform

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """Apply transform ``name`` with probability ``p``; its first parameter from ``choices``
    or uniformly from ``low..high`` (integers for integer parameters, else rounded to 2 decimals)."""

    name: str
    p: float = 0.5
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None

    def __post_init__(self) -> None:
        transform = TRANSFORMS.get(self.name)
        if transform is None:
            parse_transform(self.name)  # raises the error listing the valid names
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"step {self.name}: probability must be in 0..1, not {self.p!r}")
        ranged = self.low is not None or self.high is not None
        if (ranged or self.choices) and not transform.params:
            raise ValueError(f"step {self.name}: the transform takes no parameter, so no range or choices")
        if ranged and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError(f"step {self.name}: need low <= high, not {self.low!r}..{self.high!r}")
        # Fail now, not mid-training, when a range reaches outside what the transform accepts.
        for value in (self.low, self.high, *(self.choices or ())):
            if value is not None:
                parse_transform(f"{self.name}:{self._format(value)}")

    def _format(self, value: float) -> str:
        kind = TRANSFORMS[self.name].params[0].kind
        return str(int(value)) if kind is int else str(round(float(value), 2))

    def sample(self, rng: np.random.Generator) -> TransformSpec | None:
        """This step's spec for one view, or None when the coin says skip it."""
        if rng.random() >= self.p:
            return None
        params = TRANSFORMS[self.name].params
        if self.choices:
            text = self._format(self.choices[int(rng.integers(len(self.choices)))])
        elif self.low is not None:
            if params[0].kind is int:
                text = str(int(rng.integers(int(self.low), int(self.high) + 1)))
            else:
                text = self._format(rng.uniform(self.low, self.high))
        else:
            return parse_transform(self.name)
        if self.name == "crop":  # a seeded position, so the view is reproducible from its spec
            text += f":{int(rng.integers(0, 2**31 - 1))}"
        return parse_transform(f"{self.name}:{text}")


def parse_step(text: str) -> Step:
    """``NAME:P`` or ``NAME:P:LOW:HIGH`` (e.g. ``bright:0.6:60:110``) as a Step."""
    name, *numbers = text.split(":")
    if len(numbers) not in (1, 3):
        raise ValueError(f"step {text!r}: expected NAME:P or NAME:P:LOW:HIGH")
    try:
        p, *bounds = (float(n) for n in numbers)
    except ValueError:
        raise ValueError(f"step {text!r}: P, LOW and HIGH must be numbers") from None
    return Step(name, p, *bounds)


def with_overrides(steps: Sequence[Step], overrides: Sequence[str]) -> tuple[Step, ...]:
    """``steps`` with each ``NAME:P[:LOW:HIGH]`` override replacing the step of that name
    (keeping its range when none is given), or added at the end when there is none."""
    result = list(steps)
    for text in overrides:
        step = parse_step(text)
        names = [s.name for s in result]
        if step.name not in names:
            result.append(step)
            continue
        i = names.index(step.name)
        old = result[i]
        if step.low is None:
            step = Step(step.name, step.p, old.low, old.high, old.choices)
        result[i] = step
    return tuple(result)


# Geometry first, then colour, then the stamp, then compression, as images travel the web.
DEFAULT_STEPS: tuple[Step, ...] = (
    Step("crop", 0.5, 0.6, 0.95),
    Step("rotate", 0.4, choices=(90, 180, 270)),
    Step("mirror", 0.5),
    Step("flip", 0.1),
    Step("tilt", 0.2, -15.0, 15.0),
    Step("scale", 0.3, 0.4, 1.5),
    Step("bright", 0.25, 20, 100),
    Step("dark", 0.25, 20, 80),
    Step("gray", 0.1),
    Step("blur", 0.2, 0.5, 2.5),
    Step("overlay", 0.1),
    Step("jpeg", 0.4, 25, 90),
)


class SeededViews:
    """Random views from one seeded generator: ``aug(image)`` is one positive view.

    Successive calls draw from that generator, so a run with the same seed and the same call
    order makes the same views; pass ``rng`` to make a view a function of its own seed alone.
    Subclasses say how a view's specs are drawn (``sample_specs``).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Restart the generator, e.g. per DataLoader worker (seed + worker id)."""
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def sample_specs(self, rng: np.random.Generator | None = None) -> list[str]:
        """Canonical spec strings of one random view, in the order they are applied."""
        raise NotImplementedError

    def view(
        self, image: Image.Image, rng: np.random.Generator | None = None
    ) -> tuple[Image.Image, list[str]]:
        """One random view of ``image`` and the specs that made it."""
        specs = self.sample_specs(rng)
        return apply_transforms(image, specs), specs

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.view(image)[0]


class RandomAugment(SeededViews):
    """Seeded random composition of registry transforms, one ``Step`` after another.

    ``at_least_one`` redraws an empty composition so that a view is never the unchanged image
    (which would be a trivial positive).
    """

    def __init__(
        self,
        seed: int = 0,
        steps: Sequence[Step] = DEFAULT_STEPS,
        max_ops: int | None = None,
        at_least_one: bool = True,
    ) -> None:
        if not steps:
            raise ValueError("RandomAugment needs at least one step")
        if max_ops is not None and max_ops < 1:
            raise ValueError(f"max_ops must be >= 1 or None, not {max_ops!r}")
        if at_least_one and not any(step.p > 0 for step in steps):
            raise ValueError("at_least_one needs a step with probability > 0")
        super().__init__(seed)
        self.steps = tuple(steps)
        self.max_ops = max_ops
        self.at_least_one = at_least_one

    def sample_specs(self, rng: np.random.Generator | None = None) -> list[str]:
        rng = self.rng if rng is None else rng
        while True:
            specs = [s for s in (step.sample(rng) for step in self.steps) if s is not None]
            if self.max_ops is not None and len(specs) > self.max_ops:
                keep = np.sort(rng.choice(len(specs), self.max_ops, replace=False))
                specs = [specs[i] for i in keep]
            if specs or not self.at_least_one:
                return [spec.canonical for spec in specs]

    def __repr__(self) -> str:
        return f"RandomAugment(seed={self.seed}, steps={len(self.steps)}, max_ops={self.max_ops})"


class FamilyAugment(SeededViews):
    """Views drawn from edit families: one family, or with probability ``combo_p`` 2-3 different
    families at once. ``families`` (default all) less ``exclude`` (default the held-out
    families, which training must never see) are drawn from, each as likely."""

    def __init__(
        self,
        seed: int = 0,
        families: Sequence[str] | None = None,
        exclude: Sequence[str] = HELD_OUT_FAMILIES,
        combo_p: float = 0.3,
    ) -> None:
        if not 0.0 <= combo_p <= 1.0:
            raise ValueError(f"combo_p must be in 0..1, not {combo_p!r}")
        self.families = family_names(families, exclude)
        if combo_p > 0 and len(self.families) < 2:
            raise ValueError(f"combinations need at least 2 families, not {self.families!r}; set combo_p=0")
        super().__init__(seed)
        self.combo_p = combo_p

    def sample_specs(self, rng: np.random.Generator | None = None) -> list[str]:
        rng = self.rng if rng is None else rng
        if rng.random() < self.combo_p:
            specs = draw_combo(rng, self.families)
        else:
            specs = draw_edit(self.families[int(rng.integers(len(self.families)))], rng)
        return [spec.canonical for spec in specs]

    def __repr__(self) -> str:
        return f"FamilyAugment(seed={self.seed}, families={len(self.families)}, combo_p={self.combo_p})"
