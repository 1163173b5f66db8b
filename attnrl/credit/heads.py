"""Layer choice and the local/global head split (docs/methods.md §1.1)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from attnrl.kernels.dispatch import AttentionStats

# The only place these two defaults are written (CreditConfig reads them):
DEFAULT_NUM_LAYERS = 5  # paper (docs/methods.md §1.1): 5 middle layers
DEFAULT_HEAD_FRACTION = 0.3  # paper (docs/methods.md §1.1): 30% of (layer, head) pairs local, 30% global


def default_layers(num_layers: int, count: int = DEFAULT_NUM_LAYERS) -> list[int]:
    """``count`` layers evenly spaced in [floor(L/3), floor(2L/3)] (docs/methods.md §1.1), deduplicated, sorted."""
    lo, hi = num_layers // 3, (2 * num_layers) // 3
    if count == 1:
        return [(lo + hi) // 2]
    return sorted({round(lo + i * (hi - lo) / (count - 1)) for i in range(count)})


def head_distance_sums(stats: dict[int, AttentionStats], response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums (n_layers, H), count ()): sum over the batch's response tokens of sum_s A_{t,s}(t-s), and their number.

    stats: per layer, dist_sum of shape (B, H, T); response_mask: (B, T) bool over the same T.
    """
    m = response_mask.to(next(iter(stats.values())).dist_sum.dtype)
    return torch.stack([(s.dist_sum * m[:, None]).sum((0, 2)) for _, s in sorted(stats.items())]), m.sum()


def distributed_world_size() -> int:
    """Processes in the default torch.distributed group (1 when it is not initialised)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def head_mean_distances(
    stats: dict[int, AttentionStats], response_mask: torch.Tensor, reduce_across_ranks: bool = False
) -> torch.Tensor:
    """d^{l,h}: mean over all response tokens of the batch of sum_s A_{t,s}(t-s) (tokens). Returns (n_layers, H).

    stats: per layer, dist_sum of shape (B, H, T); response_mask: (B, T) bool over the same T. With
    ``reduce_across_ranks`` and an initialised torch.distributed group of more than one process, the sums and token
    counts are summed over the ranks first (one all_reduce, which every rank must enter), so every rank gets the
    distances of the whole data-parallel batch, as one process holding all of it would (docs/methods.md §1.1).
    """
    return head_distances_and_count(stats, response_mask, reduce_across_ranks)[0]


def head_distances_and_count(
    stats: dict[int, AttentionStats], response_mask: torch.Tensor, reduce_across_ranks: bool = False
) -> tuple[torch.Tensor, int]:
    """:func:`head_mean_distances` (n_layers, H) and the number of response tokens behind them (every rank's when
    reduced): 0 means the distances are empty placeholders, not a profile."""
    sums, count = head_distance_sums(stats, response_mask)
    if reduce_across_ranks and distributed_world_size() > 1:
        packed = torch.cat([sums.flatten(), count[None]])
        torch.distributed.all_reduce(packed, op=torch.distributed.ReduceOp.SUM)
        sums, count = packed[:-1].view_as(sums), packed[-1]
    return sums / count.clamp(min=1.0), int(count)


@dataclass
class HeadProfile:
    """Which (layer, head) pairs are local and global. ``local``/``global_``: (n_layers, H) bool."""

    layers: list[int]
    local: torch.Tensor
    global_: torch.Tensor
    distances: torch.Tensor  # (n_layers, H) mean attention distance (tokens)

    @classmethod
    def from_distances(cls, layers: list[int], distances: torch.Tensor,
                       fraction: float = DEFAULT_HEAD_FRACTION) -> HeadProfile:
        """Bottom ``fraction`` of heads by distance are local, top ``fraction`` global, pooled over layers."""
        flat = distances.flatten()
        n = max(1, math.floor(fraction * flat.numel() + 0.5))
        order = torch.argsort(flat, stable=True)
        local = torch.zeros_like(flat, dtype=torch.bool)
        glob = torch.zeros_like(flat, dtype=torch.bool)
        local[order[:n]] = True
        glob[order[-n:]] = True
        shape = distances.shape
        return cls(list(layers), local.view(shape), glob.view(shape), distances.detach().cpu().float())

    def save(self, path: str | Path) -> None:
        data = {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in asdict(self).items()}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> HeadProfile:
        d = json.loads(Path(path).read_text())
        return cls(d["layers"], torch.tensor(d["local"]), torch.tensor(d["global_"]), torch.tensor(d["distances"]))


def _mean_over_heads(per_layer: list[torch.Tensor], heads: torch.Tensor) -> torch.Tensor:
    """Mean over the selected (layer, head) pairs. per_layer: n_layers x (B, H, T); heads: (n_layers, H) bool."""
    stacked = torch.stack(per_layer, 1)  # (B, L, H, T)
    w = heads.to(stacked.device, stacked.dtype)[None, :, :, None]
    return (stacked * w).sum((1, 2)) / w.sum().clamp(min=1.0)


def token_waad(stats: dict[int, AttentionStats], profile: HeadProfile) -> torch.Tensor:
    """WAAD_t with Ā^loc = plain mean of A over local heads (linear, so the mean of per-head WAAD). (B, T)."""
    return _mean_over_heads([stats[layer].waad for layer in profile.layers], profile.local)


def token_fai(stats: dict[int, AttentionStats], profile: HeadProfile) -> torch.Tensor:
    """FAI_s = mean over T(s) of Ā^glob_{t,s}; NaN where T(s) is empty (such tokens are never anchors). (B, T)."""
    total = _mean_over_heads([stats[layer].fai_sum for layer in profile.layers], profile.global_)
    count = next(iter(stats.values())).fai_count.to(total.dtype)
    return torch.where(count > 0, total / count.clamp(min=1.0), torch.full_like(total, float("nan")))
