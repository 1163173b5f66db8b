"""Cost of the attention statistics (METHODS.md §1.2) against the attention forward itself, on one GPU.

    python benchmarks/bench_attention_stats.py                 # kernels at T = 2K..32K + model forward
    python benchmarks/bench_attention_stats.py --skip-model-forward   # or --model-forward: that section only
    python benchmarks/bench_attention_stats.py --cpu-check     # tiny sizes on CPU under TRITON_INTERPRET=1
    python benchmarks/bench_attention_stats.py --profile       # torch.profiler tables of the model forward

Section 1 (one layer, B=1, H=32, Hkv=8, D=128, bf16, full-length sequences, response = last 3/4): SDPA forward;
the Triton statistics (full pass; band pass with its own LSE; band pass given an LSE); the flash-attention
op that also returns the LSE (and whether its LSE can feed the band pass); the chunked PyTorch path; eager
softmax materialisation where it fits. Times are medians in ms (CUDA events), extra memory is the peak
allocation above the inputs (outputs included).
Section 2 (--model-forward, on by default): a random ~0.5B LlamaForCausalLM on 4K tokens, plain SDPA forward vs
the same forward with statistics captured on 5 layers through ``attnrl.attention.capture``.
Results go to benchmarks/results/attention_stats_<device>.{json,md}. ``--cpu-check`` compares the kernels
with the reference on small shapes and runs both sections at toy sizes (results to a temporary folder);
it exits non-zero on any mismatch.
Needs only torch, triton, transformers and attnrl.
"""
# ruff: noqa: E402  (TRITON_INTERPRET must be set before the first triton import)

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if "--cpu-check" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before the kernels are decorated

import torch
import torch.nn.functional as F
import triton
from attnrl.kernels.reference import StatsSpec, attention_statistics_torch
from attnrl.kernels.triton_stats import attention_statistics_triton

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CREDIT_SPEC = StatsSpec(window=10, fai_lo=10, fai_hi=100)  # METHODS.md §1.2 credit-assignment setting
ANALYSIS_SPEC = StatsSpec(window=10, fai_lo=1, fai_hi=None)  # FAI horizon to the end of the sequence


@dataclass(frozen=True)
class LayerShape:
    """One attention layer: B, H query heads, Hkv key/value heads, head dim D, input dtype."""

    batch: int = 1
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype: str = "bfloat16"


@dataclass(frozen=True)
class ModelShape:
    """A random LlamaForCausalLM and the forward measured on it."""

    hidden: int = 1024
    layers: int = 24
    heads: int = 16
    kv_heads: int = 8
    intermediate: int = 4096
    vocab: int = 49152
    tokens: int = 4096
    prompt_tokens: int = 1024
    batch: int = 1  # 1 leaves the forward bound by kernel-launch (host) time on an H100; 4 makes it device-bound


# ------------------------------------------------------------------------------------------ measuring tools
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, min_total_s: float = 0.3, max_reps: int = 30) -> float:
    """Median wall time of ``fn()`` in ms after one warm-up call (which also compiles Triton kernels)."""
    fn()
    synchronize(device)
    times: list[float] = []
    while len(times) < 3 or (sum(times) < 1e3 * min_total_s and len(times) < max_reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def peak_extra_mib(fn, device: torch.device) -> float | None:
    """Peak CUDA memory allocated by one ``fn()`` call above what was allocated before it (MiB); None on CPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return peak / 2**20


def measure(fn, device: torch.device, baseline_ms: float | None = None) -> dict:
    """{"ms", "x_baseline", "extra_mib"} for ``fn`` (x_baseline: time / baseline_ms, the SDPA forward or the
    plain model forward), or {"status": reason} when it runs out of memory."""
    try:
        extra = peak_extra_mib(fn, device)
        ms = median_ms(fn, device)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"status": "out of memory"}
    return {"ms": ms, "x_baseline": None if baseline_ms is None else ms / baseline_ms, "extra_mib": extra}


def max_abs_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    return float((a.float() - b.float()).abs().max()) if a is not None and a.numel() else 0.0


# ------------------------------------------------------------------------------------------ section 1
def make_layer(T: int, shape: LayerShape, device: torch.device, seed: int = 0):
    """q (B, H, T, D), k and v (B, Hkv, T, D), full-length spans with the response starting at T // 4."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = getattr(torch, shape.dtype)
    B, H, Hkv, D = shape.batch, shape.heads, shape.kv_heads, shape.head_dim
    q, k, v = (torch.randn(B, n, T, D, generator=gen, device=device, dtype=dtype) for n in (H, Hkv, Hkv))
    spans = (
        torch.zeros(B, dtype=torch.long, device=device),
        torch.full((B,), T, device=device),
        torch.full((B,), T // 4, device=device),
    )
    return q, k, v, spans


def eager_statistics(q, k, seq_start, seq_end, resp_start, spec: StatsSpec) -> tuple[torch.Tensor, ...]:
    """The naive way: materialise the (B, H, T, T) softmax (fp32), then reduce it. Full-length rows only."""
    B, H, T, D = q.shape
    k_rep = k.repeat_interleave(H // k.shape[1], dim=1)
    scores = torch.matmul(q, k_rep.transpose(-1, -2)).float().mul_(D**-0.5)
    idx = torch.arange(T, device=q.device)
    delta = (idx[:, None] - idx[None, :]).float()  # t - s
    scores.masked_fill_(delta < 0, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.softmax(scores, -1)
    del scores
    dist_sum = (probs * delta.clamp(min=0)).sum(-1)
    waad = (probs * delta.clamp(0, spec.window)).sum(-1)
    horizon = (delta >= spec.fai_lo) & (idx[:, None] >= resp_start[0])
    if spec.fai_hi is not None:
        horizon &= delta <= spec.fai_hi
    fai_sum = (probs * horizon).sum(-2)
    return lse, dist_sum, waad, fai_sum


def eager_fits(T: int, shape: LayerShape, device: torch.device) -> bool:
    """Eager needs about three fp32 (B, H, T, T) tensors at once."""
    if device.type != "cuda":
        return True
    need = 3 * 4 * shape.batch * shape.heads * T * T
    return need < 0.9 * torch.cuda.mem_get_info(device)[0]


def flash_with_lse(q, k_rep, v_rep) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused attention op that also returns the row LSE (B, H, T), natural log; kv already expanded."""
    if q.is_cuda:
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k_rep, v_rep, 0.0, True)
    else:
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k_rep, v_rep, 0.0, True)
    return out[0], out[1]


def bench_layer(T: int, shape: LayerShape, device: torch.device) -> dict:
    """Every method of section 1 at sequence length T."""
    q, k, v, (ss, se, rs) = make_layer(T, shape, device)
    row: dict = {"T": T}
    sdpa = measure(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), device)
    row["sdpa"] = sdpa
    sdpa_ms = sdpa["ms"]

    def stats(spec=CREDIT_SPEC, **kw):
        return lambda: attention_statistics_triton(q, k, ss, se, rs, spec, **kw)

    row["triton_full"] = measure(stats(), device, sdpa_ms)
    row["triton_full_fai_to_end"] = measure(stats(ANALYSIS_SPEC), device, sdpa_ms)
    row["triton_band_own_lse"] = measure(stats(band=True), device, sdpa_ms)
    full = stats()()
    row["triton_band_given_lse"] = measure(stats(band=True, lse=full.lse), device, sdpa_ms)
    row["flash_lse"] = flash_lse_check(q, k, v, (ss, se, rs), full, device, sdpa_ms)
    row["torch_chunked"] = measure(lambda: attention_statistics_torch(q, k, ss, se, rs, CREDIT_SPEC), device, sdpa_ms)
    if eager_fits(T, shape, device):
        row["eager"] = measure(lambda: eager_statistics(q, k, ss, se, rs, CREDIT_SPEC), device, sdpa_ms)
    else:
        row["eager"] = {"status": "does not fit"}
    return row


def flash_lse_check(q, k, v, spans, full, device: torch.device, sdpa_ms: float) -> dict:
    """Time the flash op that returns the LSE and check that its LSE drives the band pass correctly."""
    group = q.shape[1] // k.shape[1]
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    try:
        result = measure(lambda: flash_with_lse(q, k_rep, v_rep), device, sdpa_ms)
        lse = flash_with_lse(q, k_rep, v_rep)[1]
    except RuntimeError as e:  # no flash kernel for this device / dtype / torch build
        return {"status": f"unavailable: {str(e).splitlines()[0]}"}
    band = attention_statistics_triton(q, k, *spans, CREDIT_SPEC, band=True, lse=lse)
    result["lse_max_abs_diff"] = max_abs_diff(lse, full.lse)
    result["band_waad_max_abs_diff"] = max_abs_diff(band.waad, full.waad)
    result["band_fai_max_abs_diff"] = max_abs_diff(band.fai_sum, full.fai_sum)
    return result


# ------------------------------------------------------------------------------------------ section 2
def build_model(shape: ModelShape, device: torch.device, dtype: torch.dtype):
    """Random LlamaForCausalLM with SDPA attention, in eval mode on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        vocab_size=shape.vocab,
        max_position_embeddings=max(shape.tokens, 2048),
        tie_word_embeddings=False,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.set_attn_implementation("sdpa")
    return model


def credit_layers(n_layers: int, count: int = 5) -> list[int]:
    """``count`` layers evenly spaced in [floor(L/3), floor(2L/3)] (METHODS.md §1.1)."""
    lo, hi = n_layers // 3, 2 * n_layers // 3
    return sorted({round(lo + i * (hi - lo) / (count - 1)) for i in range(count)})


def model_forward_case(shape: ModelShape, device: torch.device, dtype: torch.dtype):
    """(model, layers, forward, forward_with_stats) of section 2: ``forward()`` is the plain forward,
    ``forward_with_stats(backend)()`` the same forward with statistics captured on ``layers``, returning them."""
    from attnrl.attention.capture import capture_statistics

    model = build_model(shape, device, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.tokens), generator=gen, device=device)
    mask = torch.ones_like(ids)
    resp_start = torch.full((shape.batch,), shape.prompt_tokens, device=device)
    layers = credit_layers(shape.layers)

    def forward():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def forward_with_stats(backend: str):
        def run():
            with capture_statistics(
                model, layers=layers, attention_mask=mask, resp_start=resp_start, spec=CREDIT_SPEC, backend=backend
            ) as cap:
                forward()
            return cap.stats

        return run

    return model, layers, forward, forward_with_stats


def bench_model_forward(shape: ModelShape, device: torch.device, dtype: torch.dtype) -> dict:
    """Plain forward vs forward with statistics captured on the credit layers (both backends)."""
    try:
        from attnrl.attention.capture import enable_capture
    except ImportError as e:
        return {"status": f"skipped: attnrl.attention.capture is unavailable ({e})"}
    model, layers, forward, forward_with_stats = model_forward_case(shape, device, dtype)

    result = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "layers": layers, "shape": asdict(shape)}
    with torch.inference_mode():
        result["plain_sdpa"] = measure(forward, device)
        plain_ms = result["plain_sdpa"]["ms"]
        enable_capture(model)
        result["capture_fn_idle"] = measure(forward, device, plain_ms)
        for backend in ("triton", "torch"):
            result[f"stats_{backend}"] = measure(forward_with_stats(backend), device, plain_ms)
        triton_stats, torch_stats = forward_with_stats("triton")(), forward_with_stats("torch")()
    result["triton_vs_torch_max_abs_diff"] = {
        name: max(max_abs_diff(getattr(triton_stats[i], name), getattr(torch_stats[i], name)) for i in layers)
        for name in ("lse", "dist_sum", "waad", "fai_sum")
    }
    return result


def profile_model_forward(shape: ModelShape, device: torch.device, dtype: torch.dtype, out_dir: Path) -> str:
    """torch.profiler tables (by device time and by host time) of the section-2 forward with Triton statistics,
    to find where the statistics' cost beyond the kernels goes. Written to ``out_dir/profile_model_forward.txt``."""
    from torch.profiler import ProfilerActivity, profile

    _, layers, _, with_stats = model_forward_case(shape, device, dtype)
    forward_with_stats = with_stats("triton")

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_device = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    with torch.inference_mode():
        for _ in range(3):
            forward_with_stats()
        synchronize(device)
        with profile(activities=activities) as prof:
            for _ in range(5):
                forward_with_stats()
            synchronize(device)
    text = (f"5 forwards with Triton statistics on layers {layers}\n\nby device time\n"
            + prof.key_averages().table(sort_by=sort_device, row_limit=25)
            + "\n\nby host time\n" + prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "profile_model_forward.txt").write_text(text)
    return text


# ------------------------------------------------------------------------------------------ reporting
LAYER_METHODS = [
    ("sdpa", "SDPA forward (causal, GQA)"),
    ("triton_full", "Triton stats, full (FAI 10..100)"),
    ("triton_full_fai_to_end", "Triton stats, full (FAI to end)"),
    ("triton_band_own_lse", "Triton band, own LSE pass"),
    ("triton_band_given_lse", "Triton band, LSE given"),
    ("flash_lse", "flash fwd returning LSE (kv expanded)"),
    ("torch_chunked", "chunked PyTorch stats"),
    ("eager", "eager softmax + stats"),
]


def format_cell(entry: dict) -> str:
    if "status" in entry:
        return entry["status"]
    text = f"{entry['ms']:.3g} ms"
    if entry.get("x_baseline") is not None:
        text += f" ({entry['x_baseline']:.2f}x)"
    if entry.get("extra_mib") is not None:
        text += (
            f", {entry['extra_mib'] / 1024:.3g} GiB"
            if entry["extra_mib"] >= 1024
            else f", {entry['extra_mib']:.0f} MiB"
        )
    return text


def layer_table(rows: list[dict]) -> str:
    """Markdown: one row per method, one column per T; cells 'time (x SDPA), extra memory'."""
    header = "| method | " + " | ".join(f"T={r['T']}" for r in rows) + " |"
    lines = [header, "|" + "---|" * (len(rows) + 1)]
    for key, label in LAYER_METHODS:
        lines.append(f"| {label} | " + " | ".join(format_cell(r[key]) for r in rows) + " |")
    checks = [
        f"T={r['T']}: "
        + ", ".join(
            f"{k.removesuffix('_max_abs_diff')} {r['flash_lse'][k]:.2e}"
            for k in r["flash_lse"]
            if k.endswith("max_abs_diff")
        )
        for r in rows
    ]
    target = [f"T={r['T']}: {r['triton_full']['x_baseline']:.2f}x" for r in rows if "ms" in r["triton_full"]]
    return (
        "\n".join(lines)
        + "\n\nflash LSE fed to the band pass (max abs diff vs full pass): "
        + "; ".join(checks)
        + "\n\nfull statistics / SDPA forward (DESIGN.md target: <= 1.5x at T >= 8K): "
        + ", ".join(target)
    )


def model_table(result: dict) -> str:
    if "status" in result:
        return result["status"]
    lines = [
        f"random LlamaForCausalLM, {result['params_m']:.3g}M params, "
        f"{result['shape'].get('batch', 1)} x {result['shape']['tokens']} tokens, "
        f"statistics on layers {result['layers']}",
        "",
        "| forward | time (x plain), extra memory |",
        "|---|---|",
    ]
    labels = {
        "plain_sdpa": "plain SDPA",
        "capture_fn_idle": "capturing SDPA, no capture active",
        "stats_triton": "capture, Triton statistics",
        "stats_torch": "capture, chunked PyTorch statistics",
    }
    lines += [f"| {label} | {format_cell(result[key])} |" for key, label in labels.items()]
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in result["triton_vs_torch_max_abs_diff"].items())
    return "\n".join(lines) + f"\n\nTriton vs PyTorch statistics on the captured layers (max abs diff): {diffs}"


def device_label(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu_interpreter"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def write_results(results: dict, markdown: str, out_dir: Path, label: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"attention_stats_{label}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / f"attention_stats_{label}.md").write_text(markdown + "\n")
    print(f"\nwrote {out_dir / f'attention_stats_{label}'}.json and .md")


# ------------------------------------------------------------------------------------------ CPU check
CHECK_CASES = [  # (name, B spans, T, H, Hkv, D, dtype, spec, mode)
    ("mha fp32 full", [(0, 40, 10)], 40, 4, 4, 16, torch.float32, CREDIT_SPEC, "full"),
    ("gqa4 bf16 full", [(3, 57, 20), (0, 41, 5)], 57, 8, 2, 64, torch.bfloat16, StatsSpec(4, 2, 30), "full"),
    ("gqa3 fp16 fai to end", [(0, 33, 8), (9, 9, 9)], 33, 6, 2, 32, torch.float16, ANALYSIS_SPEC, "full"),
    ("length 1", [(0, 1, 0)], 1, 2, 1, 16, torch.float32, StatsSpec(1, 0, 0), "full"),
    ("d128 band own lse", [(5, 70, 30)], 70, 4, 1, 128, torch.bfloat16, CREDIT_SPEC, "band"),
    ("band given lse", [(0, 64, 16), (7, 50, 20)], 64, 4, 2, 32, torch.float32, StatsSpec(10, 3, 12), "band_lse"),
]


def cpu_check_kernels() -> bool:
    """Kernel vs reference on small shapes; prints one line per case, returns True when all agree."""
    ok = True
    print("kernel vs reference (max abs diff; tolerance 1e-4 fp32, 1e-3 16-bit):")
    for name, spans, T, H, Hkv, D, dtype, spec, mode in CHECK_CASES:
        gen = torch.Generator().manual_seed(0)
        q = (2 * torch.randn(len(spans), H, T, D, generator=gen)).to(dtype)
        k = torch.randn(len(spans), Hkv, T, D, generator=gen).to(dtype)
        ss, se, rs = (torch.tensor(c) for c in zip(*spans))
        ref = attention_statistics_torch(q, k, ss, se, rs, spec)
        kwargs = {"band": mode != "full", "lse": ref.lse if mode == "band_lse" else None}
        out = attention_statistics_triton(q, k, ss, se, rs, spec, **kwargs)
        diffs = {
            f: max_abs_diff(getattr(out, f), getattr(ref, f))
            for f in ("lse", "dist_sum", "waad", "fai_sum")
            if getattr(out, f) is not None
        }
        tol = 1e-4 if dtype == torch.float32 else 1e-3
        scale = {f: 1 + float(getattr(ref, f).abs().max()) for f in diffs}
        good = all(diffs[f] <= tol * scale[f] for f in diffs) and torch.equal(out.fai_count, ref.fai_count)
        ok &= good
        print(f"  {'PASS' if good else 'FAIL'}  {name:24s} " + "  ".join(f"{f} {d:.1e}" for f, d in diffs.items()))
    return ok


# ------------------------------------------------------------------------------------------ main
def run(lengths, layer_shape: LayerShape, model_shape: ModelShape | None, device, out_dir: Path, label: str):
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (TRITON_INTERPRET=1)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "layer_shape": asdict(layer_shape),
        "spec": asdict(CREDIT_SPEC),
        "response_start": "T // 4",
        "layer": [],
    }
    sections = []
    for T in lengths:
        print(f"layer benchmark T={T} ...", flush=True)
        results["layer"].append(bench_layer(T, layer_shape, device))
    if lengths:
        sections.append(
            f"## Attention statistics, one layer ({results['device']}; B={layer_shape.batch}, "
            f"H={layer_shape.heads}, Hkv={layer_shape.kv_heads}, D={layer_shape.head_dim}, "
            f"{layer_shape.dtype}, response from T/4)\n\n" + layer_table(results["layer"])
        )
    if model_shape is not None:
        print("model forward ...", flush=True)
        results["model_forward"] = bench_model_forward(model_shape, device, getattr(torch, layer_shape.dtype))
        sections.append("## Statistics inside a model forward\n\n" + model_table(results["model_forward"]))
    markdown = "\n\n".join(sections)
    print("\n" + markdown)
    write_results(results, markdown, out_dir, label)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--skip-model-forward", action="store_true", help="only the one-layer section")
    parser.add_argument(
        "--model-forward",
        action="store_true",
        help="only the model-forward section (it is also part of the default run)",
    )
    parser.add_argument("--cpu-check", action="store_true", help="toy sizes on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--profile", action="store_true", help="only profile the model forward with statistics")
    parser.add_argument("--model-batch", type=int, default=1, help="sequences of 4K tokens in the model forward")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    if args.profile:
        cuda = torch.cuda.is_available()
        shape = ModelShape() if cuda else ModelShape(hidden=64, layers=4, heads=4, kv_heads=2, intermediate=128,
                                                     vocab=256, tokens=48, prompt_tokens=12)
        dtype = torch.bfloat16 if cuda else torch.float32
        print(profile_model_forward(shape, torch.device("cuda" if cuda else "cpu"), dtype, args.out))
        return 0

    if args.cpu_check:
        torch.manual_seed(0)
        kernels_ok = cpu_check_kernels()
        toy_model = ModelShape(
            hidden=64, layers=4, heads=4, kv_heads=2, intermediate=128, vocab=256, tokens=48, prompt_tokens=12
        )
        with tempfile.TemporaryDirectory() as tmp:
            results = run(
                [40, 72],
                LayerShape(heads=4, kv_heads=2, head_dim=32),
                toy_model,
                torch.device("cpu"),
                Path(tmp),
                "cpu_check",
            )
        diffs = results["model_forward"].get("triton_vs_torch_max_abs_diff", {})
        model_ok = bool(diffs) and all(d < 1e-3 for d in diffs.values())
        print(
            f"\ncpu check: kernels {'PASS' if kernels_ok else 'FAIL'}, "
            f"model capture {'PASS' if model_ok else 'FAIL (or capture module missing)'}"
        )
        return 0 if kernels_ok and model_ok else 1

    if not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-check to check the script on CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    lengths = [] if args.model_forward else args.lengths
    model_shape = None if args.skip_model_forward else ModelShape(batch=args.model_batch)
    run(lengths, LayerShape(), model_shape, device, args.out, device_label(device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
