from .default import DEFAULT_MODEL, default_model_path, load_model_and_tokenizer, resolve_model_path

__all__ = ["DEFAULT_MODEL", "default_model_path", "load_model_and_tokenizer", "resolve_model_path"]
