"""One statistics forward over a (vision-language) batch, in micro-batches, with span masses on V and S.

:func:`collect_statistics` is the single capture pass AVAR shares with credit assignment: it records
:class:`attnrl.kernels.AttentionStats` (WAAD/FAI/distances and ``span_mass`` on the key masks) for the union of
the layers both need, stopping the forward after the deepest one. Micro-batches slice the image tensors per row
(Qwen-VL ``pixel_values`` are patch rows, ``image_grid_thw`` one row per image), which a plain ``x[rows]`` would not.
"""

from __future__ import annotations

import torch

from attnrl.attention.capture import capture_statistics
from attnrl.kernels import AttentionStats, StatsSpec

__all__ = ["collect_statistics", "images_per_row", "slice_batch_kwargs"]

_PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")


def images_per_row(input_ids: torch.Tensor, image_grid_thw: torch.Tensor, image_token_id: int, merge_size: int):
    """Number of images of each row (list of B ints), matching image-token counts to ``image_grid_thw`` in order."""
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
    return counts


def slice_batch_kwargs(forward_kwargs: dict, rows: slice, B: int, num_images: list[int] | None) -> dict:
    """Forward kwargs of rows ``rows``: per-token tensors by row, Qwen-VL image tensors by the rows' images."""
    out = {}
    for key, value in forward_kwargs.items():
        if key in _PER_TOKEN_KEYS and torch.is_tensor(value):
            out[key] = value[rows]
        elif key in ("pixel_values", "image_grid_thw"):
            continue
        else:
            out[key] = value
    grid = forward_kwargs.get("image_grid_thw")
    if grid is not None:
        first_image = torch.tensor([0] + num_images).cumsum(0)
        a, b = int(first_image[rows.start]), int(first_image[min(rows.stop, B)])
        patch_edges = torch.cat([grid.new_zeros(1), grid.prod(-1).cumsum(0)])
        out["image_grid_thw"] = grid[a:b]
        out["pixel_values"] = forward_kwargs["pixel_values"][int(patch_edges[a]) : int(patch_edges[b])]
    return out


@torch.no_grad()
def collect_statistics(
    model,
    layers,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    resp_start: torch.Tensor,
    spec: StatsSpec = StatsSpec(),
    *,
    key_masks: torch.Tensor | None = None,
    backend: str = "auto",
    batch_size: int | None = None,
    **forward_kwargs,
) -> dict[int, AttentionStats]:
    """Statistics of ``layers`` for a padded batch (B, T); resp_start (B,); key_masks (B, M, T) or None."""
    B = input_ids.shape[0]
    batch_size = batch_size or B
    num_images = None
    if forward_kwargs.get("image_grid_thw") is not None:
        cfg = model.config
        num_images = images_per_row(
            input_ids, forward_kwargs["image_grid_thw"], cfg.image_token_id, cfg.vision_config.spatial_merge_size
        )
    parts = []
    for start in range(0, B, batch_size):
        rows = slice(start, start + batch_size)
        with capture_statistics(
            model, layers, attention_mask[rows], resp_start[rows], spec, backend=backend,
            key_masks=None if key_masks is None else key_masks[rows], stop_after_last_layer=True,
        ) as cap:
            model(input_ids=input_ids[rows], attention_mask=attention_mask[rows], use_cache=False,
                  **slice_batch_kwargs(forward_kwargs, rows, B, num_images))
        parts.append(cap.stats)
    return {layer: _concat([p[layer] for p in parts]) for layer in parts[0]}


def _concat(parts: list[AttentionStats]) -> AttentionStats:
    if len(parts) == 1:
        return parts[0]
    fields = ("lse", "dist_sum", "waad", "fai_sum", "fai_count", "span_mass")
    return AttentionStats(**{
        f: None if getattr(parts[0], f) is None else torch.cat([getattr(p, f) for p in parts]) for f in fields
    })
