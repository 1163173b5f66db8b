"""Figures and pages people would rather see than read: reward curves, the attention rhythm of a response (curves,
an HTML page with the figures embedded) and the local/global head map. ``attnrl analyze`` and the run report draw
with these."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from attnrl.credit.assigner import CreditAssigner
from attnrl.credit.config import CreditConfig
from attnrl.credit.heads import HeadProfile
from attnrl.credit.strategies import CreditInputs, coupled_roles, preplan_mask


@dataclass
class RhythmAnalysis:
    """Attention rhythm of one response. All lists have one entry per response token."""

    tokens: list[str]
    waad: list[float]
    fai: list[float]  # NaN where undefined (end of the response)
    gamma: list[float]
    preplan: list[bool]  # TopQ of the WAAD jump (local-chunk boundaries)
    anchor: list[bool]  # TopQ of FAI
    introducer: list[bool]  # coupled: tokens that introduce a locally dominated anchor
    head_distances: list[list[float]]  # (n_layers, H) mean attention distance per head
    layers: list[int]


@torch.no_grad()
def analyze_response(model, tokenizer, prompt: list[dict], completion: str, config: CreditConfig) -> RhythmAnalysis:
    """WAAD/FAI curves and token roles of ``completion`` answering ``prompt`` under ``model`` (one forward)."""
    assigner = CreditAssigner(config, model, reduce_across_ranks=False)  # one rank may call this alone
    if not assigner.layers:
        raise ValueError(f"credit_strategy={config.credit_strategy!r} uses no attention; analyse with 'coupled'")
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    dev = next(model.parameters()).device
    p_ids = tokenizer(prompt_text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(dev)
    c_ids = tokenizer(completion, return_tensors="pt", add_special_tokens=False)["input_ids"].to(dev)
    if c_ids.shape[1] == 0:
        raise ValueError("the completion is empty: nothing to analyse")
    result = assigner.assign(model, p_ids, torch.ones_like(p_ids), c_ids, torch.ones_like(c_ids))
    inputs = CreditInputs(torch.ones_like(c_ids, dtype=torch.bool), waad=result.waad, fai=result.fai)
    preplan = preplan_mask(inputs, config.credit_params())
    roles = coupled_roles(inputs, config.credit_params())
    return RhythmAnalysis(
        tokens=[tokenizer.decode([t]) for t in c_ids[0].tolist()],
        waad=result.waad[0].tolist(),
        fai=result.fai[0].tolist(),
        gamma=result.gamma[0].tolist(),
        preplan=preplan[0].tolist(),
        anchor=roles["anchors"][0].tolist(),
        introducer=roles["introducers"][0].tolist(),
        head_distances=result.profile.distances.tolist(),
        layers=list(assigner.layers),
    )


ROLE_COLOURS = {"anchor": "#f4a261", "preplan": "#8ecae6", "introducer": "#b5e48c", "both": "#e76f51"}


def token_role(a: RhythmAnalysis, i: int) -> str | None:
    if a.anchor[i] and a.preplan[i]:
        return "both"
    if a.anchor[i]:
        return "anchor"
    if a.introducer[i]:
        return "introducer"
    if a.preplan[i]:
        return "preplan"
    return None


def rhythm_html(a: RhythmAnalysis, title: str = "attention rhythm") -> str:
    """A self-contained HTML page: the response with tokens coloured by role, gamma in the tooltip."""
    spans = []
    for i, tok in enumerate(a.tokens):
        role = token_role(a, i)
        style = f' style="background:{ROLE_COLOURS[role]}"' if role else ""
        tip = f"role={role or '-'} gamma={a.gamma[i]:.2f} WAAD={a.waad[i]:.2f} FAI={a.fai[i]:.4f}"
        spans.append(f'<span class="tok" data-role="{role or ""}" title="{html.escape(tip)}"{style}>'
                     f"{html.escape(tok).replace(chr(10), '&#8629;<br>')}</span>")
    legend = " ".join(f'<span class="tok" style="background:{c}">{n}</span>' for n, c in ROLE_COLOURS.items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
        "body{font-family:sans-serif;max-width:900px;margin:2em auto}"
        ".tok{font-family:monospace;white-space:pre-wrap;border-radius:3px;padding:1px 0}"
        "</style></head><body><h2>" + html.escape(title) + "</h2><p>Legend: " + legend + "</p><p>"
        + "".join(spans) + "</p></body></html>"
    )


def plot_rhythm(a: RhythmAnalysis, path: str | Path, title: str = "attention rhythm") -> None:
    """PNG: WAAD and FAI over response tokens with preplan/anchor tokens marked, plus the tokens coloured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(a.tokens)
    fig, axes = plt.subplots(3, 1, figsize=(max(8, n * 0.35), 8), gridspec_kw={"height_ratios": [2, 2, 1.2]})
    x = list(range(n))
    axes[0].plot(x, a.waad, color="#219ebc", marker=".")
    axes[0].scatter([i for i in x if a.preplan[i]], [a.waad[i] for i in x if a.preplan[i]], color="#023047",
                    zorder=3, label="preplan (top-q WAAD jump)")
    axes[0].set_ylabel("WAAD")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].plot(x, a.fai, color="#fb8500", marker=".")
    axes[1].scatter([i for i in x if a.anchor[i]], [a.fai[i] for i in x if a.anchor[i]], color="#9d0208", zorder=3,
                    label="anchor (top-q FAI)")
    axes[1].set_ylabel("FAI")
    axes[1].legend(loc="upper right", fontsize=8)
    ax = axes[2]
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, 1)
    ax.axis("off")
    for i, tok in enumerate(a.tokens):
        role = token_role(a, i)
        ax.text(i, 0.5, tok.replace("\n", "\\n") or " ", ha="center", va="center", rotation=90, fontsize=8,
                family="monospace", bbox={"facecolor": ROLE_COLOURS.get(role, "white"), "edgecolor": "none"})
    for axis in axes[:2]:
        axis.set_xlim(-0.5, n - 0.5)
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reward_curve(log_history: list[dict], path: str | Path, keys: tuple[str, ...] = ("reward",)) -> None:
    """PNG of logged reward(s) against the training step (from ``trainer.state.log_history``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        pts = [(e["step"], e[key]) for e in log_history if key in e]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_head_map(a, path: str | Path, fraction: float) -> None:
    """PNG heatmap of mean attention distance (n_layers, H), local heads outlined blue (L), global red (G)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    profile = HeadProfile.from_distances(a.layers, torch.tensor(a.head_distances), fraction)
    n_layers, n_heads = profile.distances.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * n_heads + 2.5), max(2.5, 0.45 * n_layers + 1.5)))
    image = ax.imshow(profile.distances.numpy(), cmap="viridis", aspect="auto")
    for i in range(n_layers):
        for j in range(n_heads):
            kind = "L" if profile.local[i, j] else "G" if profile.global_[i, j] else None
            if kind:
                colour = "#1d6fa5" if kind == "L" else "#d62828"
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=colour, linewidth=2.5))
                ax.text(j, i, kind, ha="center", va="center", color="white", fontsize=8, weight="bold")
    ax.set_yticks(range(n_layers), [f"layer {layer}" for layer in profile.layers])
    ax.set_xticks(range(n_heads))
    ax.set_xlabel("head")
    fig.colorbar(image, ax=ax, label="mean attention distance (tokens)")
    ax.legend(handles=[Patch(fill=False, edgecolor="#1d6fa5", label=f"local (bottom {fraction:.0%})"),
                       Patch(fill=False, edgecolor="#d62828", label=f"global (top {fraction:.0%})")],
              loc="upper center", bbox_to_anchor=(0.5, -0.25 if n_layers > 3 else -0.45), ncol=2, fontsize=8)
    ax.set_title("local / global heads")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def analysis_page(a, title: str, figures: Sequence[Path]) -> str:
    """:func:`rhythm_html` with the figures embedded as data URIs (one self-contained file)."""
    images = "".join(
        f'<p><img alt="{p.stem}" style="max-width:100%" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></p>' for p in figures
    )
    return rhythm_html(a, title=title).replace("</body>", images + "</body>")
