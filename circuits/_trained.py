"""Trained toy models: a recipe (config, training function, training spec), its hash, and where its weights come
from: shipped package data, the cache under ``$CIRCUITS_CACHE``, or training.

Shipped weights are ``{folder}/{config.name}.safetensors`` with ``{config.name}.json`` beside them; the json
records the recipe hash (`TrainedToy.key`) they were trained by. They are used only while that hash is the one
the current code computes: otherwise a `StaleWeightsWarning` says so and the model comes from the cache or is
trained, as without shipped weights (`make models` regenerates them; a test refuses stale ones).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import platform
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from circuits import training
from circuits.errors import DamagedCacheWarning, StaleWeightsWarning


@dataclass(frozen=True, eq=False)
class TrainedToy:
    """What determines a trained toy model: `config`, ``train(module)`` (the code of the module defining it is
    hashed, with the training loop's) and `spec` (steps, learning rate, data version...); `shipped`: a folder
    that may hold its weights as package data."""

    config: Any  # circuits.models.ToyConfig
    train: Callable[[Any], Any]
    spec: Mapping[str, Any] = field(default_factory=dict)
    shipped: Optional[Path] = None

    @property
    def name(self) -> str:
        return self.config.name

    def key(self) -> str:
        """The recipe hash: config, spec and training code. Weights are reused only under the same key."""
        return self.config.key(recipe=recipe_fingerprint(self.train), **dict(self.spec))

    def cache_path(self) -> Path:
        from circuits.models import cache_dir

        return cache_dir() / f"{self.name}-{self.key()}.pt"

    def shipped_paths(self) -> tuple[Path, Path]:
        """The weights and the record of this model's shipped files (they may not exist)."""
        if self.shipped is None:
            raise ValueError(f"{self.name} has no shipped folder")
        return self.shipped / f"{self.name}.safetensors", self.shipped / f"{self.name}.json"

    def record(self) -> Optional[dict[str, Any]]:
        """The shipped json record (recipe hash, config, headline numbers...), or None when nothing is shipped."""
        if self.shipped is None or not self.shipped_paths()[1].exists():
            return None
        return json.loads(self.shipped_paths()[1].read_text())

    def load(self, retrain: bool = False) -> Any:
        """The trained model (a bridge): the shipped weights if they fit this recipe, else the cache, else
        trained now (and cached). ``retrain=True`` trains again whatever is shipped or cached."""
        from circuits import models

        if not retrain:
            model = self.from_shipped()
            if model is not None:
                return model
        def read(path: Path) -> Any:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return models.wrap(self._module_with(state), self.config)

        def build(path: Path) -> Any:
            module = models.new_native(self.config)
            self.train(module)
            tmp = path.with_suffix(".tmp")
            torch.save(module.state_dict(), tmp)
            tmp.replace(path)  # atomic: a killed run leaves no half-written cache entry
            return models.wrap(module, self.config)

        return models._cache_entry(self.cache_path(), read, build, "training the model again", rebuild=retrain)

    def ship(self, info: Optional[Mapping[str, Any]] = None) -> Path:
        """Write the cached weights of this recipe (train them first: `load`) into the shipped folder, as
        safetensors, with a json record of the recipe hash, the config, the spec and `info` (headline numbers)."""
        from safetensors.torch import save_file

        if not self.cache_path().exists():
            raise FileNotFoundError(f"no cached weights for {self.name} (key {self.key()}) at {self.cache_path()}; "
                                    "train them first (TrainedToy.load)")
        state = torch.load(self.cache_path(), map_location="cpu", weights_only=True)
        weights, record = self.shipped_paths()
        weights.parent.mkdir(parents=True, exist_ok=True)
        # own, contiguous storage per tensor: safetensors refuses tensors that share memory
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(weights))
        record.write_text(json.dumps({
            "name": self.name, "key": self.key(), "config": asdict(self.config),
            "spec": json.loads(json.dumps(dict(self.spec), default=str)),
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
            **dict(info or {})}, indent=1, default=str) + "\n")
        return weights

    def from_shipped(self) -> Any:
        """The model from its shipped weights, or None when none are shipped, they were trained by another recipe
        (`StaleWeightsWarning`) or they are damaged (`DamagedCacheWarning`)."""
        from circuits import models

        state = self._shipped_state()
        return None if state is None else models.wrap(self._module_with(state), self.config)

    def _shipped_state(self) -> Optional[dict[str, torch.Tensor]]:
        record = self.record()
        if record is None:
            return None
        weights = self.shipped_paths()[0]
        if record.get("key") != self.key():
            warnings.warn(StaleWeightsWarning(
                f"the shipped weights {weights} were trained by another recipe (recorded hash {record.get('key')}, "
                f"the current code's {self.key()}); using the cache or training instead (`make models` "
                "regenerates them)"), stacklevel=5)
            return None
        try:
            from safetensors.torch import load_file

            if hashlib.sha256(weights.read_bytes()).hexdigest() != record.get("sha256"):
                raise ValueError("its sha256 differs from the one recorded in the json")
            return load_file(str(weights))
        except Exception as error:  # missing, truncated or edited
            warnings.warn(DamagedCacheWarning(f"the shipped weights {weights} are damaged ({type(error).__name__}: "
                                              f"{error}); using the cache or training instead"), stacklevel=5)
            return None

    def _module_with(self, state: Mapping[str, torch.Tensor]) -> Any:
        from circuits import models

        module = models.new_native(self.config)
        module.load_state_dict(state)
        return module


def recipe_fingerprint(train: Callable[..., Any]) -> str:
    """A hash of the code that trains a model: the module defining `train` (bound methods and partials
    resolved) and `circuits.training`, as syntax trees without docstrings (comments, formatting and
    documentation do not count), written out the same way on every Python version (`_canonical`)."""
    function = getattr(train, "func", train)
    function = getattr(function, "__func__", function)
    sources = []
    for module in (inspect.getmodule(function), training):
        try:
            sources.append(_canonical(_without_docstrings(ast.parse(inspect.getsource(module)))))
        except (OSError, TypeError):  # defined interactively: no source to hash
            sources.append(getattr(function, "__qualname__", repr(function)))
    return hashlib.sha256("\n".join(sources).encode()).hexdigest()[:16]


def _canonical(node: Any) -> str:
    """A syntax tree as text, leaving out empty fields: `ast.dump` differs between Python versions (3.12 adds
    ``type_params=[]``, 3.13 omits empty fields), and shipped weights must match on all of them."""
    if isinstance(node, ast.AST):
        fields = [f"{name}={_canonical(value)}" for name in node._fields
                  if (value := getattr(node, name, None)) is not None and not (isinstance(value, list) and not value)]
        return f"{type(node).__name__}({','.join(fields)})"
    if isinstance(node, list):
        return f"[{','.join(_canonical(item) for item in node)}]"
    return repr(node)


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree
