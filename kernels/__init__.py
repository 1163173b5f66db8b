"""Attention-statistics kernels: a chunked PyTorch reference and streaming Triton kernels behind one dispatcher.

``attention_statistics`` is the only entry point the rest of attnrl uses; it picks Triton on CUDA tensors when
Triton is installed and the chunked PyTorch path everywhere else (docs/methods.md §1.2, §2).

This folder installs as ``attnrl.kernels`` (pyproject.toml's package-dir). When Python runs from the root of a
checkout (``python -m pytest``, ``python -c ...``), the root is first on ``sys.path`` and this folder would also
answer to the top-level name ``kernels`` — the name of the Hugging Face Hub's kernel package, which transformers
(5.25 and later require it) imports at start-up. Imported under that name, this file hands the name over to the
installed Hub package instead of shadowing it (``_hand_over_to_hub_kernels``).
"""

if __name__ == "kernels":

    def _hand_over_to_hub_kernels() -> None:
        """Load the installed Hub ``kernels`` package (skipping this checkout) and bind it to ``sys.modules['kernels']``."""
        import os
        import sys
        from importlib import machinery, util

        checkout_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        search_path = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != checkout_root]
        spec = machinery.PathFinder.find_spec("kernels", search_path)
        if spec is None or spec.loader is None:
            raise ImportError(
                "`import kernels` found attnrl's kernels/ folder of this checkout, not the Hugging Face `kernels` "
                "package (transformers needs it): install it with `pip install kernels`, and import attnrl's "
                "kernels as `attnrl.kernels`."
            )
        module = util.module_from_spec(spec)
        sys.modules["kernels"] = module  # the import statement returns whatever sys.modules holds at the end
        spec.loader.exec_module(module)

    _hand_over_to_hub_kernels()
else:
    from .dispatch import attention_statistics, available_backends
    from .reference import AttentionStats, StatsSpec, attention_statistics_torch, fai_counts

    __all__ = [
        "AttentionStats",
        "StatsSpec",
        "attention_statistics",
        "attention_statistics_torch",
        "available_backends",
        "fai_counts",
    ]
