"""Training objectives for text-to-image person re-identification: SDM, ITC and ID losses.

Pure functions. Features come in unnormalised, as the encoders return them, and are L2-normalised
here, so the losses see cosine similarities whatever the feature scale. Every loss is computed in at
least float32 with autocast switched off, so `bf16-mixed` / `16-mixed` training (which runs the
`training_step` under autocast) does not compute similarities or log-probabilities in half precision.

Input checks look only at shapes, dtypes and Python numbers, never at tensor values, so they cost no
host-device synchronisation in the training loop.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

LOSS_NAMES: tuple[str, ...] = ("sdm", "itc", "id")
"""Valid loss names, in the order a system should report them."""

SDM_EPSILON = 1e-8
"""Added to the target distribution inside the log, as in IRRA: `log(Q + eps)`. Q is zero for pairs of
different identities; without it their log would be -inf. It makes every non-matching pair cost
`-log(eps) ~= 18.42` per unit of predicted probability. Because `Q + eps` sums to `1 + B * eps`, each
direction can dip below zero by at most `log(1 + B * eps)` (about `B * 1e-8`)."""


def validate_loss_names(names: str | Iterable[str], argument: str = "losses") -> tuple[str, ...]:
    """Return `names` as a tuple after checking each is in `LOSS_NAMES`, none repeats and there is one.

    A single string counts as one name. `argument` names the setting in the error message, so a system
    can call this at construction (e.g. `validate_loss_names(stage1_losses, "stage1_losses")`).
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    choices = ", ".join(repr(name) for name in LOSS_NAMES)
    if not names:
        raise ValueError(f"{argument} is empty; give one or more of {choices}")
    unknown = [name for name in names if name not in LOSS_NAMES]
    if unknown:
        raise ValueError(f"{argument} has unknown loss name(s) {unknown}; valid choices: {choices}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{argument} lists {repeated} more than once; each loss is used at most once")
    return names


def sdm_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    pids: torch.Tensor,
    temperature: float = 0.02,
    *,
    rows: slice | None = None,
    epsilon: float = SDM_EPSILON,
) -> torch.Tensor:
    """Similarity distribution matching (IRRA, Jiang & Ye, CVPR 2023), both directions summed.

    With `S` the `(B, B)` cosine similarities (rows: images, columns: texts), `M[i, j] = pids[i] ==
    pids[j]` and the row-normalised target `Q = M / M.sum(1)`, image-to-text is
    `mean_i sum_j P[i, j] * (log P[i, j] - log(Q[i, j] + epsilon))` with `P = softmax(S / temperature)`
    over texts; text-to-image is the same on `S.T` (M is symmetric, so the target is Q again). Returns
    their sum. Several samples of one identity in a batch share the target mass equally.

    Args:
        image_features: `(B, D)` image embeddings, not normalised.
        text_features: `(B, D)` text embeddings of the paired captions, not normalised.
        pids: `(B,)` integer identity labels; equal labels mark matching pairs across the batch.
        temperature: softmax temperature (IRRA: 0.02, i.e. logit scale 50).
        rows: the pairs whose rows (an image against every text, a text against every image) this
            call averages; None: all. Under DDP each process passes the gathered global batch and
            its own rows: the mean over processes of their losses is then the global batch's loss,
            and DDP's gradient averaging its gradient.
        epsilon: see `SDM_EPSILON`.

    Returns:
        A float32 (float64 for float64 inputs) scalar.
    """
    batch_size = _check_features(image_features, text_features, "image_features", "text_features")
    _check_pids(pids, batch_size)
    _check_positive(temperature, "temperature")
    _check_positive(epsilon, "epsilon")
    rows = _check_rows(rows, batch_size)
    with _autocast_disabled(image_features.device):
        image, text = _normalized(image_features), _normalized(text_features)
        pids = pids.to(image.device)
        same_identity = (pids[rows, None] == pids[None, :]).to(image.dtype)
        log_target = torch.log(same_identity / same_identity.sum(dim=1, keepdim=True) + epsilon)
        image_to_text = image[rows] @ text.t() / temperature
        text_to_image = text[rows] @ image.t() / temperature
        return _mean_kl_per_row(image_to_text, log_target) + _mean_kl_per_row(text_to_image, log_target)


def itc_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    temperature: float = 0.02,
    *,
    rows: slice | None = None,
) -> torch.Tensor:
    """Image-text contrastive loss (symmetric InfoNCE, as in CLIP): the mean of the two directions.

    The i-th image and i-th text are the only positive pair of each row and column, whatever their
    identities: `(CE(S / temperature, arange(B)) + CE(S.T / temperature, arange(B))) / 2`, each
    cross-entropy averaged over the batch. Features are `(B, D)`, not normalised; `rows` as in
    `sdm_loss` (the rows averaged; every column is a candidate). Returns a float32 (float64 for
    float64 inputs) scalar.
    """
    batch_size = _check_features(image_features, text_features, "image_features", "text_features")
    _check_positive(temperature, "temperature")
    rows = _check_rows(rows, batch_size)
    with _autocast_disabled(image_features.device):
        image, text = _normalized(image_features), _normalized(text_features)
        targets = torch.arange(batch_size, device=image.device)[rows]
        image_to_text = image[rows] @ text.t() / temperature
        text_to_image = text[rows] @ image.t() / temperature
        return (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets)) / 2


def id_loss(image_logits: torch.Tensor, text_logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """Identity loss: the mean of the image and the text cross-entropies over identity classes.

    `image_logits` and `text_logits` are `(B, num_classes)` outputs of one classifier shared by both
    modalities; `pids` holds `(B,)` class indices in `[0, num_classes)` (out-of-range labels are
    reported by `cross_entropy` itself, not checked here, as that would need a device sync). Returns a
    float32 (float64 for float64 inputs) scalar.
    """
    batch_size = _check_features(image_logits, text_logits, "image_logits", "text_logits")
    _check_pids(pids, batch_size)
    with _autocast_disabled(image_logits.device):
        dtype = _loss_dtype(image_logits)
        pids = pids.to(image_logits.device)
        image_ce = F.cross_entropy(image_logits.to(dtype), pids)
        text_ce = F.cross_entropy(text_logits.to(dtype), pids)
        return (image_ce + text_ce) / 2


def _mean_kl_per_row(logits: torch.Tensor, log_target: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(softmax(logits_i) || target_i), the target given as `log(Q + eps)`."""
    log_probs = F.log_softmax(logits, dim=1)
    return (log_probs.exp() * (log_probs - log_target)).sum(dim=1).mean()


def _normalized(features: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows in at least float32."""
    return F.normalize(features.to(_loss_dtype(features)), dim=1)


def _check_rows(rows: slice | None, batch_size: int) -> slice:
    if rows is None:
        return slice(0, batch_size)
    if not isinstance(rows, slice) or rows.step not in (None, 1):
        raise TypeError(f"rows must be a slice of consecutive rows or None, got {rows!r}")
    start, stop, _ = rows.indices(batch_size)
    if stop <= start:
        raise ValueError(f"rows {rows!r} select no row of a batch of {batch_size}")
    return slice(start, stop)


def _loss_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 kept (useful for gradient checks)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """Switch autocast off for `device`, so matmuls run in the dtype we cast to, not in bf16/fp16."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _check_features(image: torch.Tensor, text: torch.Tensor, image_name: str, text_name: str) -> int:
    """Both `(B, D)` floating-point tensors of one shape, with B >= 1; returns B."""
    for name, tensor in ((image_name, image), (text_name, text)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.ndim != 2:
            raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {tensor.dtype}")
    if image.shape[0] != text.shape[0]:
        raise ValueError(
            f"batch sizes differ: {image_name} has {image.shape[0]} rows, {text_name} has {text.shape[0]}"
        )
    if image.shape[1] != text.shape[1]:
        raise ValueError(
            f"{image_name} has {image.shape[1]} columns but {text_name} has {text.shape[1]}; they must match"
        )
    if image.shape[0] == 0:
        raise ValueError(f"{image_name} and {text_name} are empty (batch size 0)")
    return image.shape[0]


def _check_pids(pids: torch.Tensor, batch_size: int) -> None:
    if not isinstance(pids, torch.Tensor):
        raise TypeError(f"pids must be a torch.Tensor, got {type(pids).__name__}")
    if pids.shape != (batch_size,):
        raise ValueError(f"pids must have shape ({batch_size},) to match the batch, got {tuple(pids.shape)}")
    if pids.is_floating_point() or pids.is_complex() or pids.dtype == torch.bool:
        raise ValueError(f"pids must be an integer tensor of identity labels, got {pids.dtype}")


def _check_positive(value: float, name: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
