"""The node vocabulary: attention heads, MLPs, the input and the read-out, as frozen values.

Every node has a ``name``, which is how a HeadGraph (a networkx graph) stores it: ``"L1H3"`` (`Head`), ``"M2"``
(`MLP`), ``"embed"`` (`Input`) and ``"logits"`` (`Readout`). `parse_node` turns a name back into its node, and
`in_model` checks a name against a model's config (typed errors that name the bad value and the valid range).
A head receiver reads three inputs, `INPUTS` (its queries, keys and values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from circuits.errors import UnknownNameError

EMBED, LOGITS = "embed", "logits"
INPUTS = ("q", "k", "v")  # what a head reads: its query, key and value inputs
_HEAD = re.compile(r"^L(\d+)H(\d+)$")
_MLP = re.compile(r"^M(\d+)$")


def config_of(model_or_cfg: Any) -> Any:
    """``model.cfg`` for a model, the config itself for a config."""
    return getattr(model_or_cfg, "cfg", model_or_cfg)


@dataclass(frozen=True, order=True)
class Head:
    """One attention head, ordered by layer then head; ``str(Head(1, 3)) == "L1H3"``."""

    layer: int
    head: int
    kind: ClassVar[str] = "head"

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: Union[str, "Head"]) -> "Head":
        """``"L1H3"`` -> ``Head(1, 3)`` (a `Head` passes through); anything else raises `UnknownNameError`."""
        if isinstance(name, Head):
            return name
        match = _HEAD.match(name) if isinstance(name, str) else None
        if match is None:
            raise UnknownNameError("head", name, ["L{layer}H{head}, e.g. 'L1H3'"])
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def in_model(cls, model_or_cfg: Any, name: Union[str, "Head"], also: tuple[str, ...] = (),
                 what: str = "head") -> "Head":
        """`name` checked against a model (or its config): `UnknownNameError` naming it (as `what`), the valid
        range and `also` (other names the caller accepts)."""
        cfg = config_of(model_or_cfg)
        valid = [f"L0H0 .. L{cfg.n_layers - 1}H{cfg.n_heads - 1}", *also]
        try:
            head = cls.parse(name)
        except UnknownNameError:
            raise UnknownNameError(what, name, valid) from None
        if head.layer >= cfg.n_layers or head.head >= cfg.n_heads:
            raise UnknownNameError(what, name, valid)
        return head


@dataclass(frozen=True, order=True)
class MLP:
    """The MLP of one block; ``str(MLP(2)) == "M2"``."""

    layer: int
    kind: ClassVar[str] = "mlp"

    @property
    def name(self) -> str:
        return f"M{self.layer}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: Union[str, "MLP"]) -> "MLP":
        """``"M2"`` -> ``MLP(2)`` (an `MLP` passes through); anything else raises `UnknownNameError`."""
        if isinstance(name, MLP):
            return name
        match = _MLP.match(name) if isinstance(name, str) else None
        if match is None:
            raise UnknownNameError("MLP", name, ["M{layer}, e.g. 'M2'"])
        return cls(int(match.group(1)))

    @classmethod
    def in_model(cls, model_or_cfg: Any, name: Union[str, "MLP"]) -> "MLP":
        cfg = config_of(model_or_cfg)
        valid = ["none: the model is attention-only"] if cfg.attn_only else [f"M0 .. M{cfg.n_layers - 1}"]
        try:
            mlp = cls.parse(name)
        except UnknownNameError:
            raise UnknownNameError("MLP", name, valid) from None
        if cfg.attn_only or mlp.layer >= cfg.n_layers:
            raise UnknownNameError("MLP", name, valid)
        return mlp


@dataclass(frozen=True)
class Input:
    """The model's input (token embeddings, or float inputs) as a sender: ``"embed"``."""

    kind: ClassVar[str] = "embed"
    name: ClassVar[str] = EMBED

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Readout:
    """The read-out (the logits at each prompt's read-out position) as a receiver: ``"logits"``."""

    kind: ClassVar[str] = "logits"
    name: ClassVar[str] = LOGITS

    def __str__(self) -> str:
        return self.name


Node = Union[Head, MLP, Input, Readout]


def parse_node(name: Union[str, Node]) -> Node:
    """A node from its name (``"L1H3"``, ``"M2"``, ``"embed"``, ``"logits"``); nodes pass through."""
    if isinstance(name, (Head, MLP, Input, Readout)):
        return name
    if name == EMBED:
        return Input()
    if name == LOGITS:
        return Readout()
    if isinstance(name, str) and _MLP.match(name):
        return MLP.parse(name)
    if isinstance(name, str) and _HEAD.match(name):
        return Head.parse(name)
    raise UnknownNameError("node", name, ["L{layer}H{head}", "M{layer}", EMBED, LOGITS])


def node_name(node: Union[str, Node]) -> str:
    """The graph name of a node or of a node name (checked)."""
    return parse_node(node).name


def all_heads(model_or_cfg: Any) -> list[Head]:
    """Every head of a model (or config), layer by layer."""
    cfg = config_of(model_or_cfg)
    return [Head(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]


def all_mlps(model_or_cfg: Any) -> list[MLP]:
    """Every MLP of a model (or config); none for an attention-only model."""
    cfg = config_of(model_or_cfg)
    return [] if cfg.attn_only else [MLP(layer) for layer in range(cfg.n_layers)]
