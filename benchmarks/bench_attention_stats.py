"""Cost of the attention statistics (docs/methods.md §1.2) against the attention forward itself, on one GPU.

    python benchmarks/bench_attention_stats.py                  # kernels at T = 2K..32K + model forward
    python benchmarks/bench_attention_stats.py --skip-model-forward   # section 1 only
    python benchmarks/bench_attention_stats.py --model-forward --model-batches 1 8   # section 2 only
    python benchmarks/bench_attention_stats.py --cpu-check      # toy sizes on CPU under TRITON_INTERPRET=1
    python benchmarks/bench_attention_stats.py --profile        # torch.profiler tables of the model forward

Section 1 (one layer, B=1, H=32, Hkv=8, D=128, bf16, full-length sequences, response = last 3/4): SDPA forward;
the Triton statistics (full pass; band pass with its own LSE; band pass given an LSE); the flash-attention
op that also returns the LSE (and whether its LSE can feed the band pass); the chunked PyTorch path; eager
softmax materialisation where it fits. Times are medians in ms (CUDA events), extra memory is the peak
allocation above the inputs (outputs included). Goal: full statistics <= 1.5x the SDPA forward, O(T) memory.

Section 2 (model forward): a random ~0.5B LlamaForCausalLM on 4K tokens at each batch size, every method
delivering the logits and the statistics of the 5 credit layers (``attnrl.credit.heads.default_layers``):
  - plain SDPA forward (the baseline; the loss forward a trainer runs anyway);
  - that forward with statistics captured through ``attnrl.attention.capture`` (Triton; chunked PyTorch);
  - that forward with the statistics from the materialised softmax of each credit layer (eager statistics);
  - the paper's approach: the plain forward, then an auxiliary eager forward of the first 2L/3 layers (through
    the last credit layer) with ``output_attentions=True``, then the statistics from the returned attention.
Each is timed by device time (sum of kernel times, torch.profiler) and by CUDA events; ratios are to the plain
forward and to the paper's approach. Goal: Triton statistics <= 1.03x the plain forward by device time.

Results go to benchmarks/results/{attention_stats,model_forward}_<device>.{json,md} (model_forward when only
section 2 runs), rewritten after every measured length / batch so an interrupted run keeps what it measured.
``--cpu-check`` compares the kernels with the reference on small shapes and runs the chosen sections at toy
sizes on CPU (results to --out if given, else a temporary folder); it exits non-zero on any mismatch.
Needs only torch, triton, transformers and attnrl.
"""
# ruff: noqa: E402  (TRITON_INTERPRET must be set before the first triton import)

from __future__ import annotations

import argparse
import contextlib
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

from attnrl.credit.heads import default_layers
from attnrl.kernels.reference import StatsSpec, attention_statistics_torch
from attnrl.kernels.triton_stats import attention_statistics_triton

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CREDIT_SPEC = StatsSpec()  # the credit-assignment defaults W = 10, FAI [s+10, s+100] (docs/methods.md §1.2)
ANALYSIS_SPEC = StatsSpec(fai_lo=1, fai_hi=None)  # FAI horizon from s+1 to the end of the sequence
LAYER_GOAL_X = 1.5  # full statistics pass / SDPA forward, one layer
MODEL_GOAL_X = 1.03  # forward with Triton statistics / plain forward, device time
STAT_FIELDS = ("dist_sum", "waad", "fai_sum")  # what every model-forward method delivers


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
    """A random LlamaForCausalLM and the forward measured on it (batch sizes are given per run)."""

    hidden: int = 1024
    layers: int = 24
    heads: int = 16
    kv_heads: int = 8
    intermediate: int = 4096
    vocab: int = 49152
    tokens: int = 4096
    prompt_tokens: int = 1024


# --cpu-check sizes: the Triton interpreter costs ~0.3 s per (row, head) program, so few heads
TOY_MODEL = ModelShape(hidden=32, layers=4, heads=2, kv_heads=1, intermediate=64, vocab=256, tokens=40,
                       prompt_tokens=12)
TOY_LAYER = LayerShape(heads=2, kv_heads=1, head_dim=16, dtype="float32")


@dataclass
class Timing:
    """How long each measurement runs: warm-up calls, then repetitions until ``min_total_s`` has passed
    (between ``min_reps`` and ``max_reps``); ``device_reps`` forwards under torch.profiler for device time."""

    warmup: int = 1
    min_reps: int = 3
    max_reps: int = 30
    min_total_s: float = 0.3
    device_reps: int = 3


TIMING = Timing()
CPU_TIMING = Timing(warmup=0, min_reps=1, max_reps=1, min_total_s=0.0, device_reps=1)  # --cpu-check: run once


# ------------------------------------------------------------------------------------------ measuring tools
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, timing: Timing = TIMING) -> float:
    """Median wall time of ``fn()`` in ms (CUDA events on GPU) after ``timing.warmup`` calls (which also
    compile Triton kernels)."""
    for _ in range(timing.warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    while len(times) < timing.min_reps or (sum(times) < 1e3 * timing.min_total_s and len(times) < timing.max_reps):
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


def device_ms(fn, device: torch.device, reps: int) -> float:
    """Device time of one ``fn()`` in ms: the sum of the kernel (and copy) times torch.profiler records over
    ``reps`` calls, divided by ``reps``. Host time, launch gaps and idle device time are not counted. On CPU
    (``--cpu-check``) it is the summed self time of the CPU operators instead."""
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    synchronize(device)
    with profile(activities=[activity]) as prof:
        for _ in range(reps):
            fn()
        synchronize(device)
    if device.type == "cuda":
        total_us = sum(_self_device_us(e) for e in prof.key_averages())
    else:
        total_us = sum(e.self_cpu_time_total for e in prof.key_averages())
    return total_us / reps / 1e3


def _self_device_us(event) -> float:
    value = getattr(event, "self_device_time_total", None)
    return float(value if value is not None else getattr(event, "self_cuda_time_total", 0.0))


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


def measure(fn, device: torch.device, baseline_ms: float | None = None, timing: Timing = TIMING,
            with_device_time: bool = False) -> dict:
    """{"ms", "x_baseline", "extra_mib"[, "device_ms"]} for ``fn`` (x_baseline: time / baseline_ms, the SDPA
    forward), or {"status": reason} when it runs out of memory."""
    try:
        extra = peak_extra_mib(fn, device)
        ms = median_ms(fn, device, timing)
        result = {"ms": ms, "x_baseline": None if baseline_ms is None else ms / baseline_ms, "extra_mib": extra}
        if with_device_time:
            result["device_ms"] = device_ms(fn, device, timing.device_reps)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"status": "out of memory"}
    return result


def max_abs_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    return float((a.float() - b.float()).abs().max()) if a is not None and a.numel() else 0.0


# ------------------------------------------------------------------------------------------ eager statistics
def reduce_probabilities(probs: torch.Tensor, resp_start: torch.Tensor, spec: StatsSpec) -> tuple[torch.Tensor, ...]:
    """(dist_sum, waad, fai_sum), each (B, h, T) float32, from materialised attention probabilities
    ``probs`` (B, h, T, T) (zero above the diagonal). Full-length rows only (no padding); resp_start: (B,)."""
    B, _, T, _ = probs.shape
    probs = probs.float()
    idx = torch.arange(T, device=probs.device)
    delta = (idx[:, None] - idx[None, :]).float()  # t - s
    dist_sum = (probs * delta.clamp(min=0)).sum(-1)
    waad = (probs * delta.clamp(0, spec.window)).sum(-1)
    horizon = delta >= spec.fai_lo
    if spec.fai_hi is not None:
        horizon &= delta <= spec.fai_hi
    rows = idx[None, :, None] >= resp_start.to(probs.device)[:, None, None]  # (B, T, 1): t in the response
    fai_sum = (probs * (horizon[None] & rows)[:, None]).sum(-2)
    return dist_sum, waad, fai_sum


def eager_statistics(q, k, resp_start, spec: StatsSpec, scale: float | None = None,
                     heads_per_chunk: int | None = None) -> tuple[torch.Tensor, ...]:
    """The naive way: materialise the (B, h, T, T) fp32 softmax, ``heads_per_chunk`` heads at a time, then
    reduce it. q: (B, H, T, D), k: (B, Hkv, T, D); full-length rows only. Returns (lse, dist_sum, waad, fai_sum),
    each (B, H, T) float32."""
    B, H, T, D = q.shape
    group = H // k.shape[1]
    scale = D**-0.5 if scale is None else scale
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    chunk = heads_per_chunk or H
    parts = []
    for h0 in range(0, H, chunk):
        heads = torch.arange(h0, min(H, h0 + chunk), device=q.device)
        scores = torch.matmul(q[:, heads], k[:, heads // group].transpose(-1, -2)).float().mul_(scale)
        scores.masked_fill_(~causal, float("-inf"))
        lse = torch.logsumexp(scores, -1)
        probs = scores.sub_(lse[..., None]).exp_()
        parts.append((lse, *reduce_probabilities(probs, resp_start, spec)))
        del scores, probs
    return tuple(torch.cat(field, 1) for field in zip(*parts))


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


def eager_fits(T: int, batch: int, heads: int, device: torch.device) -> bool:
    """Eager needs about three fp32 (B, H, T, T) tensors at once."""
    if device.type != "cuda":
        return True
    need = 3 * 4 * batch * heads * T * T
    return need < 0.9 * torch.cuda.mem_get_info(device)[0]


def flash_with_lse(q, k_rep, v_rep) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused attention op that also returns the row LSE (B, H, T), natural log; kv already expanded."""
    if q.is_cuda:
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k_rep, v_rep, 0.0, True)
    else:
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k_rep, v_rep, 0.0, True)
    return out[0], out[1]


def bench_layer(T: int, shape: LayerShape, device: torch.device, timing: Timing = TIMING) -> dict:
    """Every method of section 1 at sequence length T."""
    q, k, v, (ss, se, rs) = make_layer(T, shape, device)
    row: dict = {"T": T}
    sdpa = measure(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), device,
                   timing=timing)
    row["sdpa"] = sdpa
    sdpa_ms = sdpa["ms"]

    def stats(spec=CREDIT_SPEC, **kw):
        return lambda: attention_statistics_triton(q, k, ss, se, rs, spec, **kw)

    row["triton_full"] = measure(stats(), device, sdpa_ms, timing)
    row["triton_full_fai_to_end"] = measure(stats(ANALYSIS_SPEC), device, sdpa_ms, timing)
    row["triton_band_own_lse"] = measure(stats(band=True), device, sdpa_ms, timing)
    full = stats()()
    row["triton_band_given_lse"] = measure(stats(band=True, lse=full.lse), device, sdpa_ms, timing)
    row["flash_lse"] = flash_lse_check(q, k, v, (ss, se, rs), full, device, sdpa_ms, timing)
    row["torch_chunked"] = measure(lambda: attention_statistics_torch(q, k, ss, se, rs, CREDIT_SPEC), device,
                                   sdpa_ms, timing)
    if eager_fits(T, shape.batch, shape.heads, device):
        row["eager"] = measure(lambda: eager_statistics(q, k, rs, CREDIT_SPEC), device, sdpa_ms, timing)
    else:
        row["eager"] = {"status": "does not fit"}
    triton_ok = "ms" in row["triton_full"]
    row["goal_met"] = triton_ok and row["triton_full"]["x_baseline"] <= LAYER_GOAL_X
    extra = row["triton_full"].get("extra_mib")
    row["triton_full_extra_mib_per_1k_tokens"] = None if extra is None else 1024 * extra / T
    return row


def flash_lse_check(q, k, v, spans, full, device: torch.device, sdpa_ms: float, timing: Timing = TIMING) -> dict:
    """Time the flash op that returns the LSE and check that its LSE drives the band pass correctly."""
    group = q.shape[1] // k.shape[1]
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    try:
        result = measure(lambda: flash_with_lse(q, k_rep, v_rep), device, sdpa_ms, timing)
        lse = flash_with_lse(q, k_rep, v_rep)[1]
    except RuntimeError as e:  # no flash kernel for this device / dtype / torch build
        return {"status": f"unavailable: {str(e).splitlines()[0]}"}
    band = attention_statistics_triton(q, k, *spans, CREDIT_SPEC, band=True, lse=lse)
    result["lse_max_abs_diff"] = max_abs_diff(lse, full.lse)
    result["band_waad_max_abs_diff"] = max_abs_diff(band.waad, full.waad)
    result["band_fai_max_abs_diff"] = max_abs_diff(band.fai_sum, full.fai_sum)
    return result


# ------------------------------------------------------------------------------------------ section 2
EAGER_STATS_IMPLEMENTATION = "attnrl_bench_eager_stats"
_eager_capture: dict = {}  # while active: {"layers", "resp_start", "spec", "stats"}


def _sdpa_with_eager_statistics(module, query, key, value, attention_mask, *args, **kwargs):
    """transformers attention function: SDPA, plus eager statistics of the selected layers while active."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out = sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    layer = getattr(module, "layer_idx", None)
    if _eager_capture and layer in _eager_capture["layers"]:
        lse, *fields = eager_statistics(query, key, _eager_capture["resp_start"], _eager_capture["spec"],
                                        scale=kwargs.get("scaling"), heads_per_chunk=4)
        _eager_capture["stats"][layer] = dict(zip(STAT_FIELDS, fields))
    return out


def register_eager_statistics_attention() -> None:
    """Register :func:`_sdpa_with_eager_statistics` with transformers under EAGER_STATS_IMPLEMENTATION."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(EAGER_STATS_IMPLEMENTATION, _sdpa_with_eager_statistics)
    AttentionMaskInterface.register(EAGER_STATS_IMPLEMENTATION, sdpa_mask)


@contextlib.contextmanager
def attention_implementation(model, name: str):
    """Run the block with ``model`` switched to the attention implementation ``name``; restore it after."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def paper_statistics(model, ids, mask, layers: list[int], resp_start, spec: StatsSpec,
                     micro_batch: int) -> dict[int, dict]:
    """The paper's approach after generation: an auxiliary eager forward of the first 2L/3 layers (through the
    last credit layer) with ``output_attentions=True``, ``micro_batch`` rows at a time, then the statistics of
    ``layers`` from the returned (B, H, T, T) attention. Returns {layer: {field: (B, H, T) float32}}."""
    decoder = model.model
    L = len(decoder.layers)
    n_aux = max(2 * L // 3, max(layers) + 1)
    all_layers = decoder.layers
    parts: list[dict[int, tuple]] = []
    decoder.layers = all_layers[:n_aux]
    try:
        with attention_implementation(model, "eager"):
            for i in range(0, ids.shape[0], micro_batch):
                sl = slice(i, i + micro_batch)
                out = decoder(input_ids=ids[sl], attention_mask=mask[sl], output_attentions=True, use_cache=False)
                parts.append({layer: _reduce_by_heads(out.attentions[layer], resp_start[sl], spec)
                              for layer in layers})
                del out
    finally:
        decoder.layers = all_layers
    return {layer: {f: torch.cat([p[layer][j] for p in parts]) for j, f in enumerate(STAT_FIELDS)}
            for layer in layers}


def _reduce_by_heads(probs: torch.Tensor, resp_start, spec: StatsSpec, heads_per_chunk: int = 4):
    parts = [reduce_probabilities(probs[:, h:h + heads_per_chunk], resp_start, spec)
             for h in range(0, probs.shape[1], heads_per_chunk)]
    return tuple(torch.cat(field, 1) for field in zip(*parts))


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
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.set_attn_implementation("sdpa")
    return model


class ModelForwardCase:
    """The section-2 set-up at one batch size: ``forward()`` is the plain forward (logits); each
    ``with_*()`` returns a callable running the same forward and returning the statistics of ``layers``."""

    def __init__(self, model, shape: ModelShape, batch: int, device: torch.device):
        self.model, self.shape = model, shape
        gen = torch.Generator(device=device).manual_seed(batch)
        self.ids = torch.randint(0, shape.vocab, (batch, shape.tokens), generator=gen, device=device)
        self.mask = torch.ones_like(self.ids)
        self.resp_start = torch.full((batch,), shape.prompt_tokens, device=device)
        self.layers = default_layers(shape.layers)

    def forward(self):
        return self.model(input_ids=self.ids, attention_mask=self.mask, use_cache=False).logits

    def with_capture(self, backend: str):
        from attnrl.attention.capture import capture_statistics

        def run():
            with capture_statistics(self.model, layers=self.layers, attention_mask=self.mask,
                                    resp_start=self.resp_start, spec=CREDIT_SPEC, backend=backend) as cap:
                self.forward()
            return {layer: {f: getattr(s, f) for f in STAT_FIELDS} for layer, s in cap.stats.items()}

        return run

    def with_eager_statistics(self):
        def run():
            _eager_capture.update(layers=set(self.layers), resp_start=self.resp_start, spec=CREDIT_SPEC, stats={})
            try:
                with attention_implementation(self.model, EAGER_STATS_IMPLEMENTATION):
                    self.forward()
                return _eager_capture["stats"]
            finally:
                _eager_capture.clear()

        return run

    def with_paper_approach(self, micro_batch: int):
        def run():
            self.forward()
            return paper_statistics(self.model, self.ids, self.mask, self.layers, self.resp_start, CREDIT_SPEC,
                                    micro_batch)

        return run


def model_forward_case(shape: ModelShape, device: torch.device, dtype: torch.dtype, batch: int = 1):
    """(model, layers, forward, forward_with_stats) for the profile: ``forward_with_stats(backend)()`` runs the
    forward with statistics captured on ``layers`` and returns them."""
    case = ModelForwardCase(build_model(shape, device, dtype), shape, batch, device)
    return case.model, case.layers, case.forward, case.with_capture


MODEL_METHODS = [  # (key, label); every method delivers the logits and the statistics of the credit layers
    ("plain_sdpa", "plain SDPA forward (no statistics)"),
    ("capture_fn_idle", "capturing SDPA, no capture active"),
    ("stats_triton", "capture, Triton statistics (attnrl)"),
    ("stats_torch", "capture, chunked PyTorch statistics"),
    ("stats_eager", "eager statistics (materialised softmax of each credit layer)"),
    ("paper", "paper: forward + eager aux forward (first 2L/3 layers, output_attentions)"),
]


def bench_model_batch(model, shape: ModelShape, batch: int, device: torch.device, timing: Timing = TIMING) -> dict:
    """Every method of section 2 at one batch size; ratios by device time and by CUDA-event time."""
    from attnrl.attention.capture import enable_capture

    case = ModelForwardCase(model, shape, batch, device)
    result: dict = {"batch": batch, "tokens": shape.tokens, "layers": case.layers}

    def run(fn, name):
        result[name] = measure(fn, device, timing=timing, with_device_time=True)

    with torch.inference_mode():
        model.set_attn_implementation("sdpa")
        run(case.forward, "plain_sdpa")
        enable_capture(model)
        run(case.forward, "capture_fn_idle")
        for backend in ("triton", "torch"):
            run(case.with_capture(backend), f"stats_{backend}")
        run(case.with_eager_statistics(), "stats_eager")
        micro = batch
        while True:  # the paper's auxiliary forward keeps every layer's attention: fewer rows if it does not fit
            run(case.with_paper_approach(micro), "paper")
            if result["paper"].get("status") != "out of memory" or micro == 1:
                break
            micro //= 2
        result["paper"]["micro_batch"] = micro
        outputs = {"triton": case.with_capture("triton")(), "torch": case.with_capture("torch")(),
                   "eager": case.with_eager_statistics()()}
        if "status" not in result["paper"]:
            outputs["paper"] = case.with_paper_approach(micro)()
    result["max_abs_diff_vs_torch"] = {
        name: {f: max(max_abs_diff(stats[layer][f], outputs["torch"][layer][f]) for layer in case.layers)
               for f in STAT_FIELDS}
        for name, stats in outputs.items() if name != "torch"
    }
    add_ratios(result)
    return result


def add_ratios(result: dict) -> None:
    """x_sdpa / x_paper (device time) and x_sdpa_wall (CUDA events) for every method; the goal flag."""
    plain, paper = result["plain_sdpa"], result["paper"]
    if "status" in plain:  # no baseline: no ratios
        result["goal_met"] = False
        return
    for key, _ in MODEL_METHODS:
        entry = result[key]
        if "status" in entry:
            continue
        entry["x_sdpa"] = entry["device_ms"] / plain["device_ms"]
        entry["x_sdpa_wall"] = entry["ms"] / plain["ms"]
        entry["x_paper"] = entry["device_ms"] / paper["device_ms"] if "device_ms" in paper else None
    triton_x = result["stats_triton"].get("x_sdpa")
    result["goal_met"] = triton_x is not None and triton_x <= MODEL_GOAL_X


def bench_model_forward(shape: ModelShape, batches: list[int], device: torch.device, dtype: torch.dtype,
                        timing: Timing = TIMING, on_batch=None) -> dict:
    """Section 2 at each batch size in ``batches`` (one model); ``on_batch(result)`` after each one."""
    try:
        import attnrl.attention.capture  # noqa: F401
    except ImportError as e:
        return {"status": f"skipped: attnrl.attention.capture is unavailable ({e})"}
    register_eager_statistics_attention()
    model = build_model(shape, device, dtype)
    result = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "shape": asdict(shape), "batches": []}
    for batch in batches:
        print(f"model forward batch={batch} ...", flush=True)
        result["batches"].append(bench_model_batch(model, shape, batch, device, timing))
        if on_batch is not None:
            on_batch(result)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def profile_model_forward(shape: ModelShape, device: torch.device, dtype: torch.dtype, out_dir: Path,
                          batch: int = 1) -> str:
    """torch.profiler tables (by device time and by host time) of the section-2 forward with Triton statistics,
    to find where the statistics' cost beyond the kernels goes. Written to ``out_dir/profile_model_forward.txt``."""
    from torch.profiler import ProfilerActivity, profile

    _, layers, _, with_stats = model_forward_case(shape, device, dtype, batch)
    forward_with_stats = with_stats("triton")

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_device = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    warmup, reps = (3, 5) if device.type == "cuda" else (1, 1)  # on CPU (interpreter) it only checks the code
    with torch.inference_mode():
        for _ in range(warmup):
            forward_with_stats()
        synchronize(device)
        with profile(activities=activities) as prof:
            for _ in range(reps):
                forward_with_stats()
            synchronize(device)
    text = (f"{reps} forwards ({batch} x {shape.tokens} tokens) with Triton statistics on layers {layers}\n\n"
            "by device time\n" + prof.key_averages().table(sort_by=sort_device, row_limit=25)
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


def format_mib(mib: float) -> str:
    return f"{mib / 1024:.3g} GiB" if mib >= 1024 else f"{mib:.3g} MiB"


def format_cell(entry: dict) -> str:
    if "status" in entry:
        return entry["status"]
    text = f"{entry['ms']:.3g} ms"
    if entry.get("x_baseline") is not None:
        text += f" ({entry['x_baseline']:.2f}x)"
    if entry.get("extra_mib") is not None:
        text += f", {format_mib(entry['extra_mib'])}"
    return text


def goal_cell(met: bool, ratio: float | None) -> str:
    if ratio is None:
        return "not measured"
    return f"{'met' if met else 'NOT met'} ({ratio:.2f}x)"


def layer_table(rows: list[dict]) -> str:
    """Markdown: one row per method, one column per T; cells 'time (x SDPA), extra memory'; then the goal row
    (full statistics <= LAYER_GOAL_X x SDPA) and the full pass's extra memory per 1K tokens (flat = O(T))."""
    header = "| method | " + " | ".join(f"T={r['T']}" for r in rows) + " |"
    lines = [header, "|" + "---|" * (len(rows) + 1)]
    for key, label in LAYER_METHODS:
        lines.append(f"| {label} | " + " | ".join(format_cell(r[key]) for r in rows) + " |")
    lines.append(f"| **goal: full stats <= {LAYER_GOAL_X}x SDPA** | "
                 + " | ".join(goal_cell(r["goal_met"], r["triton_full"].get("x_baseline")) for r in rows) + " |")
    per_1k = [r.get("triton_full_extra_mib_per_1k_tokens") for r in rows]
    if any(v is not None for v in per_1k):
        lines.append("| full stats extra memory per 1K tokens (flat = O(T)) | "
                     + " | ".join("—" if v is None else format_mib(v) for v in per_1k) + " |")
    checks = [
        f"T={r['T']}: "
        + ", ".join(
            f"{k.removesuffix('_max_abs_diff')} {r['flash_lse'][k]:.2e}"
            for k in r["flash_lse"]
            if k.endswith("max_abs_diff")
        )
        for r in rows
    ]
    return "\n".join(lines) + "\n\nflash LSE fed to the band pass (max abs diff vs full pass): " + "; ".join(checks)


def model_table(result: dict) -> str:
    """Markdown: per batch size, one row per method: device time (x plain, x paper), CUDA-event time, memory."""
    if "status" in result:
        return result["status"]
    parts = [f"random LlamaForCausalLM, {result['params_m']:.3g}M params, {result['shape']['tokens']} tokens per "
             f"sequence (response from token {result['shape']['prompt_tokens']}), statistics on the credit layers; "
             "device time = summed kernel time (torch.profiler), wall = CUDA events"]
    for b in result["batches"]:
        lines = [f"### batch {b['batch']} x {b['tokens']} tokens, layers {b['layers']}", "",
                 "| method | device time | x plain | x paper | wall (CUDA events) | x plain (wall) | extra memory |",
                 "|---|---|---|---|---|---|---|"]
        for key, label in MODEL_METHODS:
            e = b[key]
            if "status" in e:
                lines.append(f"| {label} | {e['status']} | | | | | |")
                continue
            x_paper = "—" if e.get("x_paper") is None else f"{e['x_paper']:.3f}x"
            mem = "—" if e.get("extra_mib") is None else format_mib(e["extra_mib"])
            note = f" (micro-batch {e['micro_batch']})" if key == "paper" and e.get("micro_batch") != b["batch"] else ""
            lines.append(f"| {label}{note} | {e['device_ms']:.3g} ms | {e['x_sdpa']:.3f}x | {x_paper} | "
                         f"{e['ms']:.3g} ms | {e['x_sdpa_wall']:.3f}x | {mem} |")
        lines.append("")
        lines.append(f"**goal: Triton statistics <= {MODEL_GOAL_X}x plain by device time: "
                     f"{goal_cell(b['goal_met'], b['stats_triton'].get('x_sdpa'))}**")
        diffs = "; ".join(f"{name}: " + ", ".join(f"{f} {v:.2e}" for f, v in d.items())
                          for name, d in b["max_abs_diff_vs_torch"].items())
        lines.append(f"\nmax abs diff to the chunked PyTorch statistics: {diffs}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def device_label(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu_interpreter"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def write_results(results: dict, markdown: str, out_dir: Path, name: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown + "\n")


# ------------------------------------------------------------------------------------------ CPU check
CHECK_CASES = [  # (name, B spans, T, H, Hkv, D, dtype, spec, mode); few rows x heads: the interpreter is slow
    ("mha fp32 full", [(0, 40, 10)], 40, 2, 2, 16, torch.float32, CREDIT_SPEC, "full"),
    ("gqa4 bf16 full", [(3, 57, 20), (0, 41, 5)], 57, 4, 1, 64, torch.bfloat16, StatsSpec(4, 2, 30), "full"),
    ("gqa3 fp16 fai to end", [(0, 33, 8), (9, 9, 9)], 33, 3, 1, 32, torch.float16, ANALYSIS_SPEC, "full"),
    ("length 1", [(0, 1, 0)], 1, 2, 1, 16, torch.float32, StatsSpec(1, 0, 0), "full"),
    ("d128 band own lse", [(5, 70, 30)], 70, 4, 1, 128, torch.bfloat16, CREDIT_SPEC, "band"),
    ("band given lse", [(0, 64, 16), (7, 50, 20)], 64, 2, 1, 32, torch.float32, StatsSpec(10, 3, 12), "band_lse"),
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


def model_check(result: dict, tol: float = 1e-3) -> bool:
    """True when every section-2 method's statistics match the chunked PyTorch ones within ``tol`` (fp32)."""
    batches = result.get("batches") or []
    return bool(batches) and all(
        v <= tol * (1 + abs(v)) for b in batches for d in b["max_abs_diff_vs_torch"].values() for v in d.values()
    ) and all(len(b["max_abs_diff_vs_torch"]) == 3 for b in batches)


# ------------------------------------------------------------------------------------------ main
def run(lengths, layer_shape: LayerShape, model_shape: ModelShape | None, batches: list[int], device,
        out_dir: Path, label: str, timing: Timing = TIMING) -> dict:
    """Measure section 1 at ``lengths`` and section 2 at ``batches`` (when model_shape is given); write the
    results after every step to ``out_dir/<name>_<label>.{json,md}``."""
    name = f"{'attention_stats' if lengths else 'model_forward'}_{label}"
    dtype = getattr(torch, layer_shape.dtype)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (TRITON_INTERPRET=1)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": _version("transformers"),
        "layer_shape": asdict(layer_shape),
        "spec": asdict(CREDIT_SPEC),
        "response_start": "T // 4",
        "goals": {"layer_full_stats_x_sdpa": LAYER_GOAL_X, "model_triton_stats_x_plain_device": MODEL_GOAL_X},
        "layer": [],
    }

    def markdown() -> str:
        sections = []
        if results["layer"]:
            sections.append(
                f"## Attention statistics, one layer ({results['device']}; torch {results['torch']}, triton "
                f"{results['triton']}; B={layer_shape.batch}, H={layer_shape.heads}, Hkv={layer_shape.kv_heads}, "
                f"D={layer_shape.head_dim}, {layer_shape.dtype}, response from T/4)\n\n" + layer_table(results["layer"])
            )
        if "model_forward" in results:
            sections.append(f"## Statistics inside a model forward ({results['device']}; torch {results['torch']}, "
                            f"triton {results['triton']}, transformers {results['transformers']}, "
                            f"{layer_shape.dtype})\n\n" + model_table(results["model_forward"]))
        return "\n\n".join(sections)

    def save(*_):
        write_results(results, markdown(), out_dir, name)

    for T in lengths:
        print(f"layer benchmark T={T} ...", flush=True)
        results["layer"].append(bench_layer(T, layer_shape, device, timing))
        save()
    if model_shape is not None:
        def on_batch(partial):
            results["model_forward"] = partial
            save()

        results["model_forward"] = bench_model_forward(model_shape, batches, device, dtype, timing, on_batch)
    save()
    print("\n" + markdown())
    print(f"\nwrote {out_dir / name}.json and .md")
    return results


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="section-1 sequence lengths (default 2048..32768; --cpu-check: 24 40)")
    parser.add_argument("--skip-model-forward", action="store_true", help="only the one-layer section")
    parser.add_argument("--model-forward", action="store_true",
                        help="only the model-forward section (it is also part of the default run)")
    parser.add_argument("--model-batches", "--model-batch", type=int, nargs="+", default=None,
                        help="batch sizes of the model forward (default 1 8; --cpu-check: 1 2)")
    parser.add_argument("--cpu-check", action="store_true", help="toy sizes on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--profile", action="store_true", help="only profile the model forward with statistics")
    parser.add_argument("--out", type=Path, default=None, help=f"results folder (default {RESULTS_DIR})")
    args = parser.parse_args(argv)
    if args.model_forward and args.skip_model_forward:
        parser.error("--model-forward and --skip-model-forward exclude each other; give at most one")
    bad = [b for b in (args.model_batches or []) + (args.lengths or []) if b < 1]
    if bad:
        parser.error(f"--lengths and --model-batches must be positive, got {bad}")

    if args.profile:
        cuda = torch.cuda.is_available() and not args.cpu_check
        shape = ModelShape() if cuda else TOY_MODEL
        dtype = torch.bfloat16 if cuda else torch.float32
        batch = (args.model_batches or [1])[0]
        print(profile_model_forward(shape, torch.device("cuda" if cuda else "cpu"), dtype, args.out or RESULTS_DIR,
                                    batch))
        return 0

    if args.cpu_check:
        torch.manual_seed(0)
        kernels_ok = True if args.model_forward else cpu_check_kernels()
        lengths = [] if args.model_forward else (args.lengths or [24, 40])
        model_shape = None if args.skip_model_forward else TOY_MODEL
        with contextlib.ExitStack() as stack:
            out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            results = run(lengths, TOY_LAYER, model_shape,
                          args.model_batches or [1, 2], torch.device("cpu"), out, "cpu_check", CPU_TIMING)
        model_ok = model_shape is None or model_check(results.get("model_forward", {}))
        print(f"\ncpu check: kernels {'PASS' if kernels_ok else 'FAIL'}, "
              f"model statistics {'PASS' if model_ok else 'FAIL (or capture module missing)'}")
        return 0 if kernels_ok and model_ok else 1

    if not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-check to check the script on CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    lengths = [] if args.model_forward else (args.lengths or [2048, 4096, 8192, 16384, 32768])
    model_shape = None if args.skip_model_forward else ModelShape()
    run(lengths, LayerShape(), model_shape, args.model_batches or [1, 8], device, args.out or RESULTS_DIR,
        device_label(device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
