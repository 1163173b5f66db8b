"""The one no-grad statistics pass: attention statistics of chosen layers over a padded batch, in micro-batches.

:func:`collect_statistics` is what credit assignment (:class:`attnrl.credit.assigner.CreditAssigner`), AVAR's
scoring pass and its evaluation all call. Each micro-batch runs one forward under :func:`capture_statistics`,
stopped after the deepest selected layer, and the parts are joined with :meth:`AttentionStats.cat`.

Forward arguments are split with the rows they belong to:

- tensors laid out per token, shape (B, T, ...) like ``input_ids`` (``mm_token_type_ids``, ``token_type_ids``, 2-D
  ``position_ids``): by row;
- Qwen2-VL style images (``pixel_values`` of shape (patches, D) with ``image_grid_thw`` (images, 3)): by the images
  of the rows, the number of images of each row read from ``num_images`` or counted from the image tokens;
- anything else that is a tensor (images of other layouts: per image, per tile or per row depending on the model,
  ``image_sizes``, ``pixel_attention_mask``, videos, 3-D multimodal ``position_ids``): the layout is
  model-specific, so the whole batch then runs as one forward (``batch_size`` is ignored);
- non-tensors: passed to every forward unchanged.

The statistics of a row do not depend on the other rows of its micro-batch, so the result is the same for any
``batch_size`` (up to float rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from attnrl.kernels.dispatch import AttentionStats, StatsSpec

from .capture import CaptureError, capture_statistics

__all__ = ["ForwardCaptures", "capture_each_forward", "collect_statistics", "images_per_row", "micro_batches"]

_GRID_IMAGE_KEYS = ("pixel_values", "image_grid_thw")


def images_per_row(input_ids: torch.Tensor, image_grid_thw: torch.Tensor, image_token_id: int,
                   merge_size: int) -> list[int]:
    """Number of images of each row (B ints), matching each row's image-token count to ``image_grid_thw`` in order.

    image_grid_thw: (images, 3) patch grid (t, h, w) of each image; an image holds t*h*w / merge_size**2 tokens.
    """
    tokens_per_image = (image_grid_thw.prod(-1) // merge_size**2).tolist()
    counts, i = [], 0
    for n in (input_ids == image_token_id).sum(1).tolist():
        k = 0
        while n > 0:
            if i + k >= len(tokens_per_image):
                raise ValueError("image_grid_thw holds fewer images than the batch has image tokens")
            n -= tokens_per_image[i + k]
            k += 1
        if n != 0:
            raise ValueError("a row's image tokens do not add up to whole images of image_grid_thw")
        counts.append(k)
        i += k
    if i != len(tokens_per_image):
        raise ValueError(f"image_grid_thw holds {len(tokens_per_image)} images but the rows' image tokens make {i}")
    return counts


def _is_per_token(value, B: int, T: int) -> bool:
    return torch.is_tensor(value) and value.dim() >= 2 and tuple(value.shape[:2]) == (B, T)


def _rows_per_image_split(model, input_ids: torch.Tensor, forward_kwargs: dict,
                          num_images: Sequence[int] | None) -> list[int] | None:
    """Images per row when the batch's images are Qwen2-VL style (pixel_values by patch + image_grid_thw), else
    None."""
    if not all(torch.is_tensor(forward_kwargs.get(k)) for k in _GRID_IMAGE_KEYS):
        return None
    if num_images is not None:
        counts = [int(n) for n in num_images]
        if len(counts) != input_ids.shape[0]:
            raise ValueError(f"num_images has {len(counts)} entries for a batch of {input_ids.shape[0]} rows")
        return counts
    config = getattr(model, "config", None)
    token_id = getattr(config, "image_token_id", None)
    merge = getattr(getattr(config, "vision_config", None), "spatial_merge_size", None)
    if token_id is None or merge is None:
        return None  # cannot tell which images belong to which row: one forward
    return images_per_row(input_ids, forward_kwargs["image_grid_thw"], token_id, merge)


def micro_batches(model, input_ids: torch.Tensor, forward_kwargs: dict, batch_size: int | None,
                  num_images: Sequence[int] | None = None) -> list[tuple[slice, dict]]:
    """(rows, forward kwargs of those rows) for each micro-batch of ``batch_size`` rows (see the module docstring).

    One micro-batch of every row when ``batch_size`` is None or a tensor argument has a layout that cannot be
    split by row.
    """
    B, T = input_ids.shape[:2]
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (or None for the whole batch)")
    whole = [(slice(0, B), dict(forward_kwargs))]
    if batch_size is None or batch_size >= B:
        return whole
    image_counts = _rows_per_image_split(model, input_ids, forward_kwargs, num_images)
    grid_keys = _GRID_IMAGE_KEYS if image_counts is not None else ()
    if any(torch.is_tensor(v) and k not in grid_keys and not _is_per_token(v, B, T) for k, v in forward_kwargs.items()):
        return whole
    if image_counts is not None:
        grid = forward_kwargs["image_grid_thw"]
        first_image = [0]
        for n in image_counts:
            first_image.append(first_image[-1] + n)
        first_patch = torch.cat([grid.new_zeros(1), grid.prod(-1).cumsum(0)]).tolist()
    parts = []
    for start in range(0, B, batch_size):
        rows = slice(start, min(start + batch_size, B))
        kwargs = {k: (v[rows] if _is_per_token(v, B, T) else v) for k, v in forward_kwargs.items()
                  if k not in grid_keys}
        if image_counts is not None:
            a, b = first_image[rows.start], first_image[rows.stop]
            kwargs["image_grid_thw"] = forward_kwargs["image_grid_thw"][a:b]
            kwargs["pixel_values"] = forward_kwargs["pixel_values"][int(first_patch[a]) : int(first_patch[b])]
        parts.append((rows, kwargs))
    return parts


@torch.no_grad()
def collect_statistics(
    model,
    layers: Sequence[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    resp_start: int | torch.Tensor,
    spec: StatsSpec = StatsSpec(),
    *,
    batch_size: int | None = None,
    backend: str = "auto",
    key_masks: torch.Tensor | None = None,
    num_images: Sequence[int] | None = None,
    **forward_kwargs,
) -> dict[int, AttentionStats]:
    """Statistics of ``layers`` over a padded batch: {layer: AttentionStats of shape (B, H, T)}.

    input_ids, attention_mask: (B, T); resp_start: first response index, one int for every row or (B,);
    key_masks: (B, M, T) bool key sets whose attention mass is recorded (``span_mass``), or None;
    batch_size: rows per forward (None: all); num_images: images of each row (Qwen2-VL style inputs; counted from
    the image tokens when None); forward_kwargs: further model inputs (see the module docstring for how they are
    split). Each forward stops after the deepest layer of ``layers``.
    """
    B = input_ids.shape[0]
    if not torch.is_tensor(resp_start):
        resp_start = torch.full((B,), int(resp_start), device=input_ids.device)
    if resp_start.shape != (B,):
        raise ValueError(f"resp_start must be an int or a ({B},) tensor, got shape {tuple(resp_start.shape)}")
    parts = []
    for rows, kwargs in micro_batches(model, input_ids, forward_kwargs, batch_size, num_images):
        with capture_statistics(
            model, layers, attention_mask[rows], resp_start[rows], spec, backend=backend,
            key_masks=None if key_masks is None else key_masks[rows], stop_after_last_layer=True,
        ) as cap:
            model(input_ids=input_ids[rows], attention_mask=attention_mask[rows], use_cache=False, **kwargs)
        parts.append(cap.stats)
    return {layer: AttentionStats.cat([p[layer] for p in parts]) for layer in sorted(parts[0])}


@dataclass
class ForwardCaptures:
    """Statistics recorded by :func:`capture_each_forward`: one {layer: AttentionStats (b_i, H, T)} per forward,
    in call order, and the wall time spent computing them (inside the forwards)."""

    parts: list[dict[int, AttentionStats]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(next(iter(p.values())).waad.shape[0] for p in self.parts)

    def stats(self) -> dict[int, AttentionStats]:
        """The forwards' statistics joined along B ({layer: (sum b_i, H, T)}), as one forward over all rows would
        give them; the forwards must have covered consecutive row blocks of one padded batch, in order."""
        if not self.parts:
            raise CaptureError("no forward ran inside capture_each_forward")
        return {layer: AttentionStats.cat([p[layer] for p in self.parts]) for layer in sorted(self.parts[0])}


@contextlib.contextmanager
def capture_each_forward(
    model, layers: Sequence[int], resp_start: int, spec: StatsSpec = StatsSpec(), *, backend: str = "auto"
) -> Iterator[ForwardCaptures]:
    """Record statistics of ``layers`` during every forward of ``model`` that someone else runs inside the block.

    For a forward the caller does not control but needs anyway (TRL's no-grad old log-prob pass, which splits
    the batch into micro-batches of its own ``batch_size``): a forward pre-hook opens one
    :func:`capture_statistics` context over that call's ``attention_mask`` (b_i, T) (a keyword argument, as
    transformers callers pass it) with responses from ``resp_start`` in every row, and a forward hook closes it.
    Each forward runs to its end (its outputs are the caller's, unchanged). Join the parts with
    :meth:`ForwardCaptures.stats`.
    """
    captures = ForwardCaptures()
    open_contexts: list = []  # the capture context of the forward now running (at most one)

    def before(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if not torch.is_tensor(mask) or mask.dim() != 2:
            raise CaptureError("capture_each_forward needs each forward's (B, T) attention_mask as a keyword argument")
        resp = torch.full((mask.shape[0],), int(resp_start), device=mask.device)
        ctx = capture_statistics(model, layers, mask, resp, spec, backend=backend)
        open_contexts.append((ctx, ctx.__enter__()))

    def after(module, args, output):
        ctx, cap = open_contexts.pop()
        ctx.__exit__(None, None, None)  # CaptureError here if a layer was not recorded
        captures.parts.append(cap.stats)
        captures.seconds += cap.seconds

    handles = [model.register_forward_pre_hook(before, with_kwargs=True), model.register_forward_hook(after)]
    try:
        yield captures
    except BaseException as e:
        while open_contexts:  # a forward failed: leave no capture active
            open_contexts.pop()[0].__exit__(type(e), e, e.__traceback__)
        raise
    finally:
        for handle in handles:
            handle.remove()
