"""Models whose circuit is known by construction (MIB's InterpBench column): hand-weighted induction models.

The prompts are the induction task's (`tasks.induction.Induction`, small: 16 tokens, 16 positions, segments of 3 to
6 tokens); the read-out at x_k in the repeat must predict x_{k+1}. The models are set by hand, no training, no
normalisation, no biases, so that each part does one thing, in its own slice of the residual stream:

``TOK`` token one-hot (embedding) · ``POS`` position one-hot (positional embedding) · ``PREV`` the previous token ·
``OUT`` the induction head's copy · ``ANS`` what the unembedding reads · ``JUNK`` what the decoys write.

- L0H0, the previous-token head: query and key read ``POS`` (position i attends to i - 1), value reads ``TOK``,
  writes ``PREV``.
- L1H0, the induction head: query reads ``TOK``, key reads ``PREV`` (position j matches when the token before j is
  the current token), value reads ``TOK``; writes ``ANS`` (``induction_heads``) or ``OUT`` (``induction_mlp``, where
  MLP M1 copies ``OUT`` to ``ANS`` through GELU(x) - GELU(-x) = x).
- Decoys, active on the prompts but read by nothing that reaches the logits: L0H1 (attends to equal tokens), L0H2
  (uniform), L1H1 (query and key read ``JUNK``), L1H2 (value reads ``PREV``: the circuit's own sender, a non-circuit
  edge), and MLP units that read ``TOK`` and ``JUNK`` and write ``JUNK``. The unembedding reads ``ANS`` alone, and
  nothing reads ``JUNK`` into the circuit, so every decoy edge has no effect on the logits, exactly.

The known circuit (`KnownCircuit.edges`) is the set of edges that carry the clean - corrupted difference to the
logits: the embedding's (resampled) first occurrence into L0H0's values and L1H0's values, L0H0 into L1H0's key,
and L1H0 into the read-out (through M1 in ``induction_mlp``). Edges the mechanism uses but that carry the same
values on clean and corrupted prompts (positions into L0H0's query and key, the current token into L1H0's query)
are not in it: no counterfactual method can see them with these prompts, by design of the prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from circuits import models
from circuits.errors import UnknownNameError
from circuits.nodes import EMBED, LOGITS, Edge
from tasks.induction import Induction

VOCAB, CONTEXT, D_HEAD = 16, 16, 16
ATTENTION_GAP = 12.0  # attention score of a match over a non-match (after the 1/sqrt(d_head) scale)
LOGIT_SCALE = 4.0
JUNK = 8
SLICES = {name: slice(i * VOCAB, (i + 1) * VOCAB) for i, name in enumerate(("TOK", "POS", "PREV", "OUT", "ANS"))}
SLICES["JUNK"] = slice(5 * VOCAB, 5 * VOCAB + JUNK)
D_MODEL = 5 * VOCAB + JUNK
DECOY_UNITS = 16
D_MLP = 2 * VOCAB + DECOY_UNITS  # M1's copy units (+OUT, -OUT), then the decoy units


@dataclass(frozen=True)
class KnownCircuit(Induction):
    """A hand-weighted induction model (`default_model`), its prompts (the induction task's) and its circuit
    (`edges`). ``variant``: ``"induction_heads"`` (L1H0 writes the answer) or ``"induction_mlp"`` (M1 carries it)."""

    name: str = "induction_heads"
    variant: str = "induction_heads"
    seq_len: int = CONTEXT
    min_length: int = 3
    max_length: int = 6
    d_vocab: int = VOCAB
    model_config: models.ToyConfig = field(default_factory=lambda: config("induction_heads"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise UnknownNameError("known-circuit model", self.variant, list(VARIANTS))

    @property
    def edges(self) -> frozenset[Edge]:
        """The known circuit, a set of `Edge`s."""
        core = {Edge(EMBED, "L0H0", "v"), Edge("L0H0", "L1H0", "k"), Edge(EMBED, "L1H0", "v")}
        if self.variant == "induction_mlp":
            return frozenset(core | {Edge("L1H0", "M1"), Edge("M1", LOGITS)})
        return frozenset(core | {Edge("L1H0", LOGITS)})

    def default_model(self) -> Any:
        """The hand-weighted model (built in milliseconds, the same every time)."""
        return hand_weighted(self.variant)


VARIANTS = ("induction_heads", "induction_mlp")


def config(variant: str) -> models.ToyConfig:
    return models.ToyConfig(n_layers=2, n_heads=3, d_model=D_MODEL, d_head=D_HEAD, d_vocab=VOCAB, n_ctx=CONTEXT,
                            attn_only=False, d_mlp=D_MLP, normalization=None, bias=False, name=f"known_{variant}")


def known(variant: str) -> KnownCircuit:
    """The known-circuit task of one variant (`VARIANTS`)."""
    if variant not in VARIANTS:
        raise UnknownNameError("known-circuit model", variant, list(VARIANTS))
    return KnownCircuit(name=variant, variant=variant, model_config=config(variant))


def hand_weighted(variant: str) -> Any:
    """The model of `variant`, as a TransformerBridge; decoy weights are seeded, the circuit's are exact."""
    cfg = config(variant)
    module = models.new_native(cfg)
    g = torch.Generator().manual_seed(0)
    tok, pos, prev, out, ans, junk = (SLICES[k] for k in ("TOK", "POS", "PREV", "OUT", "ANS", "JUNK"))
    eye = torch.eye(VOCAB)
    strong = ATTENTION_GAP * D_HEAD ** 0.5  # query entries: the score is q.k / sqrt(d_head)

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / shape[-1] ** 0.5

    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        module.tok_embed.weight[:, tok] = eye
        module.pos.weight[:, pos] = torch.eye(CONTEXT)
        module.head.weight[:, ans] = LOGIT_SCALE * eye
        layer0, layer1 = (module.layers[i].attn for i in (0, 1))
        heads = lambda i: slice(i * D_HEAD, (i + 1) * D_HEAD)  # noqa: E731
        # L0H0: previous token. Query i reads position i, key j reads position j as i = j + 1.
        layer0.q.weight[heads(0), pos] = strong * torch.eye(CONTEXT)
        layer0.k.weight[heads(0), pos] = torch.eye(CONTEXT).roll(1, dims=0)
        layer0.v.weight[heads(0), tok] = eye
        layer0.o.weight[prev, heads(0)] = eye
        # L0H1: attends to equal tokens; L0H2: uniform. Both write JUNK.
        layer0.q.weight[heads(1), tok] = strong / 2 * eye
        layer0.k.weight[heads(1), tok] = eye
        for h in (1, 2):
            layer0.v.weight[heads(h), tok] = eye
            layer0.o.weight[junk, heads(h)] = random(JUNK, D_HEAD)
        # L1H0: induction. Query reads the token, key the previous token, value the token.
        layer1.q.weight[heads(0), tok] = strong * eye
        layer1.k.weight[heads(0), prev] = eye
        layer1.v.weight[heads(0), tok] = eye
        layer1.o.weight[ans if variant == "induction_heads" else out, heads(0)] = eye
        # L1H1: query and key read JUNK; L1H2: equal tokens, value reads PREV. Both write JUNK.
        layer1.q.weight[heads(1), junk] = random(D_HEAD, JUNK) * 4
        layer1.k.weight[heads(1), junk] = random(D_HEAD, JUNK) * 4
        layer1.v.weight[heads(1), tok] = eye
        layer1.q.weight[heads(2), tok] = strong / 2 * eye
        layer1.k.weight[heads(2), tok] = eye
        layer1.v.weight[heads(2), prev] = eye
        for h in (1, 2):
            layer1.o.weight[junk, heads(h)] = random(JUNK, D_HEAD)
        # MLPs: decoy units read TOK and JUNK, write JUNK; in induction_mlp, M1 copies OUT to ANS.
        decoys = slice(2 * VOCAB, D_MLP)
        for mlp in (module.layers[0].mlp, module.layers[1].mlp):
            mlp.fc_in.weight[decoys, tok] = random(DECOY_UNITS, VOCAB) * 2
            mlp.fc_in.weight[decoys, junk] = random(DECOY_UNITS, JUNK) * 2
            mlp.fc_out.weight[junk, decoys] = random(JUNK, DECOY_UNITS)
        if variant == "induction_mlp":
            mlp = module.layers[1].mlp
            mlp.fc_in.weight[:VOCAB, out] = eye
            mlp.fc_in.weight[VOCAB:2 * VOCAB, out] = -eye
            mlp.fc_out.weight[ans, :VOCAB] = eye
            mlp.fc_out.weight[ans, VOCAB:2 * VOCAB] = -eye
    return models.wrap(module, cfg)
