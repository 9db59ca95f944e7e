"""Labels a model trains on, kept apart from labels a run is scored against.

A run's ``label_key`` only scores the result (ARI, NMI, accuracy). A model that learns from labels
(scBiGNN) gets a :class:`LabelSpec` instead: the column, which of its values mean "not labelled", and
how many known labels to hide for an honest score. :meth:`LabelSpec.split` is the one place that decides
which cells' labels a model may see; :meth:`LabelSpec.training_labels` hands the model only those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError
from .params import param

EMPTY_VALUES = ("", "nan", "NaN", "NA", "None")


@dataclass(frozen=True)
class LabelSpec:
    """Which cells have a label a model may learn from."""

    key: str = param("", "obs column holding the cell-type labels to learn from")
    unlabelled: str | None = param(
        None, "A value of that column that means 'not labelled' (empty cells and NaN always do)"
    )
    holdout_fraction: float = param(
        0.0,
        "Share of the known labels hidden from training (stratified, seeded) to score the predictions",
        min=0.0,
        max=0.9,
    )
    folds: int = param(0, "Cross-validation folds over the known labels (0: no folds)", min=0, max=20)
    fold: int = param(0, "Which fold is hidden when folds > 0", min=0)
    seed: int = param(0, "Seed of the hold-out draw")

    def check(self) -> None:
        if not self.key:
            raise ConfigError("A label column is needed: set the labels' key.")
        if self.folds and self.holdout_fraction:
            raise ConfigError("Use either folds or a hold-out fraction, not both.")
        if self.folds == 1:
            raise ConfigError("Cross-validation needs at least 2 folds.")
        if self.folds and self.fold >= self.folds:
            raise ConfigError(f"fold must be below folds ({self.folds}); got {self.fold}.")

    def values(self, obs: pd.DataFrame) -> pd.Series:
        """The label column as text, with every 'not labelled' value as NaN."""
        if self.key not in obs:
            cols = ", ".join(map(str, obs.columns)) or "none"
            raise DataError(f"Label column {self.key!r} is not in the data; obs columns: {cols}.")
        raw = obs[self.key]
        text = raw.astype(object).where(raw.notna(), None)
        text = text.map(lambda v: None if v is None else str(v).strip())
        unknown = set(EMPTY_VALUES) | ({str(self.unlabelled)} if self.unlabelled is not None else set())
        return text.map(lambda v: np.nan if v is None or v in unknown else v)

    def known(self, obs: pd.DataFrame) -> np.ndarray:
        """Cells whose label is known (before any hold-out)."""
        return self.values(obs).notna().to_numpy()

    def split(self, obs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(train, held_out) boolean masks over the cells: disjoint, both inside :meth:`known`.

        The hold-out is stratified by label and seeded: each class gives the same share of its cells
        (rounded, at least one left for training), so rare classes stay in training."""
        labels = self.values(obs)
        known = labels.notna().to_numpy()
        held = np.zeros(len(labels), dtype=bool)
        if not self.holdout_fraction and not self.folds:
            return known, held
        rng = np.random.default_rng(self.seed)
        for _, idx in pd.Series(np.arange(len(labels)))[known].groupby(labels[known].to_numpy()):
            cells = rng.permutation(idx.to_numpy())
            if self.folds:
                held[cells[self.fold :: self.folds]] = True
            else:
                n_hide = min(int(round(self.holdout_fraction * cells.size)), cells.size - 1)
                held[cells[:n_hide]] = True
        return known & ~held, held

    def training_labels(self, obs: pd.DataFrame) -> np.ndarray:
        """The labels a model may learn from: hidden and unlabelled cells are None."""
        train, _ = self.split(obs)
        labels = self.values(obs).to_numpy(dtype=object)
        out = np.full(labels.shape, None, dtype=object)
        out[train] = labels[train]
        return out

    def summary(self, obs: pd.DataFrame) -> dict[str, Any]:
        train, held = self.split(obs)
        return {
            "key": self.key,
            "n_train": int(train.sum()),
            "n_held_out": int(held.sum()),
            "n_unlabelled": int((~train & ~held).sum()),
        }
