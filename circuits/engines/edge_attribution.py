"""Edge attribution: EAP (Syed, Rager & Conmy 2023) and EAP-IG (Hanna, Pezzelle & Belinkov 2024).

The graph: writers (``embed``, every head, every MLP ``"M{layer}"``) -> readers (every head's q, k and v
input, every MLP's input, ``logits``). The score of edge u -> v is the first-order estimate of patching
that one path: ``Δa_u · ḡ_v``, where ``Δa_u`` is the writer's output change (source run minus base run;
a head's is ``Δz_u W_O[u]``) and ``ḡ_v`` the gradient of the metric with respect to the reader's input
(the residual stream entering v, as v alone reads it), batch mean. Directions follow the library:
denoising (default) runs the corrupted prompts as base and the clean ones as source; noising swaps them.

- ``eap``: ḡ at the base run (denoising: the corrupted run): the Taylor estimate of the patch itself.
- ``eap_ig_inputs``: ḡ averaged over `steps` points on the straight line from the base run's to the
  source run's embeddings (α = 0 base, 1 source): ``quadrature`` "midpoint" α = (k + ½)/steps, "base_end"
  α = k/steps, "source_end" α = (k + 1)/steps, k = 0..steps-1.
- ``eap_ig_activations``: the reference's: one unit at a time (embedding, a layer's heads, an MLP) interpolated
  in a run of the base prompts, the gradient through it blocked; every run's gradients go to every edge.
- ``eap_ig_stagewise``: per stage, ḡ averaged over the runs that interpolate that stage; only its edges take them.

``positions="tokens"`` or ``"spans"`` keeps each edge's products per position before summing them (Haklay et al.
2025's positional edges; docs/positional.md): per token index, or per span of the task's prompts (`PromptBatch.spans`,
so prompts of different lengths line up); the graph keeps them beside each edge's score, their sum.

``convention="mib"`` gives the reference code's numbers (hannamw/EAP-IG, the MIB benchmark's): noising, with the
reference's points per method (`MIB_QUADRATURE`); docs/edge_attribution.md has the table and the exact factor
between the normalisations.

TransformerLens 4 refuses ``hook_result`` and split q/k/v inputs on native models, so reader gradients
are vector-Jacobian products: head h's gradient at ``hook_q`` through its own ``W_Q[h]`` to ``ln1``'s
output, pulled back through ``ln1`` to the block's input, is its q-input gradient; likewise k and v.
Summed over heads and q/k/v they are the gradient change across the attention (tested). Hook tensors are views that the bridge
does not use downstream, so each capture hook returns a clone, which the rest of the model then reads.

Grouped-query attention: a receiver is a query head (as in path patching). Its k/v gradient is
recovered per query head by pulling the gradient at ``hook_z``, masked to the query heads at one
position inside their groups, back to ``hook_k``/``hook_v`` (one batched pull for all groups).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from circuits import forward, hooks, positions
from circuits._task import PromptBatch
from circuits.engines import base, coverage, kit
from circuits.engines.kit import Measurement
from circuits.errors import InvalidOptionError, MetricError
from circuits.graph import HeadGraph
from circuits.nodes import EMBED, INPUTS, LOGITS, MLP, Head, parse_node

METHODS = ("eap", "eap_ig_inputs", "eap_ig_activations", "eap_ig_stagewise")
QUADRATURES = ("midpoint", "base_end", "source_end")
CONVENTIONS = ("library", "mib")
# The reference code's points (hannamw/EAP-IG, July 2025), in the noising direction it measures: EAP-IG-inputs takes
# k/steps of the way from the corrupted input, k = 0..steps-1 (from the clean base: the source end included);
# EAP-IG-activations takes k/steps of the clean output, k = 1..steps (the base end included).
MIB_QUADRATURE = {"eap_ig_inputs": "source_end", "eap_ig_activations": "base_end"}


@dataclass(frozen=True)
class Layout:
    """Writers and readers in a fixed order, with the stage at which each writes or reads: embed writes
    at -1, layer l's heads write (and read) at 2l, its MLP at 2l + 1, the logits read at 2 n_layers.
    An edge exists where the writer's stage is earlier than the reader's."""

    n_layers: int
    n_heads: int
    has_mlp: bool

    @classmethod
    def of(cls, model: Any) -> "Layout":
        cfg = model.cfg
        return cls(cfg.n_layers, cfg.n_heads, not cfg.attn_only)

    @property
    def writers(self) -> list[tuple[str, int]]:
        out = [(EMBED, -1)]
        for layer in range(self.n_layers):
            out += [(Head(layer, h).name, 2 * layer) for h in range(self.n_heads)]
            out += [(MLP(layer).name, 2 * layer + 1)] if self.has_mlp else []
        return out

    def layer_readers(self, layer: int) -> list[tuple[str, str, int]]:
        """(node, input, stage) for layer `layer`: q of every head, then k, then v, then the MLP input."""
        out = [(Head(layer, h).name, i, 2 * layer) for i in INPUTS for h in range(self.n_heads)]
        return out + ([(MLP(layer).name, "", 2 * layer + 1)] if self.has_mlp else [])

    @property
    def readers(self) -> list[tuple[str, str, int]]:
        out = [r for layer in range(self.n_layers) for r in self.layer_readers(layer)]
        return out + [(LOGITS, "", 2 * self.n_layers)]

    def blocks(self) -> list[tuple[int, int]]:
        """The reader blocks `reader_gradients` returns, as (readers in it, writers before it): every
        writer a block's readers can hear comes first in `writers`, so a prefix of the rows is enough."""
        per_layer = self.n_heads + int(self.has_mlp)
        out = []
        for layer in range(self.n_layers):
            out.append((3 * self.n_heads, 1 + layer * per_layer))
            if self.has_mlp:
                out.append((1, 1 + layer * per_layer + self.n_heads))
        return out + [(1, len(self.writers))]

    def mask(self) -> Tensor:
        """``[writer, reader]``: True where the edge exists."""
        w = torch.tensor([stage for _, stage in self.writers])
        r = torch.tensor([stage for _, _, stage in self.readers])
        return w[:, None] < r[None, :]


@base.options()
@dataclass(frozen=True)
class EdgeAttribution(base.EngineBase):
    method: str = "eap_ig_inputs"  # one of METHODS (module docstring)
    steps: int = 5  # integration points of the IG methods (EAP uses one point, the base run)
    quadrature: Optional[str] = None  # where on [0, 1] the IG points lie; None: the convention's
    direction: Optional[str] = None  # "denoising" or "noising"; None: the convention's
    convention: str = "library"  # "library" (denoising, midpoint points) or "mib" (the reference code's numbers)
    memory_mb: float = 1024.0  # budget for one gradient pass; the batch is split into chunks to fit
    progress: bool = True  # a progress bar over gradient passes on large models (kit.progress); not in results
    positions: Optional[str] = None  # None: plain edges; "tokens" or "spans": each edge's scores per position too

    name = "edge_attribution"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidOptionError(f"method={self.method!r}; expected one of {METHODS}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise InvalidOptionError(f"steps={self.steps!r}; expected an integer number of IG points >= 1")
        if self.convention not in CONVENTIONS:
            raise InvalidOptionError(f"convention={self.convention!r}; expected one of {CONVENTIONS}")
        if self.quadrature is not None and self.quadrature not in QUADRATURES:
            raise InvalidOptionError(f"quadrature={self.quadrature!r}; expected one of {QUADRATURES}")
        if self.direction is not None:
            kit.check_direction(self.direction)
        if self.convention == "mib":
            wanted = {"direction": "noising", "quadrature": MIB_QUADRATURE.get(self.method)}
            for option, value in wanted.items():
                given = getattr(self, option)
                if given is not None and given != value:
                    raise InvalidOptionError(f"{option}={given!r} with convention='mib'; the reference code's "
                                             f"{self.method} uses {option}={value!r} (leave it None)")
        kit.check_memory(self.memory_mb)
        positions.check_kind(self.positions)

    @property
    def run_direction(self) -> str:
        """The direction measured: the given one, else the convention's (library: denoising; mib: noising)."""
        return self.direction or ("noising" if self.convention == "mib" else "denoising")

    @property
    def points(self) -> str:
        """The quadrature used: the given one, else the convention's (library: midpoint; mib: the reference's)."""
        return self.quadrature or (MIB_QUADRATURE.get(self.method) if self.convention == "mib" else None) or "midpoint"

    @property
    def score_meaning(self) -> str:
        return (f"edge writer->reader (effect 'direct'): the gradient estimate ({self.method}, {self.convention} "
                f"convention) of the metric change when only that path is patched ({self.run_direction}), "
                "Δa_writer · dM/d(reader input); a head receiver's score is the sum of its q/k/v inputs' "
                "(score_q/score_k/score_v); node: the estimate for the node's whole output (the sum of its outgoing "
                "edges, comparable to activation patching); all normalised by m_clean - m_corrupted"
                + ("" if self.positions is None else f"; per position ({self.positions}: meta['positions']) in "
                   "positions (positions_q/_k/_v), whose sum is the score"))

    def alphas(self) -> list[float]:
        """Where the gradient is taken, from the base run (0) to the source run (1)."""
        if self.method == "eap":
            return [0.0]
        k = range(self.steps)
        return {"midpoint": [(i + 0.5) / self.steps for i in k], "base_end": [i / self.steps for i in k],
                "source_end": [(i + 1) / self.steps for i in k]}[self.points]

    def measure(self, model: Any, task: Any, batch: PromptBatch) -> Measurement[Tensor]:
        """Unnormalised batch-mean ``Δa_u · ḡ_v`` for every (writer, reader) of `Layout` (zero where no edge
        exists), float64, for a batch you built yourself: ``[writer, reader]``, or with `positions`
        ``[writer, reader, label]`` (the labels: `position_labels` of the measured batch)."""
        with base.session(model, grad=True):
            runs = kit.Runs.prepare(model, task, batch, self.run_direction, writer_sites(model))
            batch, layout = runs.batch, Layout.of(model)
            index, labels = positions.labelled(batch, self.positions, task) if self.positions else (None, ())
            per_label = (len(labels),) if self.positions else ()
            sums = torch.zeros(len(layout.writers), len(layout.readers), *per_label, dtype=torch.float64)
            parts = kit.chunks(batch.size, _prompts_per_pass(model, layout, batch, self.memory_mb,
                                                             positional=bool(self.positions)))
            passes = sum(len(self.alphas()) if path.interpolates else 1 for path in self._paths(runs, layout))
            with kit.progress(model, len(parts) * passes, f"{self.name}: gradient passes", self.progress) as bar:
                for chunk in parts:
                    grouping = None if index is None else positions.Grouping.of(index[chunk.start:chunk.stop],
                                                                                len(labels))
                    sums += self._chunk(model, task, runs.rows(chunk), layout, bar, grouping)
            mask = layout.mask().view(*layout.mask().shape, *[1] * len(per_label))
            return runs.measured(sums / batch.size * mask)

    def position_labels(self, batch: PromptBatch) -> tuple[str, ...]:
        """The labels of `measure`'s last axis for a measured batch (with `positions`; empty without)."""
        return positions.labelled(batch, self.positions)[1] if self.positions else ()

    def graph(self, model: Any, measurement: Measurement[Tensor]) -> HeadGraph:
        normalised = measurement.baseline().normalise(measurement.values, self.run_direction)
        labels = self.position_labels(measurement.batch)
        graph = edge_graph(Layout.of(model), normalised, labels)
        if self.positions:
            graph.meta["positions"] = positions.graph_record(self.positions, labels)
        graph.meta.update(method=self.method, steps=len(self.alphas()), alphas=self.alphas(),
                          direction=self.run_direction, quadrature=self.points, convention=self.convention)
        graph.meta["unscored_edges"] = coverage.unscored(model, graph)  # none: the layout is the whole edge graph
        return graph

    def _chunk(self, model: Any, task: Any, runs: kit.Runs, layout: Layout, bar: Any,
               grouping: Optional[positions.Grouping] = None) -> Tensor:
        """Summed ``Δa_u · ḡ_v`` over the prompts of `runs`: ``[writer, reader]``, or per label of `grouping`
        ``[writer, reader, label]``: each label's products before the sum over positions."""
        batch = runs.batch
        deltas = writer_deltas(model, runs)
        # [writer, batch * pos * d_model]; per label: [writer, tokens in label order, d_model]
        deltas = deltas.flatten(1) if grouping is None else grouping.sorted(deltas)
        alphas = self.alphas()
        per_label = () if grouping is None else (grouping.labels,)
        out = torch.zeros(len(layout.writers), len(layout.readers), *per_label, dtype=torch.float64)
        embed, resid_change = runs.base[EMBED_SITE], runs.change(EMBED_SITE)
        paths = self._paths(runs, layout)
        every_run = sum(path.runs for path in paths) * len(alphas)
        # the score is linear in the gradient: sum the gradients over the IG points, then one product per block
        for path in paths:
            total: Optional[list[Tensor]] = None
            for alpha in alphas if path.interpolates else alphas[:1]:
                residual = embed + alpha * resid_change if path.input else embed
                swap = {key: base_value + alpha * change for key, (base_value, change) in path.replace.items()}
                grads = reader_gradients(model, task, batch, residual, swap)
                bar.update(1)
                total = grads if total is None else [t + g for t, g in zip(total, grads)]
            # a path that interpolates nothing has the same gradient at every point
            runs_here = path.runs * (1 if path.interpolates else len(alphas))
            divisor = every_run if self.method == "eap_ig_activations" else len(alphas)
            column = 0
            for block, (size, heard) in zip(total, layout.blocks()):
                hear = slice(path.rows.start or 0, min(heard, len(deltas) if path.rows.stop is None else path.rows.stop))
                if hear.start < hear.stop:  # slices: views, not copies
                    block = block.to(deltas.device)  # a reader's gradient: on its layer's device
                    product = (deltas[hear] @ block.flatten(1).T if grouping is None
                               else grouping.products(deltas[hear], grouping.sorted(block)))
                    scaled = product.double().cpu() / divisor
                    out[hear, column:column + size] += scaled if runs_here == 1 else scaled * runs_here
                column += size
        return out

    def _paths(self, runs: kit.Runs, layout: Layout) -> list["_Path"]:
        """The interpolation paths of the method: which writer rows each scores, what it interpolates, and how many
        runs it stands for."""
        every = slice(None)
        if self.method in ("eap", "eap_ig_inputs"):
            return [_Path(every, {}, input=self.method == "eap_ig_inputs")]
        stages = activation_stages(runs, layout)
        if self.method == "eap_ig_stagewise":
            return [_Path(rows, replace, input=not replace) for rows, replace in stages]
        paths = [_Path(every, replace, input=not replace) for _, replace in stages]
        if self.convention == "mib" and not layout.has_mlp:
            # the reference keeps an MLP node per layer in attention-only models: its runs interpolate nothing
            paths.append(_Path(every, {}, input=False, runs=layout.n_layers))
        return paths


@dataclass(frozen=True)
class _Path:
    rows: slice  # writer rows scored by this path's runs
    replace: dict  # {(layer, site kind): (base value, change)} interpolated
    input: bool  # the embedding interpolated
    runs: int = 1  # how many of the method's interpolation paths this one stands for

    @property
    def interpolates(self) -> bool:
        return self.input or bool(self.replace)


EMBED_SITE = (0, "resid_pre")  # what the embedding writes: the residual stream entering block 0


def writer_sites(model: Any) -> list[kit.Site]:
    """The activations writers' outputs are read from: the embedding, each layer's z and MLP output."""
    kinds = ("z",) if model.cfg.attn_only else ("z", "mlp_out")
    return [EMBED_SITE, *kit.every_layer(model, *kinds)]


def writer_deltas(model: Any, runs: kit.Runs) -> Float[Tensor, "writer batch pos d_model"]:
    """Each writer's output change (source - base) in `Layout.writers` order; a head's is ``Δz W_O``."""
    resid_change = runs.change(EMBED_SITE)
    out = [resid_change[None]]
    for layer in range(model.cfg.n_layers):
        change = runs.change((layer, "z"))
        w_o = kit.output_weights(model, layer).detach().to(change.device, change.dtype)
        out.append(einops.einsum(change, w_o, "b p h e, h e d -> h b p d"))
        if not model.cfg.attn_only:
            out.append(runs.change((layer, "mlp_out"))[None])
    return torch.cat([t.to(resid_change.device) for t in out])  # each layer's on its own device


def activation_stages(runs: kit.Runs, layout: Layout) -> list[tuple[slice, dict[kit.Site, tuple[Tensor, Tensor]]]]:
    """For `eap_ig_activations` and `eap_ig_stagewise`: (writer rows, {(layer, site kind): (base value, change)})
    per stage: the embedding (nothing replaced: the input is interpolated), each layer's heads, each MLP."""
    out: list[tuple[slice, dict]] = [(slice(0, 1), {})]
    row = 1
    for layer in range(layout.n_layers):
        for kind, size in (("z", layout.n_heads), ("mlp_out", 1)):
            if kind == "mlp_out" and not layout.has_mlp:
                continue
            out.append((slice(row, row + size), {(layer, kind): (runs.base[layer, kind], runs.change((layer, kind)))}))
            row += size
    return out


def reader_gradients(model: Any, task: Any, batch: PromptBatch, residual: Float[Tensor, "batch pos d_model"],
                     replace: Optional[dict[tuple[int, str], Tensor]] = None) -> list[Tensor]:
    """The gradient of the summed metric with respect to each reader's input, in `Layout.readers` order
    (blocks ``[readers, batch, pos, d_model]``: per layer its heads' q, k, v, then its MLP; the logits), on
    the run that starts from `residual` (entering block 0) with the activations in `replace` (keyed by
    ``(layer, site kind)``) substituted. Head readers: the block input's gradient through that head's q
    (k, v) alone; MLP readers: through the MLP alone; logits: the gradient entering the final norm."""
    cfg = model.cfg
    replace = replace or {}
    grouped = _group_size(model) > 1
    kinds = ["resid_pre", *INPUTS] + (["z"] if grouped else []) + ([] if cfg.attn_only else ["resid_mid"])
    sites = {(layer, kind): hooks.site(model, layer, kind) for layer in range(cfg.n_layers) for kind in kinds}
    for key in replace:
        sites.setdefault(key, hooks.site(model, *key))
    sites["final"] = hooks.site(model, cfg.n_layers - 1, "resid_post")
    captured: dict[Any, Tensor] = {}

    def capturing(key: Any):
        def hook(tensor: Tensor, hook: Any) -> Tensor:
            # A clone: the bridge hands hooks a view it does not itself use downstream; the returned tensor
            # replaces it, so gradients taken at the clone are the model's.
            new = replace[key].to(tensor.device, tensor.dtype).detach().requires_grad_() if key in replace else tensor.clone()
            captured[key] = new
            return new
        return hook

    with hooks.attached(model, [(name, capturing(key)) for key, name in sites.items()]):
        logits = forward.run_from(model, residual.detach().requires_grad_(), 0, batch.position)
    values = task.metric(logits, batch)
    if values.shape != (batch.size,):
        raise MetricError(f"{task.name}.metric returned shape {tuple(values.shape)}; expected ({batch.size},)")
    if not values.requires_grad:
        raise MetricError(f"{task.name}.metric returned a tensor with no grad (requires_grad=False): edge attribution "
                          "needs a metric differentiable in the logits (no argmax, .item(), detach or no_grad)")
    # TL4's hook_resid_mid is ln2's input, read by the MLP branch alone: its gradient is the MLP reader's
    outputs = [captured[(layer, kind)] for layer in range(cfg.n_layers) for kind in kinds
               if kind in ("q", "k", "v", "z", "resid_mid")]
    grads = dict(zip([id(t) for t in outputs] + [id(captured["final"])],
                     _grad(values.sum(), outputs + [captured["final"]])))
    out = []
    for layer in range(cfg.n_layers):
        at = lambda kind: captured[(layer, kind)]  # noqa: B023,E731
        per_head = _per_head_gradients(model, at, lambda kind: grads[id(at(kind))])
        attn = model.blocks[layer].attn
        with forward.readable_weights(attn):
            weights = {"q": attn.W_Q.detach(), "k": attn.W_K.detach(), "v": attn.W_V.detach()}  # [(kv) head, d_model, d_head]
        # each head's input gradient at ln1's output: its q (k, v) gradient through its own W_Q (W_K, W_V)
        at_norm = torch.cat([einops.einsum(per_head[i], _per_query_head(model, weights[i]).to(per_head[i]),
                                           "b p h e, h d e -> h b p d") for i in INPUTS])
        out.append(_norm_pullback(model.blocks[layer].ln1, at("resid_pre"), at_norm))
        if not cfg.attn_only:
            out.append(grads[id(at("resid_mid"))][None])
    out.append(grads[id(captured["final"])][None])
    return out


def _per_head_gradients(model: Any, at: Any, grad_at: Any) -> dict[str, Tensor]:
    """The metric's gradient at ``hook_q``/``hook_k``/``hook_v`` as each query head alone reads them:
    ``[batch, pos, head, d_head]`` per input. With grouped-query attention the shared k/v gradient is split
    by pulling the gradient at ``hook_z``, masked to one position inside every group, back to k and v."""
    g = {i: grad_at(i) for i in INPUTS}
    group = _group_size(model)
    if group == 1:
        return g
    z, g_z = at("z"), grad_at("z")
    in_group = torch.arange(model.cfg.n_heads, device=g_z.device) % group
    masked = torch.stack([g_z * (in_group == i).to(g_z.dtype)[:, None] for i in range(group)])
    pulled = _grad(z, [at("k"), at("v")], masked, batched=True)  # each [group, batch, pos, kv, d_head]
    # query head kv * group + i reads kv head kv; its share came from mask i
    split = [einops.rearrange(t, "i b p kv e -> b p (kv i) e") for t in pulled]
    return {"q": g["q"], "k": split[0], "v": split[1]}


def _per_query_head(model: Any, weight: Tensor) -> Tensor:
    """A q/k/v weight ``[n_heads or n_kv_heads, d_model, d_head]`` with one row per query head."""
    return weight.repeat_interleave(model.cfg.n_heads // weight.shape[0], dim=0)


def _norm_pullback(norm: Any, x: Float[Tensor, "batch pos d_model"],
                   cotangents: Float[Tensor, "copies batch pos d_model"]) -> Float[Tensor, "copies batch pos d_model"]:
    """Vector-Jacobian products of `norm` at `x`, one per cotangent (the norm rerun on stacked copies of
    `x`: elementwise work, cheaper than batched backward passes through the q/k/v projections)."""
    copies = cotangents.shape[0]
    x = x.to(cotangents.device)  # the block's input may be captured before the block moves it to its device
    stacked = x.detach().expand(copies, *x.shape).reshape(-1, *x.shape[1:]).requires_grad_()
    with torch.enable_grad():
        out = norm(stacked)
    if not out.requires_grad:  # an identity norm
        return cotangents
    return torch.autograd.grad(out, stacked, grad_outputs=cotangents.reshape(out.shape))[0].view(cotangents.shape)


def _grad(outputs: Any, inputs: Any, grad_outputs: Any = None, batched: bool = False) -> list[Tensor]:
    """``torch.autograd.grad`` keeping the graph, with zeros for inputs the outputs do not reach."""
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    got = torch.autograd.grad(outputs, inputs, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True,
                              is_grads_batched=batched)
    if batched:
        count = (grad_outputs[0] if isinstance(grad_outputs, (list, tuple)) else grad_outputs).shape[0]
        return [torch.zeros((count,) + x.shape, dtype=x.dtype, device=x.device) if g is None else g
                for g, x in zip(got, inputs)]
    return [torch.zeros_like(x) if g is None else g for g, x in zip(got, inputs)]


def _group_size(model: Any) -> int:
    """Query heads per KV head (1 without grouped-query attention)."""
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    return model.cfg.n_heads // n_kv


def _prompts_per_pass(model: Any, layout: Layout, batch: PromptBatch, memory_mb: float,
                      positional: bool = False) -> int:
    """Prompts per gradient pass within `memory_mb`: writer deltas (twice per position: in label order too), one
    pass's reader gradients and batched cotangents, and the autograd graph of the forward pass (a rough per-prompt
    size)."""
    cfg = model.cfg
    n_pos, d = batch.clean.shape[1], cfg.d_model
    d_mlp = 0 if cfg.attn_only else (cfg.d_mlp or 4 * d)
    writers = (2 if positional else 1) * len(layout.writers)
    floats = n_pos * (d * (writers + 2 * len(layout.readers) + 9 * cfg.n_heads)
                      + cfg.n_layers * (24 * d + 6 * cfg.n_heads * n_pos + 6 * d_mlp)) + 4 * cfg.d_vocab
    itemsize = torch.finfo(cfg.dtype).bits // 8 if isinstance(getattr(cfg, "dtype", None), torch.dtype) else 4
    return max(1, int(memory_mb * 2**20 // (itemsize * floats)))


def edge_graph(layout: Layout, scores: Tensor, labels: tuple[str, ...] = ()) -> HeadGraph:
    """Every head and MLP a node scored by the sum of its outgoing edges; every edge of `layout` with its
    score; a head receiver's edge sums its q, k and v inputs and keeps each in score_q/score_k/score_v. Positional
    scores (``[writer, reader, label]``, `labels` their names) are kept per edge as ``positions`` ({label: score};
    a head receiver's also per input, ``positions_q/_k/_v``), the score being their sum."""
    graph = HeadGraph(n_layers=layout.n_layers, n_heads=layout.n_heads)
    scores = scores * layout.mask().view(*layout.mask().shape, *[1] * (scores.ndim - 2))
    values = scores.tolist()
    writers, readers = layout.writers, layout.readers
    for w, (writer, _) in enumerate(writers):
        total = float(scores[w].sum())
        if writer == EMBED:
            continue
        graph.add_node(writer, total)
    heads: dict[str, dict[str, int]] = {}
    others: list[tuple[str, int]] = []
    for r, (node, which, _) in enumerate(readers):
        if which:
            heads.setdefault(node, {})[which] = r
        else:
            others.append((node, r))
    stage = {name: s for name, s in writers}
    reader_stage = {node: s for node, _, s in readers}
    nodes = {name: parse_node(name) for name in [*stage, *reader_stage]}  # parsed once: ~10^5 edges on SmolLM2
    for w, (writer, _) in enumerate(writers):
        row = values[w]
        for node, columns in heads.items():
            if stage[writer] < reader_stage[node]:
                per = {f"score_{i}": _scored(row[c], labels, f"_{i}") for i, c in columns.items()}
                extra = {k: v for parts in per.values() for k, v in parts[1].items()}
                if labels:  # per position, the sum over q, k and v
                    extra["positions"] = dict(zip(labels, map(sum, zip(*(row[c] for c in columns.values())))))
                graph.add_edge(nodes[writer], nodes[node], sum(score for score, _ in per.values()), effect="direct",
                               inputs="+".join(INPUTS), **{k: score for k, (score, _) in per.items()}, **extra)
        for node, c in others:
            if stage[writer] < reader_stage[node]:
                score, extra = _scored(row[c], labels, "")
                graph.add_edge(nodes[writer], nodes[node], score, effect="direct", **extra)
    return graph


def _scored(value: Any, labels: tuple[str, ...], suffix: str) -> tuple[float, dict[str, Any]]:
    """An edge's score and, for positional values (a list per label), ``{"positions" + suffix: {label: score}}``
    with the score their sum (in label order, so summing them again gives it exactly)."""
    if not labels:
        return value, {}
    return sum(value), {f"positions{suffix}": dict(zip(labels, value))}
