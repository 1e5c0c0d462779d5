"""Typed errors. Every message names the bad value and what was expected."""

from __future__ import annotations


class CircuitsError(Exception):
    """Base class of every error this library raises on purpose."""


class UnknownNameError(CircuitsError, KeyError):
    """A name (task, engine, head, hook) that is not registered; the message lists the valid ones."""

    def __init__(self, kind: str, name: object, valid: list[str] | tuple[str, ...]):
        self.kind, self.name, self.valid = kind, name, list(valid)
        super().__init__(f"unknown {kind} {name!r}; expected one of: {', '.join(map(str, valid))}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class DuplicateNameError(CircuitsError, ValueError):
    """A name registered twice (two distributions' entry points, or `register` of a taken name); the message
    names both sources."""


class PluginImportError(CircuitsError, ImportError):
    """A task or engine whose code cannot be loaded (an entry point or a ``"module:attribute"`` name): the message
    carries the real ImportError or AttributeError (also chained as ``__cause__``) and, where it can tell, why."""


class InvalidBatchError(CircuitsError, ValueError):
    """A PromptBatch that does not fit the model or is inconsistent with itself."""


class UnequalLengthError(InvalidBatchError):
    """A clean prompt and its corrupted twin of different token lengths (the read-out would sit at different
    tokens); the message names the row and both lengths. Checked before padding, which would hide it."""


class InvalidOptionError(CircuitsError, ValueError):
    """An engine or task option outside its allowed values."""


class InvalidTaskError(InvalidOptionError, TypeError):
    """Something passed as a task that is not one (a name instead of a task object, or an object without the
    members of `circuits.Task`); the message says what to pass instead."""


class PromptFileError(CircuitsError, ValueError):
    """A prompt file or prompt records that cannot be read as asked: the message names the file, the line or row,
    the bad value and what was expected. Raised before any model work."""


class MultiTokenAnswerError(InvalidOptionError):
    """An answer (or foil) that is more than one token under the model's tokenizer, or an answer tensor with more
    than one token per prompt: the metrics read one logit per answer. The message names the answer and its
    tokens (and, for prompt files, the file and row)."""


class ModelNotFoundError(CircuitsError, OSError):
    """A model that cannot be found: a folder that does not exist or holds no model, or a hub name that is not in
    the local Hugging Face cache while the hub is out of reach (offline)."""


class MissingOptionError(InvalidOptionError, TypeError):
    """A required option left out (e.g. ``by=`` on a ranking); the message lists the choices."""


class RenamedOptionError(InvalidOptionError, TypeError):
    """An option or function under its old name; the message names the new one (see CHANGELOG.md)."""

    def __init__(self, where: str, old: str, new: str):
        self.where, self.old, self.new = where, old, new
        super().__init__(f"{where}: {old!r} was renamed; use {new}")


class RenamedError(CircuitsError, AttributeError):
    """A function under its old name (a module attribute); the message names the new one (see CHANGELOG.md)."""

    def __init__(self, where: str, old: str, new: str):
        self.where, self.old, self.new = where, old, new
        super().__init__(f"{where}.{old} was renamed; use {new}")

    def __str__(self) -> str:
        return self.args[0]


class GraphFileError(CircuitsError, ValueError):
    """A graph file (MIB's graph JSON) that cannot be read: the message names the file, the key and the value, and
    what was expected."""


class InvalidEdgeError(InvalidOptionError):
    """An edge that cannot exist (a receiver before its sender, a head receiver without its q/k/v input, a name
    that does not parse); the message names the edge and what was expected."""


class MixedEffectsError(InvalidOptionError):
    """Edges that measure different effects (direct, total, ...) selected together; the message lists them."""


class MismatchedGraphsError(CircuitsError, ValueError):
    """Graphs compared together that belong to another task or model than the one given."""


class MetricError(CircuitsError, ValueError):
    """A task metric that returned NaN/inf or the wrong shape."""


class UndefinedScoreError(CircuitsError, ZeroDivisionError):
    """The clean and corrupted metrics are equal, so a normalised patching score is undefined."""


class IncompatibleModelError(CircuitsError, TypeError):
    """A model that a task or engine cannot work with (e.g. token inputs for a continuous task)."""


class HookNotFiredError(CircuitsError, RuntimeError):
    """A hook was attached but the forward pass never reached it."""


class MissingDependencyError(CircuitsError, ImportError):
    """An optional package needed for this call is not installed."""


class DamagedCacheWarning(UserWarning):
    """A cached trained model could not be read (truncated or corrupt file); it is trained again."""
