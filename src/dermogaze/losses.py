"""The multi-task training objective of paper §3.2 (docs/design.md §5).

Pieces, each usable on its own:

- :func:`soft_iou_loss` / :func:`pairwise_soft_iou_loss`: the softIoU loss of Eq. 10 (with the
  denominator's sign typo corrected), element-wise or as the ``(S, T)`` cost matrix.
- :func:`hungarian_match` / :func:`match_batch`: the one-to-one assignment of the *present*
  ground-truth structures to the ``T`` gaze steps (``scipy.optimize.linear_sum_assignment``), on
  the cost of :func:`matching_cost`.
- :func:`focal_loss`: Eq. 12 on the melanoma probability (θ = 0 is the BCE of Eq. 11).
- :class:`GazeLoss`: ``L = α L_diag + β (γ L_seg + μ L_class)`` (Eq. 14) with the structure
  balancing of Eqs. 15-16 or mini-batch balancing, plus the optional attention supervision
  ``λ L_att`` (beyond the paper, docs/design.md §6b; λ = ``loss.attention``, 0 = the paper).
- :func:`area_fraction`: ground-truth masks reduced to the attention grid (cell = fraction of its
  pixels inside the mask), shared with :mod:`dermogaze.metrics.explanation`.

Everything is computed in float32 with autocast disabled: the softIoU sums run over ``H*W``
pixels (50 176 at 224 px), which float16 cannot hold reliably.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .config import BALANCING, LossConfig
from .errors import DermogazeError
from .models.output import GazeOutput
from .structures import presence_weights

logger = logging.getLogger(__name__)


Matching = tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------------------------
# softIoU (Eq. 10)
# --------------------------------------------------------------------------------------------
def soft_iou_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """softIoU loss of Eq. 10, ``1 - Σ(M̂·M) / (Σ M̂ + Σ M - Σ(M̂·M) + ε)``.

    The paper's Eq. 10 prints ``+ ⟨M̂, M⟩`` in the denominator; that is a typo (the loss could
    then never reach 0 for a perfect prediction). This is the usual soft Jaccard with a minus
    (docs/design.md §5). Identical binary masks give ``≈ 0`` (exactly ``ε / (n + ε)`` for ``n`` pixels),
    disjoint masks give 1, and two empty masks give 1 (no overlap to reward).

    Args:
        pred: predicted masks in ``[0, 1]`` (probabilities), shape ``(..., H, W)``.
        target: ground-truth masks in ``[0, 1]``, broadcastable against ``pred``.
        eps: added to the denominator so empty masks do not divide by zero.

    Returns:
        The loss for each mask pair, shape ``broadcast(pred, target).shape[:-2]``.
    """
    inter = (pred * target).sum(dim=(-2, -1))
    union = pred.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) - inter
    return 1.0 - inter / (union + eps)


def pairwise_soft_iou_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """softIoU loss (Eq. 10, corrected) between every target mask and every predicted mask.

    This is the ``S × T`` matrix of comparisons of §3.2, computed for a whole batch with one
    batched matrix product (no loop over pairs or pixels). Entry ``[..., s, t]`` equals
    ``soft_iou_loss(pred[..., t, :, :], target[..., s, :, :], eps)``.

    Args:
        pred: predicted masks, shape ``(..., T, H, W)``.
        target: ground-truth masks, shape ``(..., S, H, W)`` with the same leading dims and size.

    Returns:
        Cost matrix of shape ``(..., S, T)``.
    """
    if pred.shape[:-3] != target.shape[:-3] or pred.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"pairwise_soft_iou_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must share "
            "leading dimensions and mask size"
        )
    p = pred.flatten(-2)  # (..., T, HW)
    g = target.flatten(-2)  # (..., S, HW)
    inter = g @ p.transpose(-1, -2)  # (..., S, T)
    union = g.sum(-1).unsqueeze(-1) + p.sum(-1).unsqueeze(-2) - inter  # (..., S, 1) + (..., 1, T) → (..., S, T)
    return 1.0 - inter / (union + eps)


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------
def hungarian_match(cost: Tensor | np.ndarray, present: Tensor | np.ndarray | Sequence[bool]) -> Matching:
    """Assign the present structures of one sample to gaze steps (§3.2, "Unsorted sequences").

    Only rows of *present* structures take part. The assignment minimises the total cost
    (``scipy.optimize.linear_sum_assignment``, the Hungarian algorithm). With more steps than
    present structures, the surplus steps stay unmatched (they get no structure loss); with more
    present structures than steps, only ``T`` structures are matched (those giving the lowest
    total cost). The matching is a discrete choice: it carries no gradient (a tensor is detached).

    Args:
        cost: cost matrix ``(S, T)``, row ``s`` = structure ``s`` in the order of the data's structure set.
        present: ``(S,)`` booleans, True where structure ``s`` is present in the sample.

    Returns:
        ``(step_indices, structure_indices)``: two int64 arrays of equal length
        ``min(#present, T)``, sorted by step; ``structure_indices`` use the row numbering of
        ``cost`` (the numbering of the data's structure set).

    Raises:
        ValueError: wrong shapes, or a non-finite cost of a present structure (diverged model).
    """
    if isinstance(cost, Tensor):
        cost = cost.detach().float().cpu().numpy()
    if isinstance(present, Tensor):
        present = present.detach().cpu().numpy()
    cost = np.asarray(cost, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if cost.ndim != 2 or present.shape != (cost.shape[0],):
        raise ValueError(
            f"hungarian_match: expected cost (S, T) and present (S,), got {cost.shape} and {present.shape}"
        )
    rows = np.flatnonzero(present)  # structure index of each row of the sub-matrix
    empty = np.zeros(0, dtype=np.int64)
    if rows.size == 0 or cost.shape[1] == 0:
        return empty, empty.copy()
    sub = cost[rows]  # (P, T)
    if not np.all(np.isfinite(sub)):
        raise ValueError("hungarian_match: the cost matrix holds NaN or inf (non-finite predicted masks?)")
    r, t = linear_sum_assignment(sub)
    order = np.argsort(t, kind="stable")
    return t[order].astype(np.int64), rows[r[order]].astype(np.int64)


def match_batch(cost: Tensor, present: Tensor) -> list[Matching]:
    """:func:`hungarian_match` for every sample of a batch (one device→host copy for all).

    Args:
        cost: ``(B, S, T)`` cost matrices (see :func:`pairwise_soft_iou_loss`).
        present: ``(B, S)`` booleans.

    Returns:
        One ``(step_indices, structure_indices)`` pair of int64 arrays per sample.
    """
    c = cost.detach().float().cpu().numpy()  # (B, S, T)
    p = present.detach().cpu().numpy().astype(bool)  # (B, S)
    return [hungarian_match(c[i], p[i]) for i in range(c.shape[0])]


def matches_on_gazes(cfg: LossConfig | None, lam: float | None = None) -> bool:
    """The loss's Hungarian matching weighs the gazes: ``cfg.attention_matching`` with λ > 0.

    ``lam``: the λ in effect (a warm-up's, :func:`attention_weight`); ``None`` = ``cfg.attention``.
    """
    return cfg is not None and cfg.attention_matching and (cfg.attention if lam is None else lam) > 0


def matches_on_masks_only(cfg: LossConfig | None) -> bool:
    """The loss's Hungarian matching is the paper's, on the masks alone (with the full λ of ``cfg``)."""
    return not (matches_on_gazes(cfg) or (cfg is not None and cfg.class_matching))


def matching_cost(
    cost: Tensor,
    outside: Tensor | None,
    cfg: LossConfig | None,
    lam: float | None = None,
    classes: Tensor | None = None,
) -> Tensor:
    """The ``(B, S, T)`` cost the loss's Hungarian matching minimises.

    The paper's: ``cost``, the soft IoU loss of every (structure, step) pair
    (:func:`pairwise_soft_iou_loss`). Beyond it, the pair losses that are trained, each term when its option
    is on: ``βγ·(1 − soft IoU)``, ``+ λ·(1 − Σ A_t·m_s)`` (``outside``) with ``cfg.attention_matching``, λ > 0
    and attention maps (:func:`matches_on_gazes`), ``+ βμ·CE(pred_t, s)`` (``classes``) with
    ``cfg.class_matching`` and structure logits (the class-aware matching of DETR).

    Args:
        cost: soft IoU losses ``(B, S, T)``.
        outside: ``1 − Σ A_t·m_s`` ``(B, S, T)``, or ``None`` (no attention maps).
        cfg: the loss section (``None``: the paper's matching).
        lam: the λ in effect (a warm-up's, :func:`attention_weight`); ``None`` = ``cfg.attention``.
        classes: ``−log softmax(pred_t)[s]`` ``(B, S, T)`` (:func:`pairwise_cross_entropy`), or ``None``.
    """
    gazes = outside is not None and matches_on_gazes(cfg, lam)
    names = classes is not None and cfg is not None and cfg.class_matching
    if not (gazes or names):
        return cost
    total = cfg.beta * cfg.gamma * cost
    if gazes:
        total = total + (cfg.attention if lam is None else lam) * outside
    if names:
        total = total + cfg.beta * cfg.mu * classes
    return total


def pairwise_cross_entropy(structure_logits: Tensor) -> Tensor:
    """The cross-entropy of every (structure, step) pair, ``−log softmax(pred_t)[s]``.

    Shape:
        ``(B, T, S)`` logits → ``(B, S, T)`` float32.
    """
    return -torch.log_softmax(structure_logits.float(), dim=-1).transpose(1, 2)


# --------------------------------------------------------------------------------------------
# Masks on the attention grid (attention supervision, explanation measures)
# --------------------------------------------------------------------------------------------
def area_fraction(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Masks reduced to a coarser grid by area fraction: each cell = the fraction of its pixels inside the mask.

    When the grid divides the mask (the attention grid does: ``H/8`` cells of 8 pixels) this is
    ``avg_pool2d`` with a cell-sized kernel, exactly the area fraction. Otherwise it is
    ``adaptive_avg_pool2d``, whose cells are the (possibly overlapping) pixel ranges
    ``[floor(i·H/h), ceil((i+1)·H/h))``: the same definition on cells of unequal size.

    Args:
        masks: 0/1 (or soft) masks ``(..., H, W)``.
        size: the grid ``(h, w)``.

    Returns:
        ``(..., h, w)`` float32 values in ``[0, 1]``; a mask smaller than one cell gives a value
        ``> 0`` (its area share) in the cells it touches.
    """
    h, w = size
    big_h, big_w = masks.shape[-2:]
    x = masks.float().reshape(-1, 1, big_h, big_w)  # (N, 1, H, W)
    if big_h % h == 0 and big_w % w == 0:
        x = F.avg_pool2d(x, kernel_size=(big_h // h, big_w // w))
    else:
        x = F.adaptive_avg_pool2d(x, (h, w))
    return x.reshape(*masks.shape[:-2], h, w)


# --------------------------------------------------------------------------------------------
# Focal loss (Eqs. 11-12)
# --------------------------------------------------------------------------------------------
def focal_loss(logits: Tensor, labels: Tensor, theta: float = 2.0, reduction: str = "mean") -> Tensor:
    """Focal loss of Eq. 12 on the melanoma probability ``ŷ = softmax(logits)[:, 1]``.

    ``FL = -y (1-ŷ)^θ log ŷ - (1-y) ŷ^θ log(1-ŷ)``. Computed from the logits: with the log-odds
    ``d = z_1 - z_0`` (``ŷ = sigmoid(d)``, the same as the two-way softmax), ``log ŷ = logsigmoid(d)``
    and ``log(1-ŷ) = logsigmoid(-d)`` (never ``log`` of a probability, accurate even for ``ŷ``
    within float32 rounding of 0 or 1). The modulating factors are ``exp(θ log(·))``, so θ = 0
    gives a factor of exactly 1, i.e. the BCE of Eq. 11, and no infinite gradient appears at
    ``ŷ ∈ {0, 1}``.

    Args:
        logits: diagnosis logits ``(B, 2)``; index 1 = melanoma.
        labels: ``(B,)`` 0/1 labels (int or float; soft labels in ``[0, 1]`` also work).
        theta: focusing parameter θ ≥ 0.
        reduction: ``"mean"`` (over the batch), ``"sum"`` or ``"none"`` (per sample, ``(B,)``).

    Returns:
        Scalar loss, or ``(B,)`` with ``reduction="none"``.
    """
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError(f"focal_loss: expected logits of shape (B, 2), got {tuple(logits.shape)}")
    if theta < 0:
        raise ValueError(f"focal_loss: theta must be >= 0, got {theta}")
    z = logits.float()
    d = z[:, 1] - z[:, 0]  # (B,) melanoma log-odds: ŷ = softmax(z)[:, 1] = sigmoid(d)
    log_pos, log_neg = F.logsigmoid(d), F.logsigmoid(-d)  # log ŷ, log(1-ŷ), accurate near 0 and 1
    y = labels.to(device=logits.device, dtype=d.dtype).reshape(-1)
    loss = -y * torch.exp(theta * log_neg) * log_pos - (1 - y) * torch.exp(theta * log_pos) * log_neg  # (B,)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"focal_loss: unknown reduction {reduction!r}")


# --------------------------------------------------------------------------------------------
# Multi-task loss (Eq. 14) with balancing (Eqs. 15-16, mini-batch)
# --------------------------------------------------------------------------------------------
def _labelled_focal_loss(logits: Tensor, labels: Tensor, theta: float) -> Tensor:
    """:func:`focal_loss` averaged over the samples whose label is known (``>= 0``; negative or NaN = unknown).

    Zero, attached to the graph, when no sample of the batch is labelled.
    """
    y = labels.to(device=logits.device).reshape(-1)
    known = y >= 0  # (B,) False for negative and NaN labels
    if bool(known.all()):
        return focal_loss(logits, y, theta)
    if not bool(known.any()):
        return logits.sum() * 0.0
    return focal_loss(logits[known], y[known], theta)


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """``Σ w v / Σ w`` over the used pairs (PyTorch's weighted cross-entropy convention)."""
    return (weights * values).sum() / weights.sum()


def attention_weight(cfg: LossConfig, epoch: int) -> float:
    """The λ of the training loss at 1-based ``epoch``: ``λ·min(1, (epoch − 1)/K)``, K = ``cfg.attention_warmup``.

    The first epoch trains the paper's loss alone (the masks, hence the matching that chooses each
    gaze's target, start from noise), λ is reached at epoch ``K + 1``; ``K = 0`` gives λ throughout.
    Validation always uses the full λ, so the best epoch is chosen on the final objective.
    """
    if cfg.attention_warmup <= 0:
        return cfg.attention
    return cfg.attention * min(1.0, (epoch - 1) / cfg.attention_warmup)


class GazeLoss(nn.Module):
    """``L = α L_diag + β (γ L_seg + μ L_class)`` (Eq. 14, docs/design.md §5).

    - ``L_diag``: :func:`focal_loss` (Eq. 12) with θ = ``cfg.focal_theta``, mean over the *labelled*
      samples of the batch. A sample whose diagnosis is unknown (label negative or NaN: a
      structure-only collection such as ISIC 2018 Task 1-2 without ``--labels``) takes part in the
      structure terms only; a batch without any labelled sample has ``L_diag = 0`` (attached).
    - Matching: per sample, softIoU cost between every present structure and every step
      (:func:`pairwise_soft_iou_loss` on the post-sigmoid masks, whole batch at once), assigned by
      :func:`hungarian_match` on detached values.
    - ``L_seg``: softIoU loss of the matched (step, structure) pairs, gathered from the same cost
      tensor (so unmatched steps get exactly zero gradient from it).
    - ``L_class``: ``F.cross_entropy`` of the matched step's structure logits against the
      matched structure (Eq. 13).
    - Both structure terms are reduced over all matched pairs of the batch according to
      ``cfg.balancing``:

      * ``"w"`` / ``"w'"`` (also ``"w_prime"``): weighted mean with the per-structure weights of
        Eq. 15 / Eq. 16 (:func:`dermogaze.structures.presence_weights` of the training presences),
        divided by the sum of the weights of the pairs used;
      * ``"batch"``: each structure's losses averaged over its occurrences in the batch, then
        averaged over the structures matched in the batch, so each counts once (the weighted
        mean with weight ``1 / n_s`` for a structure occurring ``n_s`` times);
      * ``"none"``: plain mean over all matched pairs.

    Attention supervision (beyond the paper, docs/design.md §6b): with ``λ = cfg.attention > 0`` the loss
    gains ``λ L_att``, ``L_att`` = the balanced mean over the matched pairs ``(t, s)`` of
    ``1 − Σ A_t·m_s`` (the attention mass of gaze ``t`` outside its matched structure, ``m_s``
    reduced to the attention grid by :func:`area_fraction`). It is a term of its own, outside
    ``β(...)``: λ alone sets its weight. It reaches only what makes ``A_t`` (the attentive model and
    the encoder). ``"att"`` is reported for every decoder variant with attention maps (0 without
    them), detached from the loss when λ = 0, so the paper's loss is unchanged. Two options go with
    it (both inert at λ = 0):

    * ``cfg.attention_warmup = K``: the training loop passes ``attention=`` :func:`attention_weight`
      (λ from 0 to its value over K epochs), so the masks, hence the matching, settle first;
    * ``cfg.attention_matching``: the Hungarian matching minimises the pair losses that are trained,
      ``βγ·(1 − soft IoU) + λ·(1 − Σ A_t·m_s)``, instead of the masks' term alone. When two steps
      decode the same mask (early, or the whole lesion for both lesion and pigment network) the
      masks alone assign them by chance, batch after batch, and each gaze is pulled towards both
      structures in turn; weighing the gazes keeps each step on the structure it looks at
      (:func:`matching_cost`, which the explanation measures use too: their "matched" structure is
      the loss's).

    Not tied to λ: ``cfg.class_matching`` adds the classification term ``βμ·CE(pred_t, s)`` to the matching's
    cost (DETR's class-aware matching), so a step the classifier already names ``s`` is matched to ``s`` when
    its mask fits about as well as another step's; on real images the masks alone swap the lesion and the
    pigment network between steps from batch to batch, and the classifier cannot learn which step is which.

    Decisions where the paper is silent:

    - A variant without a decoder (``out.masks is None``) is trained on ``loss = L_diag``
      itself, *not* ``α L_diag``: "the loss reduces to L_diag" (the scale is irrelevant to Adam).
    - A batch with no matched pair (no present structure) gives ``seg = cls = 0`` (attached to
      the graph, so backward works and every parameter still receives a gradient).
    - The number of structures ``S`` is that of the data (``batch["masks"].shape[1]``, the cache's
      structure set), which must equal the structure classifier's size.
    - ``batch["present"]`` is used when given; otherwise a structure is present where its mask
      has a positive pixel (docs/design.md §1).
    - With more present structures than steps, the structures left out of the matching get no
      loss (and do not count in ``"batch"`` balancing).

    Args:
        cfg: the loss section of the config.
        presences: training-set presences ``P_s`` (one count per structure of the cache's set, in its
            order), as stored in the prepared cache's ``info.json``; required for ``"w"`` and ``"w'"``.
        structures: the names of the structures the presences count (``info["structures"]``); they
            name the structures in messages and must match the presences in number.

    Raises:
        DermogazeError: unknown balancing, or ``"w"``/``"w'"`` without (valid) presences.
    """

    structure_weights: Tensor

    def __init__(
        self, cfg: LossConfig, presences: Sequence[int] | None = None, structures: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        if cfg.balancing not in BALANCING:
            raise DermogazeError(
                f"unknown loss.balancing {cfg.balancing!r}: expected one of {', '.join(repr(k) for k in BALANCING)}"
            )
        self.cfg = cfg
        self.balancing = BALANCING[cfg.balancing]
        weights = np.ones(0)
        if self.balancing in ("w", "w'"):
            if presences is None:
                raise DermogazeError(
                    f"loss.balancing={cfg.balancing!r} needs the training presences of the structures "
                    "(the 'presences' of the prepared cache's info.json), but none were given"
                )
            names = [str(i) for i in range(len(presences))] if structures is None else list(structures)
            if len(presences) != len(names) or len(presences) < 2:
                raise DermogazeError(
                    f"presences must hold one count per structure ({', '.join(names)}), got {list(presences)}"
                )
            try:
                weights = presence_weights(presences, self.balancing, names)
            except ValueError as exc:
                raise DermogazeError(f"cannot use loss.balancing={cfg.balancing!r}: {exc}") from None
            logger.info(
                "structure weights (%s): %s",
                self.balancing,
                ", ".join(f"{n}={w:.3f}" for n, w in zip(names, weights, strict=True)),
            )
        self.register_buffer("structure_weights", torch.as_tensor(weights, dtype=torch.float32), persistent=False)

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"alpha={c.alpha}, beta={c.beta}, gamma={c.gamma}, mu={c.mu}, theta={c.focal_theta}, "
            f"balancing={self.balancing!r}, attention={c.attention}"
        )

    def _pair_weights(self, structures: Tensor, num_structures: int) -> Tensor:
        """Weight of each matched pair ``(N,)`` from its structure index ``(N,)``."""
        if self.balancing in ("w", "w'"):
            return self.structure_weights[structures]
        if self.balancing == "batch":
            counts = torch.bincount(structures, minlength=num_structures).float()  # (S,) occurrences
            return 1.0 / counts[structures]
        return torch.ones_like(structures, dtype=torch.float32)

    def forward(self, out: GazeOutput, batch: Mapping[str, Any], *, attention: float | None = None) -> dict[str, Any]:
        """Compute the loss of one batch.

        Args:
            out: model outputs; uses ``logits`` ``(B, 2)`` and, with a decoder, ``masks``
                ``(B, T, H, W)`` (probabilities) and ``structure_logits`` ``(B, T, S)``.
            batch: ``label`` ``(B,)`` (1 = melanoma, 0 = benign, negative or NaN = unknown); with a
                decoder also ``masks`` ``(B, S, H, W)`` (0/1 floats) and optionally ``present``
                ``(B, S)`` bools, ``S`` = the size of the data's structure set.
            attention: the λ in effect (:func:`attention_weight` during a warm-up); ``None`` =
                ``cfg.attention``. With ``cfg.attention = 0`` the term stays detached whatever this is.

        Returns:
            ``{"loss", "diag", "seg", "cls", "att"}`` scalar tensors (attached to the graph; detach
            them for logging; ``att`` = ``L_att`` before λ) and ``"matching"``: one
            ``(step_indices, structure_indices)`` pair of int64 arrays per sample (empty arrays for
            variants without a decoder).
        """
        logits = out.logits
        device = logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            diag = _labelled_focal_loss(logits.float(), batch["label"], self.cfg.focal_theta)
            if out.masks is None:
                zero = diag.new_zeros(())
                empty = np.zeros(0, dtype=np.int64)
                matching = [(empty, empty.copy()) for _ in range(logits.shape[0])]
                return {"loss": diag, "diag": diag, "seg": zero, "cls": zero, "att": zero, "matching": matching}

            if out.structure_logits is None:
                raise ValueError("GazeOutput has masks but no structure_logits")
            if "masks" not in batch:
                raise KeyError("GazeLoss: the model has a structure decoder but the batch holds no 'masks'")
            pred = out.masks.float()  # (B, T, H, W)
            gt = batch["masks"].to(device=device, dtype=torch.float32)  # (B, S, H, W)
            n_struct = out.structure_logits.shape[-1]
            if gt.shape[0] != pred.shape[0] or gt.shape[-2:] != pred.shape[-2:] or gt.shape[1] != n_struct:
                raise ValueError(
                    f"GazeLoss: predicted masks {tuple(pred.shape)} and ground-truth masks {tuple(gt.shape)} do not "
                    f"match (expected (B, T, H, W) and (B, {n_struct}, H, W): the model classifies {n_struct} "
                    "structures)"
                )
            if self.balancing in ("w", "w'") and len(self.structure_weights) != n_struct:
                raise ValueError(
                    f"GazeLoss: {len(self.structure_weights)} presence weights for a model of {n_struct} structures"
                )
            present = batch.get("present")
            if present is None:
                present = gt.flatten(2).amax(-1) > 0  # (B, S)

            cost = pairwise_soft_iou_loss(pred, gt, self.cfg.eps)  # (B, S, T), differentiable
            lam = self.cfg.attention if attention is None else attention
            outside = None  # 1 − Σ A_t·m_s of every (structure, step) pair (B, S, T), differentiable
            if out.attention is not None:
                grid = area_fraction(gt, tuple(out.attention.shape[-2:]))  # (B, S, h, w)
                outside = 1.0 - torch.einsum("bthw,bshw->bst", out.attention.float(), grid)
            classes = pairwise_cross_entropy(out.structure_logits).detach() if self.cfg.class_matching else None
            matching = match_batch(matching_cost(cost, outside, self.cfg, lam, classes), present)

            # Gather the matched pairs of the whole batch with index tensors.
            b_idx = np.concatenate([np.full(len(t), i, dtype=np.int64) for i, (t, _) in enumerate(matching)])
            t_idx = np.concatenate([t for t, _ in matching])
            s_idx = np.concatenate([s for _, s in matching])
            if b_idx.size == 0:
                seg = cost.sum() * 0.0  # zero, but attached so backward reaches every parameter
                cls = out.structure_logits.float().sum() * 0.0
                att = seg.new_zeros(())
            else:
                b = torch.from_numpy(b_idx).to(device)
                t = torch.from_numpy(t_idx).to(device)
                s = torch.from_numpy(s_idx).to(device)
                seg_pairs = cost[b, s, t]  # (N,)
                cls_pairs = F.cross_entropy(out.structure_logits[b, t].float(), s, reduction="none")  # (N,)
                w = self._pair_weights(s, n_struct)  # (N,)
                seg = _weighted_mean(seg_pairs, w)
                cls = _weighted_mean(cls_pairs, w)
                # L_att: the balanced mean of 1 − Σ A_t·m_s over the matched pairs
                att = seg.new_zeros(()) if outside is None else _weighted_mean(outside[b, s, t], w)

            c = self.cfg
            loss = c.alpha * diag + c.beta * (c.gamma * seg + c.mu * cls)
            if c.attention > 0:
                if out.attention is None:
                    raise ValueError("loss.attention > 0 needs the attention maps, but the GazeOutput has none")
                loss = loss + lam * att
            else:
                att = att.detach()
        return {"loss": loss, "diag": diag, "seg": seg, "cls": cls, "att": att, "matching": matching}
