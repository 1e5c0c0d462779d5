"""The sweep spec: tasks, models, engines with options, seeds and ``n``; its cells and their keys.

Read by `circuits.sweep` (see there and docs/sweep.md). Names and options are checked here, before any run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from circuits._registry import ENGINES, TASKS, Registry
from circuits._version import package_version
from circuits.errors import InvalidOptionError, MissingDependencyError

SPEC_KEYS = ("tasks", "models", "engines", "seeds", "n")
MODEL_SOURCES = ("default", "bundled", "toy", "hub")
PLACEMENT_KEYS = ("device", "n_devices", "device_map", "offload_folder", "num_cpus", "num_gpus", "replicas")  # not in the key
MODEL_KEYS = ("name", "toy", "hub", "dtype", *PLACEMENT_KEYS)
NOT_RESULTS = ("progress",)  # engine options left out of a cell's key: they change what is printed, not the graph


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _resolve(name: str, registry: Registry[Any], options: dict[str, Any]) -> Any:
    """``registry.get(name, **options)``: a registered name (entry points included) or ``"module:attribute"``; a name
    that fails to import raises `PluginImportError` with the real error."""
    try:
        return registry.get(name, **options)
    except TypeError as error:  # an unknown keyword
        raise InvalidOptionError(f"{name!r} rejects options {options}: {error}") from None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        return _resolve(self.name, TASKS, self.options)

    @property
    def label(self) -> str:
        source = self.options.get("source")
        if self.name == "prompts" and isinstance(source, str):
            return f"prompts-{Path(source).stem}"
        return self.name.rsplit(":", 1)[-1]

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options}


@dataclass(frozen=True)
class EngineSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def build(self) -> Any:
        return _resolve(self.name, ENGINES, self.options)

    def config(self) -> dict[str, Any]:
        """Name and every option, defaults included (so spelling out a default keeps the key), except those that do
        not change results (`NOT_RESULTS`: a progress bar)."""
        options = {k: v for k, v in asdict(self.build()).items() if k not in NOT_RESULTS}
        return {"name": self.name, "options": json.loads(canonical(options))}


@dataclass(frozen=True)
class ModelSpec:
    """``name="default"`` (each task's default model), ``"bundled"`` (SmolLM2), a toy (``toy={...}``, the
    fields of `circuits.models.ToyConfig`) or a hub model (``hub="org/name"`` with optional ``n_devices``,
    ``device_map``, ``offload_folder`` (where a ``"disk"`` entry of the map goes; default: a temporary folder),
    ``dtype``; loaded by TransformerLens's ``boot_transformers``). ``device`` moves a default,
    toy or bundled model; ``num_cpus``/``num_gpus`` are the Ray resources of each of the model's ``replicas``
    actors."""

    name: str
    toy: Optional[dict[str, Any]] = None
    hub: Optional[str] = None
    dtype: Optional[str] = None
    device: Optional[str] = None
    n_devices: Optional[int] = None
    device_map: Union[str, dict[str, Any], None] = None
    offload_folder: Optional[str] = None
    num_cpus: Union[int, float] = 1
    num_gpus: Union[int, float] = 0
    replicas: int = 1  # Ray: this many actors share the model's cells (e.g. one per GPU of a node)

    def __post_init__(self) -> None:
        if self.toy is not None and self.hub is not None:
            raise InvalidOptionError(f"model {self.name!r} has both toy= and hub=; expected one source")
        if self.toy is None and self.hub is None and self.name not in ("default", "bundled"):
            raise InvalidOptionError(f"model {self.name!r}: expected toy={{...}}, hub='org/name', or the name "
                                     "'default' (each task's default model) or 'bundled' (SmolLM2)")
        if self.toy is not None:
            self.toy_config()  # validates the fields
        for resource_name in ("num_cpus", "num_gpus"):
            value = getattr(self, resource_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidOptionError(f"model {self.name!r}: {resource_name}={value!r}; expected a number >= 0")
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 1:
            raise InvalidOptionError(f"model {self.name!r}: replicas={self.replicas!r}; expected an integer >= 1")
        if (self.n_devices or self.device_map or self.offload_folder or self.dtype) and self.source != "hub":
            raise InvalidOptionError(f"model {self.name!r}: n_devices, device_map, offload_folder and dtype apply to "
                                     "hub models")

    @property
    def source(self) -> str:
        return "toy" if self.toy is not None else "hub" if self.hub is not None else self.name

    def toy_config(self) -> Any:
        from circuits.models import ToyConfig

        try:
            return ToyConfig(**{"name": self.name, **(self.toy or {})})
        except TypeError as error:
            raise InvalidOptionError(f"model {self.name!r}: bad toy fields {self.toy}: {error}") from None

    def config(self) -> dict[str, Any]:
        """What determines the model's weights and numbers; placement and resources are left out, so a sweep
        moved from a laptop to a GPU cluster resumes (meta.json records where each cell ran)."""
        return {"source": self.source, "toy": self.toy, "hub": self.hub, "dtype": self.dtype,
                "name": self.name}

    def hub_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``TransformerBridge.boot_transformers`` (through `circuits.models.load`)."""
        kwargs: dict[str, Any] = {}
        if self.device is not None:
            kwargs["device"] = self.device
        if self.n_devices is not None:
            kwargs["n_devices"] = self.n_devices
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
        if self.offload_folder is not None:
            kwargs["offload_folder"] = self.offload_folder
        if self.dtype is not None:
            kwargs["dtype"] = getattr(torch, self.dtype)
        return kwargs

    def load(self, task: Any) -> Any:
        from circuits import models

        if self.source == "hub":
            return models.load(self.hub, **self.hub_kwargs())
        if self.source == "bundled":
            return models.bundled(device=self.device)
        model = task.default_model() if self.source == "default" else models.toy(self.toy_config())
        return model if self.device is None else model.to(self.device, print_details=False)


@dataclass(frozen=True)
class Cell:
    task: TaskSpec
    model: ModelSpec
    engine: EngineSpec
    seed: int
    n: int
    engine_config: dict[str, Any]  # EngineSpec.config(), computed once per spec

    def config(self) -> dict[str, Any]:
        return {"task": self.task.config(), "model": self.model.config(), "engine": self.engine_config,
                "seed": self.seed, "n": self.n}

    @property
    def key(self) -> str:
        blob = canonical({"cell": self.config(), "version": package_version()})
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def folder(self) -> str:
        """Readable and unique: ``task.model.engine.seedS.KEY``."""
        parts = [self.task.label, self.model.name, self.engine.label or self.engine.name, f"seed{self.seed}"]
        readable = ".".join("".join(c if c.isalnum() or c in "-_" else "-" for c in part) for part in parts)
        return f"{readable}.{self.key}"

    @property
    def group(self) -> str:
        """Cells that share a loaded model (one Ray actor each): a default model depends on its task."""
        if self.model.source == "default":
            return f"default:{canonical(self.task.config())}"
        return f"model:{self.model.name}"


@dataclass(frozen=True)
class Spec:
    tasks: tuple[TaskSpec, ...]
    models: tuple[ModelSpec, ...]
    engines: tuple[EngineSpec, ...]
    seeds: tuple[int, ...] = (0,)
    n: int = 32

    @classmethod
    def load(cls, spec: Union["Spec", dict[str, Any], str, Path]) -> "Spec":
        """A spec from a `Spec`, a dict, or a TOML file; names and options are checked here, before any run."""
        if isinstance(spec, Spec):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise MissingDependencyError("reading a TOML spec needs Python >= 3.11 (tomllib)") from None
        path = Path(spec)
        if not path.is_file():
            raise InvalidOptionError(f"spec {str(path)!r} is not a file; expected a TOML sweep spec")
        with path.open("rb") as handle:
            return cls.from_dict(tomllib.load(handle), base=path.parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Optional[Path] = None) -> "Spec":
        """A spec from a dict; `base` is the folder relative prompt-file paths start from (the spec file's; default
        the working directory)."""
        unknown = sorted(set(data) - set(SPEC_KEYS))
        if unknown:
            raise InvalidOptionError(f"unknown spec keys {unknown}; expected some of {list(SPEC_KEYS)}")
        for required in ("tasks", "models", "engines"):
            if not data.get(required):
                raise InvalidOptionError(f"the spec lists no {required}; expected a non-empty list")
        spec = cls(tasks=tuple(_task_spec(t, base or Path.cwd()) for t in data["tasks"]),
                   models=tuple(_model_spec(m) for m in data["models"]),
                   engines=tuple(_engine_spec(e) for e in data["engines"]),
                   seeds=tuple(data.get("seeds", (0,))), n=data.get("n", 32))
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in spec.seeds) or not spec.seeds:
            raise InvalidOptionError(f"seeds={list(spec.seeds)}; expected a non-empty list of integers")
        if isinstance(spec.n, bool) or not isinstance(spec.n, int) or spec.n < 1:
            raise InvalidOptionError(f"n={spec.n!r}; expected a positive number of prompts")
        names = [m.name for m in spec.models]
        if len(set(names)) != len(names):
            raise InvalidOptionError(f"model names {names} repeat; each model needs its own name")
        for part in (*spec.tasks, *spec.engines):
            part.build()  # unknown names and bad options fail here, before any run
        return spec

    def cells(self) -> list[Cell]:
        engine_configs = [engine.config() for engine in self.engines]
        return [Cell(task, model, engine, seed, self.n, config)
                for task in self.tasks for model in self.models
                for engine, config in zip(self.engines, engine_configs) for seed in self.seeds]


def _named(entry: Any, kind: str) -> dict[str, Any]:
    if isinstance(entry, str):
        return {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        also = " or { prompts = 'file.jsonl' }" if kind == "task" else ""
        raise InvalidOptionError(f"{kind} entry {entry!r}; expected a name or a table with name = '...'{also}")
    return dict(entry)


PROMPTS_KEYS = ("prompts", "metric", "first_token", "model")


def _task_spec(entry: Any, base: Path) -> TaskSpec:
    """A task entry: a name, ``{ name = ..., options = {...} }``, or ``{ prompts = "file.jsonl", metric = ... }`` (the
    ``prompts`` task on that file, its path taken from `base` when relative)."""
    if isinstance(entry, dict) and "prompts" in entry:
        _no_extra(entry, PROMPTS_KEYS, "prompts task")
        if not isinstance(entry["prompts"], str):
            raise InvalidOptionError(f"prompts = {entry['prompts']!r}; expected the path of a prompt file")
        source = Path(entry["prompts"]).expanduser()
        options = {key: value for key, value in entry.items() if key != "prompts"}
        return TaskSpec("prompts", {"source": str(source if source.is_absolute() else (base / source).resolve()),
                                    **options})
    entry = _named(entry, "task")
    _no_extra(entry, ("name", "options"), "task")
    return TaskSpec(entry["name"], dict(entry.get("options", {})))


def _engine_spec(entry: Any) -> EngineSpec:
    entry = _named(entry, "engine")
    _no_extra(entry, ("name", "options", "label"), "engine")
    return EngineSpec(entry["name"], dict(entry.get("options", {})), entry.get("label", ""))


def _model_spec(entry: Any) -> ModelSpec:
    entry = _named(entry, "model")
    _no_extra(entry, MODEL_KEYS, "model")
    return ModelSpec(**entry)


def _no_extra(entry: dict[str, Any], allowed: Iterable[str], kind: str) -> None:
    extra = sorted(set(entry) - set(allowed))
    if extra:
        raise InvalidOptionError(f"{kind} {entry.get('name')!r} has unknown keys {extra}; expected some of "
                                 f"{list(allowed)}")
