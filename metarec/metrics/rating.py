"""Per-user rating-error metrics on padded query sets.

Inputs are ``preds`` float ``[T, Q]``, ``target`` ``[T, Q]`` and ``mask`` bool ``[T, Q]`` (True where a
real query rating is); each row is one user (task). A metric is computed per user over that user's masked
entries and then averaged over users; users whose mask row is empty are ignored (not counted).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


def _check_inputs(preds: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Validate ``[T, Q]`` inputs; return them with ``target`` cast to the dtype of ``preds``."""
    if preds.ndim != 2:
        raise ValueError(f"preds must be 2-D [users, queries], got shape {tuple(preds.shape)}")
    if target.shape != preds.shape or mask.shape != preds.shape:
        raise ValueError(
            f"preds, target and mask must have the same shape, got {tuple(preds.shape)}, "
            f"{tuple(target.shape)} and {tuple(mask.shape)}"
        )
    if not preds.is_floating_point():
        raise ValueError(f"preds must be a floating-point tensor, got {preds.dtype}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    return preds, target.to(preds.dtype), mask


def _masked_user_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over each row's masked entries; NaN for rows with an empty mask."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum(dim=1)
    count = mask.sum(dim=1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def user_mae(preds: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-user mean absolute error ``[T]``; NaN for users with an empty mask row."""
    preds, target, mask = _check_inputs(preds, target, mask)
    return _masked_user_mean((preds - target).abs(), mask)


def user_rmse(preds: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-user root mean squared error ``[T]`` (sqrt of the user's MSE); NaN for empty mask rows."""
    preds, target, mask = _check_inputs(preds, target, mask)
    return _masked_user_mean((preds - target).square(), mask).sqrt()


class PerUserMean(Metric):
    """Base class: average over users of a per-user value.

    States are the sum of per-user values and the number of users, both reduced with ``sum`` across
    processes, so a distributed result is the exact average over all users (not an average of per-rank
    averages). ``compute()`` with zero users returns NaN.
    """

    full_state_update: bool = False

    total: Tensor
    users: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("users", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def per_user(self, preds: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Per-user values ``[T]``, NaN for users with an empty mask row."""
        raise NotImplementedError

    def update(self, preds: Tensor, target: Tensor, mask: Tensor) -> None:
        """Add the users (rows) of one padded batch; empty rows are skipped."""
        values = self.per_user(preds, target, mask)
        valid = mask.any(dim=1)
        self.total += torch.where(valid, values, torch.zeros_like(values)).sum().to(self.total.dtype)
        self.users += valid.sum()

    def compute(self) -> Tensor:
        """Average over users seen so far; NaN if there were none."""
        return self.total / self.users


class UserMAE(PerUserMean):
    """Mean over users of each user's MAE on their query set."""

    is_differentiable: bool = True
    higher_is_better: bool = False

    def per_user(self, preds: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return user_mae(preds, target, mask)


class UserRMSE(PerUserMean):
    """Mean over users of each user's RMSE (sqrt of that user's MSE) on their query set."""

    is_differentiable: bool = True
    higher_is_better: bool = False

    def per_user(self, preds: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return user_rmse(preds, target, mask)
