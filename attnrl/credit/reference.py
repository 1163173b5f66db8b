"""The configuration reference of the ``credit_*`` fields, generated from :class:`CreditConfig` itself.

    python -m attnrl.credit.reference    # prints the Markdown table the README carries

The README's table is checked against :func:`reference_markdown` by a test, so it cannot drift from the dataclass:
the default and the meaning of each field come from the field (its default and its ``help`` metadata); only where
the default comes from is written here, in :data:`SOURCES`.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

from .config import CreditConfig

#: where each field's default comes from: the paper (docs/methods.md §1), attnrl's own choice, or an implementation
#: setting with no counterpart in the paper
SOURCES: dict[str, str] = {
    "credit_strategy": "paper (its best strategy)",
    "credit_layers": "paper",
    "credit_num_layers": "paper",
    "credit_head_fraction": "paper",
    "credit_head_profile": "ours (the paper allows either)",
    "credit_head_profile_path": "implementation",
    "credit_window": "paper",
    "credit_fai_lo": "paper",
    "credit_fai_hi": "paper",
    "credit_gamma_amp": "paper",
    "credit_top_q": "paper",
    "credit_coupled_k": "paper",
    "credit_coupled_alpha": "**ours** (the paper gives none)",
    "credit_sign_mode": "paper (v2)",
    "credit_backend": "implementation",
    "credit_stats_pass": "implementation",
    "credit_seed": "implementation",
}


def _default(f) -> str:
    value = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return f"`{value}`"


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(field, default, meaning, source) for every field of :class:`CreditConfig`, in declaration order."""
    return [(f"`{f.name}`", _default(f), f.metadata.get("help", "").replace("|", "\\|"), SOURCES[f.name])
            for f in fields(CreditConfig)]


def reference_markdown() -> str:
    """The README's configuration reference: one Markdown table row per ``credit_*`` field."""
    lines = ["| field | default | meaning | source of the default |", "|---|---|---|---|"]
    lines += [f"| {name} | {default} | {meaning} | {source} |" for name, default, meaning, source in reference_rows()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())
