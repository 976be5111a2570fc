"""Structural matching: pair source and target modules as trees, descending wherever modules pair.

Each model is a tree of modules (``backbone`` -> ``dark3`` -> ``1`` -> ``cv1`` -> ``conv``) whose nodes own
tensors. Matching runs in passes, each working on what the earlier ones left:

1. **Descent** from the roots (:class:`Matcher`). Two paired modules with equal signatures pair everything
   below by name. Otherwise their own tensors pair by name, named children by name, renamed named children by
   a unique signature, clear name evidence or a unique best partial partner, and numbered children
   (``nn.Sequential`` / ``nn.ModuleList``) are aligned (:mod:`.align`): identical modules first, then modules
   changed in place (by the share of relative tensor names and shapes they have in common), names breaking
   ties. Every pair is descended into, so a block that got a child loads everything else it holds.
2. **Moves** (:mod:`.moves`): a sub-tree left over on both sides with a signature unique in each model (a
   backbone under a new wrapper), and numbered containers whose children pair 1:1 by their tensor shapes
   (``encoder.layer.N`` -> ``layers.N``).
3. **Regrouping** (:mod:`.regroup`): inside two paired modules, leaf modules still unpaired pair by a unique
   signature, or by clear name evidence (``attention.query`` -> ``q_proj``).

A leaf module's tensors always come from one source module, and every pair records the kind of evidence
that made it. Where the evidence ties, the plan keeps names and records an :class:`Ambiguity` with the
renames that state the other reading. To add a pass: a function ``(matcher, source_root, target_root)``
that calls :meth:`Matcher.match` on the node pairs it finds, run from :func:`match_structure`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ..plan import ALIGN, SIGNATURE, Ambiguity
from ..specs import TensorSpec
from .align import align_modules, gaps
from .nodes import Node, build_tree
from .similarity import PARTIAL_MAX, pair_look_alikes, partial_weight


@dataclass
class StructureMatch:
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)   # target key -> (source key, strategy)
    ambiguities: list[Ambiguity] = field(default_factory=list)
    ambiguous_sources: set[str] = field(default_factory=set)
    # modules paired although they changed, whose counters went along: (counter keys, their other keys)
    counters_to_check: list[tuple[list[str], list[str]]] = field(default_factory=list)


class Matcher:
    def __init__(self, disabled: frozenset[str] = frozenset()) -> None:
        self.disabled = disabled                 # passes switched off (PlanOptions.disable)
        self.result = StructureMatch()
        self.paired: dict[str, Node] = {}        # target node path -> its source node
        self.paired_source: set[str] = set()     # source node paths paired with some target node
        self.node_pairs: list[tuple[Node, Node]] = []

    def match(self, source: Node, target: Node, strategy: str) -> None:
        self.note_pair(source, target)
        if source.sig == target.sig:
            self._pair_identical(source, target, strategy, source.path == target.path)
            return
        self._pair_own(source, target, strategy)
        s_named, t_named = source.named(), target.named()
        for name, child in t_named.items():
            if name in s_named:
                self.match(s_named[name], child, strategy)
        if "signature" not in self.disabled:
            self._pair_renamed({n: c for n, c in s_named.items() if n not in t_named},
                               {n: c for n, c in t_named.items() if n not in s_named}, target)
        s_seq, t_seq = source.numbered(), target.numbered()
        if s_seq and t_seq and "align" not in self.disabled:
            self._align(s_seq, t_seq, target, strategy)
        elif s_seq and t_seq:   # without alignment an index is just a name
            s_index = dict(s_seq)
            for index, child in t_seq:
                if index in s_index:
                    self.match(s_index[index], child, strategy)

    def note_pair(self, source: Node, target: Node) -> None:
        self.paired[target.path] = source
        self.paired_source.add(source.path)
        self.node_pairs.append((source, target))

    def match_leaf(self, source: Node, target: Node, strategy: str) -> None:
        """A leaf module's own tensors, by name (its children are not part of the pair)."""
        self.note_pair(source, target)
        self._pair_own(source, target, strategy)

    def _pair_own(self, source: Node, target: Node, strategy: str) -> None:
        """Own tensors by name (a shape mismatch too: it may be resized), counters with their module (the
        planner takes them back where none of the module's other tensors loads)."""
        own = source.tensors
        for leaf in target.tensors:
            if leaf in own:
                self.result.pairs[target.key(leaf)] = (source.key(leaf), strategy)
        counters = [target.key(leaf) for leaf in target.counters if leaf in source.counters]
        if counters and target.shapes:
            self.result.counters_to_check.append((counters, [target.key(leaf) for leaf in target.shapes]))

    def _pair_identical(self, source: Node, target: Node, strategy: str, same_path: bool) -> None:
        self.note_pair(source, target)   # the nodes below pair too, but no later pass needs to know
        self._match_identical(source, target, strategy, same_path)

    def _match_identical(self, source: Node, target: Node, strategy: str, same_path: bool) -> None:
        """Equal signatures: the same relative names all the way down, so pair by name without searching."""
        pairs = self.result.pairs
        for leaf in target.shapes:
            key = target.key(leaf)
            pairs[key] = (key if same_path else source.key(leaf), strategy)
        for leaf in target.counters:  # bookkeeping counters are not in the signature
            if leaf in source.counters:
                pairs[target.key(leaf)] = (source.key(leaf), strategy)
        for name, child in target.children.items():
            other = source.children.get(name)
            if other is not None:
                self._match_identical(other, child, strategy, same_path)

    def _align(self, s_seq: list[tuple[int, Node]], t_seq: list[tuple[int, Node]], parent: Node, strategy: str) -> None:
        s_nodes, t_nodes = [node for _, node in s_seq], [node for _, node in t_seq]
        cache: dict[tuple[int, int], int] = {}

        def partial(i: int, j: int) -> int:
            key = (s_nodes[i].sig, t_nodes[j].sig)
            if key not in cache:
                cache[key] = partial_weight(s_nodes[i], t_nodes[j])
            return cache[key]

        a_names, b_names = [i for i, _ in s_seq], [j for j, _ in t_seq]
        chosen, other = align_modules([n.sig for n in s_nodes], [n.sig for n in t_nodes], partial, PARTIAL_MAX,
                                      a_names, b_names)
        for i, j in chosen + lone_gaps(chosen, len(s_nodes), len(t_nodes)):
            self.match(s_nodes[i], t_nodes[j], strategy if a_names[i] == b_names[j] else ALIGN)
        if other is not None:
            self._record_ambiguity(parent, s_seq, t_seq, chosen, other)

    def _record_ambiguity(self, parent: Node, s_seq: list[tuple[int, Node]], t_seq: list[tuple[int, Node]],
                          chosen: list[tuple[int, int]], other: list[tuple[int, int]]) -> None:
        """Two readings explain the container equally well: keep ``chosen`` (it keeps more names), say what
        ``other`` is."""
        def names(seq: list[tuple[int, Node]], indices: set[int]) -> str:
            return ", ".join(parent.child_path(str(seq[k][0])) for k in sorted(indices)) or "none"

        new_chosen = set(range(len(t_seq))) - {j for _, j in chosen}
        new_other = set(range(len(t_seq))) - {j for _, j in other}
        unused_chosen = set(range(len(s_seq))) - {i for i, _ in chosen}
        unused_other = set(range(len(s_seq))) - {i for i, _ in other}
        renames = tuple((parent.child_path(str(s_seq[i][0])), None if j is None else parent.child_path(str(t_seq[j][0])))
                        for i, j in _other_reading_renames(s_seq, t_seq, chosen, other))
        self.result.ambiguities.append(Ambiguity(
            parent.path or "<root>",
            f"new: {names(t_seq, new_chosen)}; unused: {names(s_seq, unused_chosen)} (names kept where they could be)",
            f"new: {names(t_seq, new_other)}; unused: {names(s_seq, unused_other)}",
            renames=renames))
        for i in unused_chosen - unused_other:
            self.result.ambiguous_sources.update(s_seq[i][1].keys())

    def _pair_renamed(self, s_left: dict[str, Node], t_left: dict[str, Node], parent: Node) -> None:
        """Siblings saved under other names (see :func:`pair_look_alikes`); identical ones nothing tells apart
        load nothing, and the report says why."""
        if not s_left or not t_left:
            return
        pairs, undecided = pair_look_alikes(s_left, t_left, lambda node: node.sig)
        for s_name, t_name in pairs:
            self.match(s_left[s_name], t_left[t_name], SIGNATURE)
        for s_names, t_names in undecided:
            self.unpaired_modules(parent.path, [s_left[n] for n in s_names], [t_left[n] for n in t_names])

    def unpaired_modules(self, where: str, s_nodes: list[Node], t_nodes: list[Node]) -> None:
        """Identical modules that nothing tells apart: nothing loads into them; the renames say how to."""
        self.result.ambiguities.append(Ambiguity(
            where or "<root>", f"nothing loaded into {', '.join(n.path for n in t_nodes)}",
            f"identical modules saved as {', '.join(n.path for n in s_nodes)}: names give no clear pairing",
            renames=tuple((s.path, t.path) for s, t in zip(s_nodes, t_nodes)), loads_nothing=True))
        for node in s_nodes:
            self.result.ambiguous_sources.update(node.keys())


def _other_reading_renames(s_seq: list[tuple[int, Node]], t_seq: list[tuple[int, Node]],
                           chosen: list[tuple[int, int]], other: list[tuple[int, int]]) -> list[tuple[int, int | None]]:
    """(source, target) positions the --rename rules of the other reading must state: its pairs that differ
    from the chosen ones, then every module whose name one of those takes (by its own pair in the other
    reading, or None: it gives its name up)."""
    in_other = dict(other)
    position = {index: k for k, (index, _) in enumerate(s_seq)}
    differing = [(i, j) for i, j in other if (i, j) not in set(chosen) and s_seq[i][0] != t_seq[j][0]]
    rules: list[tuple[int, int | None]] = list(differing)
    stated = {i for i, _ in rules}
    # a module whose keys all land on target keys is pinned there and takes no name from another source
    pending = [(i, j) for i, j in differing if s_seq[i][1].sig != t_seq[j][1].sig]
    while pending:
        _, j = pending.pop()
        k = position.get(t_seq[j][0])   # the source module named like the target
        if k is None or k in stated:
            continue
        stated.add(k)
        j_k = in_other.get(k)   # the other reading's pair of k takes another index (or none)
        rules.append((k, j_k))
        if j_k is not None and s_seq[k][1].sig != t_seq[j_k][1].sig:
            pending.append((k, j_k))
    return rules


def lone_gaps(pairs: list[tuple[int, int]], n: int, m: int) -> list[tuple[int, int]]:
    """One module on each side between two aligned ones (or an end): the same place, so they pair by
    position whatever changed inside (descending finds what still fits)."""
    return [(s_gap[0], t_gap[0]) for s_gap, t_gap in gaps(pairs, n, m) if len(s_gap) == len(t_gap) == 1]


def match_structure(source: Iterable[TensorSpec], target: Iterable[TensorSpec], strategy: str,
                    wrapper: str = "", disabled: frozenset[str] = frozenset()) -> StructureMatch:
    """Pair target keys with source keys by structure; see the module docstring. ``wrapper``: the path a
    prefix move put around the whole model (``module``); ``disabled``: passes switched off."""
    from .moves import match_moves
    from .regroup import match_regrouped

    source, target = list(source), list(target)
    matcher = Matcher(disabled)
    s_root, t_root = build_tree(source), build_tree(target)
    matcher.match(s_root, t_root, strategy)
    # regrouping inside matched modules is the closer evidence, so it goes first; moves may match new
    # module pairs, whose insides are then regrouped too
    scopes_done = 0
    passes = (("regroup", match_regrouped), ("move", match_moves), ("regroup", match_regrouped))
    for later_pass in [run for name, run in passes if name not in disabled]:
        if not _leftovers_on_both_sides(matcher.result, len(source), len(target)):
            break
        if later_pass is match_regrouped:
            scopes_done = match_regrouped(matcher, scopes_done, wrapper)
        else:
            match_moves(matcher, s_root, t_root)
    return matcher.result


def _leftovers_on_both_sides(result: StructureMatch, sources: int, targets: int) -> bool:
    used = {source for source, _ in result.pairs.values()}
    return len(result.pairs) < targets and len(used | result.ambiguous_sources) < sources
