"""Random deterministic finite automata and the sequences drawn from them (Akyürek et al. 2024).

Tokens: letters ``0..LETTERS-1``, the string separator `SEP` and padding `PAD` (vocabulary `VOCAB` = 20).
A random DFA (`random_dfa`): 4..12 states, an alphabet of 4..18 letters drawn without replacement, each state
1..3 outgoing edges with distinct letters and distinct targets, no self-loops, state 0 initial, every state
accepting. `DFA.minimised` merges equivalent states (Moore's partition refinement; a missing edge leads to an
implicit rejecting sink) and drops states unreachable from 0, numbering states in breadth-first order so that
isomorphic automata get the same transition table (`DFA.key`), the key `dfa_bank` de-duplicates on.

Since every state accepts and keeps at least one edge, the language is prefix-closed and never ends: a string
of any length is drawn by walking uniformly among the current state's edges. A sequence joins strings with
`SEP`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from collections.abc import Sequence
from typing import Optional

import networkx as nx

from circuits.errors import InvalidOptionError

LETTERS = 18
SEP = LETTERS  # the string separator "|"
PAD = LETTERS + 1
VOCAB = LETTERS + 2

Edges = tuple[tuple[int, int], ...]  # one state's (letter, target) pairs, sorted by letter


class RejectedStringError(InvalidOptionError):
    """A string that the automaton does not accept, passed where one of its strings is expected."""


@dataclass(frozen=True)
class DFA:
    """A partial DFA over letters: ``edges[state]`` holds the state's (letter, target) pairs; state 0 is
    initial and every state accepts. Build it with `DFA.build` (checked) or `random_dfa`."""

    edges: tuple[Edges, ...]

    @staticmethod
    def build(edges: Sequence[dict[int, int]] | Sequence[Sequence[tuple[int, int]]],
              vocabulary: int = LETTERS) -> "DFA":
        """A DFA from one ``{letter: target}`` (or (letter, target) list) per state, checked: at least one
        state and one edge, letters in ``[0, vocabulary)``, targets that exist, one edge per letter per state."""
        if len(edges) == 0:
            raise InvalidOptionError("a DFA needs at least one state; got an empty transition table")
        table = []
        for state, out in enumerate(edges):
            pairs = sorted(out.items() if isinstance(out, dict) else [tuple(p) for p in out])
            letters = [letter for letter, _ in pairs]
            if len(set(letters)) != len(letters):
                raise InvalidOptionError(f"state {state} has two edges on one letter: {pairs}; a DFA has one")
            for letter, target in pairs:
                if not 0 <= letter < vocabulary:
                    raise InvalidOptionError(f"state {state} has an edge on letter {letter}, outside the "
                                             f"alphabet [0, {vocabulary})")
                if not 0 <= target < len(edges):
                    raise InvalidOptionError(f"state {state} has an edge to state {target}; the DFA has "
                                             f"states 0..{len(edges) - 1}")
            table.append(tuple((int(a), int(b)) for a, b in pairs))
        if not any(table):
            raise InvalidOptionError(f"a DFA needs at least one edge; all {len(table)} states have none")
        return DFA(tuple(table))

    @property
    def n_states(self) -> int:
        return len(self.edges)

    @cached_property
    def _next(self) -> tuple[dict[int, int], ...]:
        return tuple(dict(out) for out in self.edges)

    @property
    def alphabet(self) -> tuple[int, ...]:
        """The letters on some edge, sorted."""
        return tuple(sorted({letter for out in self.edges for letter, _ in out}))

    @property
    def key(self) -> tuple[Edges, ...]:
        """The transition table: equal for equal (minimised, hence canonically numbered) automata."""
        return self.edges

    def allowed(self, state: int) -> tuple[int, ...]:
        """The letters that may follow in `state`."""
        return tuple(letter for letter, _ in self.edges[state])

    def step(self, state: int, letter: int) -> Optional[int]:
        """The state after reading `letter` in `state`; None if the DFA rejects it."""
        return self._next[state].get(letter)

    def run(self, string: Sequence[int], state: int = 0) -> Optional[int]:
        """The state after reading `string` from `state`; None if the string is rejected."""
        for letter in string:
            state = self._next[state].get(letter)
            if state is None:
                return None
        return state

    def accepts(self, string: Sequence[int]) -> bool:
        return self.run(string) is not None

    def check_accepts(self, string: Sequence[int]) -> None:
        """Raise `RejectedStringError` naming the first letter the DFA cannot read."""
        state = 0
        for i, letter in enumerate(string):
            following = self._next[state].get(letter)
            if following is None:
                raise RejectedStringError(
                    f"string {list(string)} is rejected: letter {letter} at index {i} cannot follow state "
                    f"{state}, which allows only {list(self.allowed(state))}")
            state = following

    def sample(self, length: int, rng: random.Random) -> list[int]:
        """A string of `length` letters: a walk from state 0, uniform among each state's edges."""
        state, string = 0, []
        for _ in range(length):
            letter, state = rng.choice(self.edges[state])
            string.append(letter)
        return string

    def graph(self) -> nx.MultiDiGraph:
        """The automaton as a networkx graph (nodes: states; edges carry ``letter``)."""
        g = nx.MultiDiGraph()
        g.add_nodes_from(range(self.n_states))
        for state, out in enumerate(self.edges):
            for letter, target in out:
                g.add_edge(state, target, letter=letter)
        return g

    def minimised(self) -> "DFA":
        """The minimal equivalent DFA (unreachable states dropped, states numbered breadth-first from 0)."""
        reachable = sorted(nx.descendants(self.graph(), 0) | {0})
        alphabet = self.alphabet
        block = {s: 0 for s in reachable}  # every state accepts: one block to start; -1 is the sink
        while True:
            signature = {s: (block[s],) + tuple(block[self._next[s][a]] if a in self._next[s] else -1
                                                 for a in alphabet) for s in reachable}
            names: dict[tuple[int, ...], int] = {}
            refined = {s: names.setdefault(signature[s], len(names)) for s in reachable}
            if len(names) == len(set(block.values())):
                break
            block = refined
        # one representative per block; number blocks in breadth-first order (letters ascending)
        representative = {}
        for s in reachable:
            representative.setdefault(block[s], s)
        order, queue = {block[0]: 0}, [block[0]]
        while queue:
            b = queue.pop(0)
            for _, target in self.edges[representative[b]]:
                if block[target] not in order:
                    order[block[target]] = len(order)
                    queue.append(block[target])
        edges: list[Edges] = [()] * len(order)
        for b, number in order.items():
            edges[number] = tuple((letter, order[block[t]]) for letter, t in self.edges[representative[b]])
        return DFA(tuple(edges))

    def has_self_loop(self) -> bool:
        return any(target == state for state, out in enumerate(self.edges) for _, target in out)


def random_dfa(rng: random.Random, states: tuple[int, int] = (4, 12), alphabet: tuple[int, int] = (4, 18),
               max_edges: int = 3, letters: int = LETTERS) -> DFA:
    """An unminimised random DFA (the paper's generator; see the module docstring)."""
    if alphabet[1] > letters:
        raise InvalidOptionError(f"an alphabet of up to {alphabet[1]} letters does not fit a vocabulary of "
                                 f"{letters} letters")
    if not 2 <= states[0] <= states[1] or not 1 <= alphabet[0] <= alphabet[1] or max_edges < 1:
        raise InvalidOptionError(f"need 2 <= states {states}, 1 <= alphabet {alphabet} (low <= high) and "
                                 f"max_edges >= 1 (got {max_edges})")
    n = rng.randint(*states)
    letters_used = rng.sample(range(letters), rng.randint(*alphabet))
    edges = []
    for state in range(n):
        k = rng.randint(1, min(max_edges, len(letters_used), n - 1))
        targets = rng.sample([t for t in range(n) if t != state], k)
        edges.append(dict(zip(rng.sample(letters_used, k), targets)))
    return DFA.build(edges, letters)


def dfa_bank(count: int, seed: int, exclude: frozenset = frozenset(), **generator: object) -> list[DFA]:
    """`count` distinct minimised DFAs (by transition table), none in `exclude` (a set of keys), none with a
    self-loop (minimisation can merge a state with its successor; such automata are drawn again)."""
    rng, seen, bank = random.Random(seed), set(exclude), []
    attempts = 0
    while len(bank) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise InvalidOptionError(f"found only {len(bank)} distinct DFAs of {count} requested")
        dfa = random_dfa(rng, **generator).minimised()  # type: ignore[arg-type]
        if dfa.key in seen or dfa.has_self_loop():
            continue
        seen.add(dfa.key)
        bank.append(dfa)
    return bank


@dataclass(frozen=True)
class DFASequence:
    """One sequence: tokens (letters and separators, unpadded) and the DFA state before each next token."""

    tokens: list[int]
    states: list[int]  # states[i]: the state after reading tokens[..i] (a separator resets to 0)


def sequence(dfa: DFA, rng: random.Random, strings: tuple[int, int] = (10, 19),
             length: tuple[int, int] = (1, 49), max_tokens: Optional[int] = None) -> DFASequence:
    """`strings` strings of `length` letters (both uniform, inclusive) joined by SEP, cut at `max_tokens`."""
    tokens: list[int] = []
    for i in range(rng.randint(*strings)):
        if i:
            tokens.append(SEP)
        tokens += dfa.sample(rng.randint(*length), rng)
    tokens = tokens[:max_tokens]
    return DFASequence(tokens, states_along(dfa, tokens))


def states_along(dfa: DFA, tokens: Sequence[int]) -> list[int]:
    """The state after each token of a sequence (SEP resets to state 0); `RejectedStringError` if a string
    in it is rejected, `InvalidOptionError` for a token that is neither a letter nor SEP."""
    states, state, start = [], 0, 0
    for i, token in enumerate(tokens):
        if token == SEP:
            state, start = 0, i + 1
        elif 0 <= token < LETTERS:
            following = dfa.step(state, token)
            if following is None:
                dfa.check_accepts(list(tokens[start:i + 1]))  # raises, naming the string and letter
            state = following
        else:
            raise InvalidOptionError(f"token {token} at index {i} is neither a letter [0, {LETTERS}) nor the "
                                     f"separator {SEP}")
        states.append(state)
    return states
