"""The node vocabulary: attention heads, MLPs, the input and the read-out, as frozen values.

Every node has a ``name``, which is how a HeadGraph (a networkx graph) stores it: ``"L1H3"`` (`Head`), ``"M2"``
(`MLP`), ``"embed"`` (`Input`) and ``"logits"`` (`Readout`). `parse_node` turns a name back into its node, and
`in_model` checks a name against a model's config (typed errors that name the bad value and the valid range).
A head receiver reads three inputs, `INPUTS` (its queries, keys and values).

An `Edge` joins a sender (the input, a head or an MLP) to a receiver (a head's q, k or v input, an MLP's input or
the read-out), as in the MIB benchmark's graphs; a circuit is a set of edges. `all_edges` lists a model's every edge.
An edge may act at one position only (`Edge.position`: a token index, or the name of a span the task marks in each
prompt; None, the default, is every position): the receiver's input there is the sum of the senders' outputs there.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union, no_type_check

from circuits.errors import InvalidEdgeError, UnknownNameError

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


def stage(node: Node) -> Union[int, float]:
    """When a node reads or writes: the input at -1, layer l's heads at 2l, its MLP at 2l + 1, the read-out last.
    An edge runs from an earlier stage to a later one."""
    if isinstance(node, Input):
        return -1
    if isinstance(node, Readout):
        return math.inf
    return 2 * node.layer + (1 if isinstance(node, MLP) else 0)


_EDGE = re.compile(r"^([^<>@]+)->([^<>@]+?)(?:<([a-z]+)>)?(?:@(.+))?$")
Position = Union[int, str]  # a token index, or a span name (`circuits.PromptBatch.span_names`)


def position_of(value: Union[Position, None], where: str = "position") -> Optional[Position]:
    """A position as an `Edge` holds it: None, an int >= 0 (a string of digits is read as one: graphs store
    labels as strings), or a span name (no ``<``, ``>``, ``@`` or whitespace); else `InvalidEdgeError`."""
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, int) and value < 0) \
            or (isinstance(value, str) and (not value or re.search(r"[<>@\s]", value))):
        raise InvalidEdgeError(f"{where} {value!r}; expected None (every position), a token index >= 0 or a span "
                               "name such as 'end' (no '<', '>', '@' or spaces)")
    return value


@dataclass(frozen=True)
class Edge:
    """One edge of a model's graph: `sender` (`Input`, `Head` or `MLP`) -> `receiver` (`Head`, `MLP` or `Readout`),
    and for a head receiver the `input` it reads through (``"q"``, ``"k"`` or ``"v"``; None otherwise). Nodes may be
    given by name. ``Edge("L0H1", "L1H0", "k").name == "L0H1->L1H0<k>"`` (the MIB benchmark's spelling, with this
    library's node names); `Edge.parse` reads it back. A sender must come before its receiver: a head feeds the heads
    of later layers, its own layer's MLP and later ones, and the read-out. `position` (None: every position) is where
    the edge acts: a token index or a span name (`position_of`), written after ``@``: ``"L0H1->L1H0<k>@end"``;
    `plain` is the edge at every position."""

    sender: Union[Node, str]  # a name is parsed: the field always holds a node
    receiver: Union[Node, str]
    input: Optional[str] = None
    position: Optional[Position] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "position", position_of(self.position, f"edge {self.sender}->{self.receiver}: "
                                                                        "position"))
        try:
            sender, receiver = parse_node(self.sender), parse_node(self.receiver)
        except UnknownNameError as error:
            raise InvalidEdgeError(f"edge {self.sender!r} -> {self.receiver!r}: {error}") from None
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "receiver", receiver)
        where = f"edge {sender.name} -> {receiver.name} (input {self.input!r})"
        if isinstance(sender, Readout):
            raise InvalidEdgeError(f"{where}: the read-out sends nothing; expected a sender {EMBED!r}, a head or an "
                                   "MLP")
        if isinstance(receiver, Input):
            raise InvalidEdgeError(f"{where}: the input receives nothing; expected a receiver: a head, an MLP or "
                                   f"{LOGITS!r}")
        if isinstance(receiver, Head) and self.input not in INPUTS:
            raise InvalidEdgeError(f"{where}: a head receives through one of its inputs; expected input in {INPUTS}")
        if not isinstance(receiver, Head) and self.input is not None:
            raise InvalidEdgeError(f"{where}: only a head receiver has q/k/v inputs; expected input=None")
        if not stage(sender) < stage(receiver):
            raise InvalidEdgeError(f"{where}: the sender does not come before the receiver; expected a head to feed "
                                   "later layers' heads, its own layer's MLP or later ones, and the read-out")

    @classmethod
    @no_type_check  # hot: a model's every edge (10^5 on SmolLM2) is built through it
    def between(cls, sender: Node, receiver: Node, input: Optional[str] = None,
                position: Optional[Position] = None) -> "Edge":
        """The edge between nodes already known to form one (`all_edges`, a graph's own edges): built without
        parsing and checking, as edges are built by the hundred thousand."""
        edge = object.__new__(cls)
        edge.__dict__.update(sender=sender, receiver=receiver, input=input, position=position)
        return edge

    @property
    def name(self) -> str:
        return (f"{self.sender.name}->{self.receiver.name}" + (f"<{self.input}>" if self.input else "")
                + ("" if self.position is None else f"@{self.position}"))

    @property
    def plain(self) -> "Edge":
        """This edge at every position (itself when it has no position)."""
        return self if self.position is None else Edge(self.sender, self.receiver, self.input)

    def at(self, position: Optional[Position]) -> "Edge":
        """This edge at `position` (None: every position)."""
        return Edge(self.sender, self.receiver, self.input, position)

    def __str__(self) -> str:
        return self.name

    @property
    def key(self) -> tuple:
        """A sort key: by receiver (in forward order, q before k before v), then by sender, then by position (every
        position first, then token indices, then spans by name)."""
        inputs = INPUTS.index(self.input) if self.input else 0
        where = (-1, "") if self.position is None else (self.position, "") if isinstance(self.position, int) else \
            (math.inf, self.position)
        return (stage(self.receiver), getattr(self.receiver, "head", 0), inputs, stage(self.sender),
                getattr(self.sender, "head", 0), *where)

    @classmethod
    def parse(cls, name: Union[str, "Edge"]) -> "Edge":
        """``"L0H1->L1H0<k>"`` -> ``Edge(Head(0, 1), Head(1, 0), "k")``, ``"L0H1->logits@end"`` -> the edge at span
        ``"end"``, ``"...@5"`` at token 5 (an `Edge` passes through)."""
        if isinstance(name, Edge):
            return name
        match = _EDGE.match(name) if isinstance(name, str) else None
        if match is None:
            raise InvalidEdgeError(f"edge name {name!r}; expected 'sender->receiver' or 'sender->receiver<q|k|v>', "
                                   "optionally followed by '@position' (a token index or a span name), e.g. "
                                   "'L0H1->L1H0<k>' or 'L0H1->L1H0<k>@end'")
        return cls(match.group(1), match.group(2), match.group(3), match.group(4))

    def in_model(self, model_or_cfg: Any) -> "Edge":
        """This edge, checked against a model's config (`UnknownNameError` naming a node the model lacks)."""
        for node in (self.sender, self.receiver):
            if isinstance(node, Head):
                Head.in_model(model_or_cfg, node)
            elif isinstance(node, MLP):
                MLP.in_model(model_or_cfg, node)
        return self


def senders(model_or_cfg: Any) -> list[Node]:
    """Every sender in forward order: the input, then per layer its heads and its MLP."""
    cfg = config_of(model_or_cfg)
    out: list[Node] = [Input()]
    for layer in range(cfg.n_layers):
        out += [Head(layer, h) for h in range(cfg.n_heads)] + ([] if cfg.attn_only else [MLP(layer)])
    return out


def receivers(model_or_cfg: Any) -> list[tuple[Node, Optional[str]]]:
    """Every receiver in forward order, as (node, input): per layer the q inputs of its heads, then k, then v,
    then its MLP; the read-out last."""
    cfg = config_of(model_or_cfg)
    out: list[tuple[Node, Optional[str]]] = []
    for layer in range(cfg.n_layers):
        out += [(Head(layer, h), i) for i in INPUTS for h in range(cfg.n_heads)]
        out += [] if cfg.attn_only else [(MLP(layer), None)]
    return out + [(Readout(), None)]


def all_edges(model_or_cfg: Any) -> list[Edge]:
    """Every edge of a model's graph (MIB's): each sender to each later receiver, ordered by receiver then sender."""
    sent = [(s, stage(s)) for s in senders(model_or_cfg)]
    out: list[Edge] = []
    for receiver, i in receivers(model_or_cfg):
        reads = stage(receiver)
        out += [Edge.between(s, receiver, i) for s, writes in sent if writes < reads]
    return out
