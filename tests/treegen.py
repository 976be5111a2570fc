"""Generated models as trees of modules with hidden identities, edited at every depth, with ground truth.

A model is a tree of :class:`Mod` nodes: leaf modules own tensors (conv, linear, batch norm, layer norm);
composite modules have named children (a conv+bn, a YOLO-like block with a numbered ``m`` list, an SE, an
attention with query/key/value/output, a bottleneck with an optional ``downsample`` list); numbered
containers (``nn.Sequential``) hold modules or other containers (a stage of bottlenecks inside a backbone).
Every module has an identity the planner never sees. The target is a copy of the source after edits real
users make, anywhere in the tree:

- ``insert`` / ``append`` / ``remove`` a module in a numbered container (often a twin of its neighbour);
- ``add_child`` (an SE into a block), ``drop_child``, ``resize`` (a leaf's channels) in place;
- ``regroup``: leaf children renamed (``query`` -> ``q_proj``, or to unrelated names), sometimes under a new
  sub-module;
- ``wrap``: a sub-tree moved under a new wrapper (``backbone`` -> ``body.backbone``);
- a ``module.`` prefix on every target key (DataParallel).

Ground truth: a target tensor comes from the source tensor of the same module identity and name when the
shapes agree, else from nothing; a BatchNorm's ``num_batches_tracked`` only where some of its statistics
do (a norm whose channels all changed starts counting afresh). Edits that the target's names and shapes cannot tell from another edit
are either marked undecidable (where the planner must report an ambiguity) or not generated:

- numbered containers take either whole-module insertions/removals or changes inside their members, never
  both (an inserted twin of a module changed in place reads as "the old one kept, the changed one new");
  such a container is undecidable exactly when its signatures have several longest alignments;
- an inserted module shares no tensor name with a module removed from the same container (that would be
  the removed module changed in place), and no sub-tree signature with anything removed, or changed from
  its old signature, anywhere (that would be a move);
- a container whose members changed in place must have its true alignment as the only best one (members
  that changed into each other's likeness are not generated);
- a composite module gets one kind of in-place edit; renaming two identical leaves to unrelated names is
  undecidable (nothing tells them apart), renaming them the way libraries abbreviate is not;
- a wrapped sub-tree is untouched inside and its signature unique in both models.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, Sequence

from ckptsurgeon.plan import is_bookkeeping
from ckptsurgeon.specs import TensorSpec

CHANNELS = (4, 8, 16)
LEAVES = ("conv", "linear", "bn", "ln")
COMPOSITES = ("conv_bn", "block", "se", "attn", "bottleneck")
ABBREVIATED = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj"}
UNRELATED = ("zeta", "omega", "sigma", "kappa", "delta")
BN = ("weight", "bias", "running_mean", "running_var")
DP = "module."


@dataclass
class Mod:
    ident: int
    kind: str
    own: dict[str, tuple[int, ...]] = field(default_factory=dict)
    named: dict[str, "Mod"] = field(default_factory=dict)
    seq: list["Mod"] | None = None

    def clone(self) -> "Mod":
        return Mod(self.ident, self.kind, dict(self.own), {n: c.clone() for n, c in self.named.items()},
                   None if self.seq is None else [c.clone() for c in self.seq])

    def children(self) -> list[tuple[str, "Mod"]]:
        if self.seq is not None:
            return [(str(i), c) for i, c in enumerate(self.seq)]
        return list(self.named.items())

    def walk(self, path: str = "") -> Iterator[tuple[str, "Mod"]]:
        yield path, self
        for name, child in self.children():
            yield from child.walk(f"{path}.{name}" if path else name)

    def relative(self) -> dict[str, tuple[int, ...]]:
        """Every tensor below, counters aside, by relative name."""
        out = {n: s for n, s in self.own.items() if not is_bookkeeping(n)}
        for name, child in self.children():
            out.update({f"{name}.{rel}": shape for rel, shape in child.relative().items()})
        return out

    def sig(self) -> frozenset:
        return frozenset(self.relative().items())

    def own_sig(self) -> frozenset:
        return frozenset((n, s) for n, s in self.own.items() if not is_bookkeeping(n))

    def idents(self) -> set[int]:
        return {m.ident for _, m in self.walk()}

    def sub_sigs(self) -> set[frozenset]:
        return {m.sig() for _, m in self.walk() if m.relative()}

    def describe(self, indent: str = "") -> str:
        own = ", ".join(f"{n}{list(s)}" for n, s in self.own.items())
        lines = [f"#{self.ident} {self.kind} {own}".rstrip()]
        for name, child in self.children():
            lines.append(f"{indent}  {name}: " + child.describe(indent + "  "))
        return "\n".join(lines)


class Builder:
    def __init__(self, ch, ids: Iterator[int]) -> None:
        self.ch, self.ids = ch, ids

    def leaf(self, kind: str, o: int, i: int = 0, k: int = 1, bias: bool = True) -> Mod:
        ident = next(self.ids)
        if kind == "conv":
            return Mod(ident, kind, {"weight": (o, i, k, k)})
        if kind == "linear":
            return Mod(ident, kind, {"weight": (o, i), **({"bias": (o,)} if bias else {})})
        if kind == "bn":
            return Mod(ident, kind, {**{n: (o,) for n in BN}, "num_batches_tracked": ()})
        return Mod(ident, kind, {"weight": (o,), "bias": (o,)})

    def composite(self, kind: str, o: int, i: int) -> Mod:
        ident = next(self.ids)
        if kind == "conv_bn":
            return Mod(ident, kind, named={"conv": self.leaf("conv", o, i, 3), "bn": self.leaf("bn", o)})
        if kind == "block":
            m = Mod(next(self.ids), "seq", seq=[self.leaf("conv", o, o, 3), self.leaf("conv", o, o, 1)])
            return Mod(ident, kind, named={"cv1": self.composite("conv_bn", o, i), "m": m})
        if kind == "se":
            return Mod(ident, kind, named={"fc1": self.leaf("conv", max(o // 4, 1), o), "fc2": self.leaf("conv", o, max(o // 4, 1))})
        if kind == "attn":
            return Mod(ident, kind, named={n: self.leaf("linear", o, o) for n in ("query", "key", "value", "output")})
        named = {"conv1": self.leaf("conv", o, i), "bn1": self.leaf("bn", o), "conv2": self.leaf("conv", o, o, 3),
                 "bn2": self.leaf("bn", o)}
        if i != o and self.ch.chance(60):
            named["downsample"] = Mod(next(self.ids), "seq", seq=[self.leaf("conv", o, i), self.leaf("bn", o)])
        return Mod(ident, "bottleneck", named=named)

    def module(self, like: Mod | None = None) -> Mod:
        """A fresh module; often a twin of ``like`` (same shapes, another identity)."""
        if like is not None and self.ch.chance(40):
            return twin(like, self.ids)
        roll = self.ch.int(0, 9)
        o, i = self.ch.pick(CHANNELS), self.ch.pick(CHANNELS)
        if roll < 2:
            kind = self.ch.pick(LEAVES)
            return self.leaf(kind, o, i, self.ch.pick((1, 3)))
        if roll < 3:
            return self.stage()
        return self.composite(self.ch.pick(COMPOSITES), o, i)

    def stage(self) -> Mod:
        o = self.ch.pick(CHANNELS)
        blocks = [self.composite("bottleneck", o, self.ch.pick(CHANNELS))]
        for _ in range(self.ch.int(0, 2)):
            blocks.append(self.composite("bottleneck", o, o))
        return Mod(next(self.ids), "seq", seq=blocks)

    def model(self, max_len: int = 5) -> Mod:
        root = Mod(next(self.ids), "root")
        if self.ch.chance(40):
            root.named["stem"] = self.composite("conv_bn", self.ch.pick(CHANNELS), 3)
        for name in ("backbone", "neck"):
            if name == "backbone" or self.ch.chance(60):
                items: list[Mod] = []
                for _ in range(self.ch.int(1, max_len)):
                    items.append(self.module(items[-1] if items else None))
                root.named[name] = Mod(next(self.ids), "seq", seq=items)
        if self.ch.chance(50):
            root.named["head"] = self.leaf("linear", self.ch.pick(CHANNELS), self.ch.pick(CHANNELS))
        return root


def twin(module: Mod, ids: Iterator[int]) -> Mod:
    out = module.clone()
    for _, node in out.walk():
        node.ident = next(ids)
    return out


# ------------------------------------------------------------------------------------------------ edits

@dataclass
class Edits:
    """What was done, for ground truth and for the decidability rules."""

    source: Mod
    target: Mod
    whole: dict[int, list[str]] = field(default_factory=dict)       # container ident -> ops (insert/remove)
    inside: set[int] = field(default_factory=set)                   # containers whose members changed
    edited: set[int] = field(default_factory=set)                   # composites that got an in-place edit
    removed: dict[int, list[Mod]] = field(default_factory=dict)     # container or composite -> removed
    inserted: dict[int, list[Mod]] = field(default_factory=dict)
    undecidable_regroups: set[int] = field(default_factory=set)     # composites
    wrapped: list[int] = field(default_factory=list)                # wrapped sub-tree idents
    original: set[int] = field(default_factory=set)                 # idents the source has
    ops: list[str] = field(default_factory=list)


def _ancestors(root: Mod, ident: int) -> list[Mod]:
    """The chain root .. parent of the module ``ident`` in ``root``."""
    def find(node: Mod, chain: list[Mod]) -> list[Mod] | None:
        for _, child in node.children():
            if child.ident == ident:
                return chain + [node]
            found = find(child, chain + [node])
            if found is not None:
                return found
        return None
    return find(root, []) or []


def _mark_changed(edits: Edits, ident: int) -> bool:
    """The module ``ident`` changes inside: every container above it has a changed member. False if one
    of them already takes whole-module insertions or removals, or the change is inside a wrapped sub-tree."""
    chain = _ancestors(edits.target, ident)
    if any(m.ident in edits.whole for m in chain if m.seq is not None):
        return False
    if any(m.ident in edits.wrapped for m in chain):
        return False
    edits.inside.update(m.ident for m in chain if m.seq is not None)
    return True


def edit(ch, ids: Iterator[int], source: Mod, max_edits: int = 4) -> Edits:
    edits = Edits(source, source.clone())
    builder = Builder(ch, ids)
    original = source.idents()
    for _ in range(ch.int(1, max_edits)):
        op = ch.pick(("insert", "append", "remove", "add_child", "drop_child", "resize", "regroup", "wrap"))
        nodes = [m for _, m in edits.target.walk() if m.ident in original]
        edits.original = original
        if OPS[op](edits, builder, ch, nodes):
            edits.ops.append(op)
    return edits


def _containers(edits: Edits, nodes: list[Mod]) -> list[Mod]:
    out = []
    for node in nodes:
        if node.seq is None or node.ident in edits.inside:
            continue
        chain = _ancestors(edits.target, node.ident)
        if not any(m.ident in edits.whole or m.ident in edits.wrapped for m in chain):
            out.append(node)
    return out


def _insert(edits: Edits, builder: Builder, ch, nodes: list[Mod], at_end: bool = False) -> bool:
    containers = _containers(edits, nodes)
    if not containers:
        return False
    container = ch.pick(containers)
    if not _mark_changed(edits, container.ident):
        return False
    at = len(container.seq) if at_end else ch.int(0, len(container.seq))
    neighbour = container.seq[at - 1] if at and (at_end or ch.chance(50)) else container.seq[min(at, len(container.seq) - 1)]
    new = builder.module(neighbour)
    container.seq.insert(at, new)
    edits.whole.setdefault(container.ident, []).append("insert")
    edits.inserted.setdefault(container.ident, []).append(new)
    return True


def _remove(edits: Edits, builder: Builder, ch, nodes: list[Mod]) -> bool:
    containers = [c for c in _containers(edits, nodes) if len(c.seq) > 1]
    if not containers:
        return False
    container = ch.pick(containers)
    if not _mark_changed(edits, container.ident):
        return False
    gone = container.seq.pop(ch.int(0, len(container.seq) - 1))
    edits.whole.setdefault(container.ident, []).append("remove")
    edits.removed.setdefault(container.ident, []).append(gone)
    return True


def _composites(edits: Edits, nodes: list[Mod], need) -> list[Mod]:
    return [n for n in nodes if n.named and n.kind != "root" and n.ident not in edits.edited and need(n)]


def _add_child(edits: Edits, builder: Builder, ch, nodes: list[Mod]) -> bool:
    found = _composites(edits, nodes, lambda n: "se" not in n.named)
    if not found:
        return False
    node = ch.pick(found)
    if not _mark_changed(edits, node.ident):
        return False
    c = ch.pick(CHANNELS)
    new = builder.composite("se", c, c) if ch.chance(60) else builder.leaf(ch.pick(LEAVES), c, c)
    node.named["se"] = new
    edits.edited.add(node.ident)
    edits.inserted.setdefault(node.ident, []).append(new)
    return True


def _drop_child(edits: Edits, builder: Builder, ch, nodes: list[Mod]) -> bool:
    found = _composites(edits, nodes, lambda n: len(n.named) > 1)
    if not found:
        return False
    node = ch.pick(found)
    if not _mark_changed(edits, node.ident):
        return False
    names = [n for n, c in node.named.items() if c.ident in edits.original]
    if not names:
        return False
    name = ch.pick(names)
    edits.removed.setdefault(node.ident, []).append(node.named.pop(name))
    edits.edited.add(node.ident)
    return True


def _resize(edits: Edits, builder: Builder, ch, nodes: list[Mod]) -> bool:
    leaves = [n for n in nodes if n.own and n.kind in LEAVES]
    if not leaves:
        return False
    leaf = ch.pick(leaves)
    if not _mark_changed(edits, leaf.ident):
        return False
    if leaf.kind == "conv":
        o, i, k, _ = leaf.own["weight"]
        leaf.own["weight"] = (ch.pick([c for c in CHANNELS if c != o]), i, k, k)
    elif leaf.kind == "linear":
        o, i = leaf.own["weight"]
        leaf.own["weight"] = (o, ch.pick([c for c in CHANNELS if c != i]))
    else:
        c = ch.pick([c for c in CHANNELS if c != leaf.own["weight"][0]])
        leaf.own.update({n: (c,) for n, s in leaf.own.items() if s})
    return True


def _regroup(edits: Edits, builder: Builder, ch, nodes: list[Mod]) -> bool:
    found = _composites(edits, nodes, lambda n: any(c.own and not c.children() for c in n.named.values()))
    if not found:
        return False
    node = ch.pick(found)
    if not _mark_changed(edits, node.ident):
        return False
    leaves = [n for n, c in node.named.items() if c.own and not c.children() and c.ident in edits.original]
    if not leaves:
        return False
    chosen = [n for n in leaves if ch.chance(60)] or [ch.pick(leaves)]
    group = Mod(next(builder.ids), "group") if ch.chance(30) else None
    pool = iter(UNRELATED)
    unrelated: list[Mod] = []
    for name in chosen:
        leaf = node.named.pop(name)
        new_name = ABBREVIATED.get(name) or next(pool)
        if new_name in UNRELATED:
            unrelated.append(leaf)
        (group.named if group else node.named)[new_name] = leaf
    if group:
        node.named["grp"] = group
    sigs = [find(edits.source, leaf.ident).own_sig() for leaf in unrelated]
    if len(set(sigs)) < len(sigs):
        edits.undecidable_regroups.add(node.ident)
    edits.edited.add(node.ident)
    return True


def _wrap(edits: Edits, builder: Builder, ch, nodes: list[Mod]) -> bool:
    parents = [n for n in nodes if n.named and n.ident not in edits.edited and "body" not in n.named]
    if not parents:
        return False
    parent = ch.pick(parents)
    names = [n for n, c in parent.named.items() if c.ident in edits.original]
    if not names:
        return False
    name = ch.pick(names)
    child = parent.named[name]
    touched = edits.inside | set(edits.whole) | edits.edited
    if child.idents() & touched or not _mark_changed(edits, parent.ident):
        return False
    del parent.named[name]
    parent.named["body"] = Mod(next(builder.ids), "wrapper", named={name: child})
    edits.edited.add(parent.ident)
    edits.wrapped.append(child.ident)
    return True


OPS = {"insert": _insert, "append": lambda e, b, c, n: _insert(e, b, c, n, at_end=True), "remove": _remove,
       "add_child": _add_child, "drop_child": _drop_child, "resize": _resize, "regroup": _regroup, "wrap": _wrap}


# ------------------------------------------------------------------------------------------ decidability

def _names(module: Mod) -> set[str]:
    return set(module.relative())


def violates_rules(edits: Edits) -> str | None:
    """Why this edit cannot be told from another one by names and shapes (then it is not generated)."""
    for ident, new in edits.inserted.items():
        gone = edits.removed.get(ident, [])
        if any(_names(a) & _names(b) for a in new for b in gone):
            return "an inserted module shares tensor names with one removed from the same place"
    added = set().union(*(m.sub_sigs() for mods in edits.inserted.values() for m in mods))
    gone = set().union(*(m.sub_sigs() for mods in edits.removed.values() for m in mods))
    now = {m.ident: m.sig() for _, m in edits.target.walk()}
    gone |= {m.sig() for _, m in edits.source.walk() if now.get(m.ident) != m.sig() and m.relative()}
    if added & gone:
        return "something inserted looks like something removed or changed (a move)"
    source_sigs = [m.sig() for _, m in edits.source.walk()]
    target_sigs = [m.sig() for _, m in edits.target.walk()]
    for ident in edits.wrapped:
        sig = find(edits.source, ident).sig()
        if find(edits.target, ident) is None or source_sigs.count(sig) != 1 or target_sigs.count(sig) != 1:
            return "a wrapped sub-tree whose signature is not unique"
    for ident in edits.inside:
        s, t = find(edits.source, ident), find(edits.target, ident)
        if t is not None and not _true_alignment_is_the_only_best(s.seq, t.seq):   # None: dropped later
            return "members changed into each other's likeness"
    return None


def find(root: Mod, ident: int) -> Mod | None:
    return next((m for _, m in root.walk() if m.ident == ident), None)


def _share(a: set, b: set) -> Fraction:
    return Fraction(len(a & b), len(a | b)) if a | b else Fraction(0)


def _weight(s: Mod, t: Mod) -> tuple:
    """The contract: equal signatures first, then the share of (name, shape) entries, then of names;
    modules sharing no tensor name never pair."""
    if s.sig() == t.sig():
        return (1, Fraction(0), Fraction(0))
    s_rel, t_rel = s.relative(), t.relative()
    if not set(s_rel) & set(t_rel):
        return (0, Fraction(0), Fraction(0))
    return (0, _share(set(s_rel.items()), set(t_rel.items())), _share(set(s_rel), set(t_rel)))


def _best_alignments(a: Sequence[Mod], b: Sequence[Mod]) -> tuple[tuple, list[frozenset]]:
    """The best total weight of order-keeping alignments and every alignment reaching it (brute force DP
    over sets of pairs; small inputs)."""
    n, m = len(a), len(b)
    memo: dict[tuple[int, int], tuple[tuple, list[frozenset]]] = {}

    def add(x: tuple, y: tuple) -> tuple:
        return tuple(p + q for p, q in zip(x, y))

    def solve(i: int, j: int) -> tuple[tuple, list[frozenset]]:
        if i == n or j == m:
            return (0, Fraction(0), Fraction(0)), [frozenset()]
        if (i, j) in memo:
            return memo[(i, j)]
        options = [solve(i + 1, j), solve(i, j + 1)]
        w = _weight(a[i], b[j])
        if w != (0, Fraction(0), Fraction(0)):
            score, ways = solve(i + 1, j + 1)
            options.append((add(score, w), [frozenset({(i, j)}) | way for way in ways]))
        best = max(score for score, _ in options)
        ways = list({way for score, found in options if score == best for way in found})
        memo[(i, j)] = (best, ways[:3])
        return memo[(i, j)]

    return solve(0, 0)


def with_lone_gaps(pairs: frozenset, n: int, m: int) -> frozenset:
    """The contract pairs, by position, the one module on each side of a gap between aligned ones."""
    out, prev = set(pairs), (-1, -1)
    for i, j in sorted(pairs) + [(n, m)]:
        if i - prev[0] == 2 and j - prev[1] == 2:
            out.add((i - 1, j - 1))
        prev = (i, j)
    return frozenset(out)


def _true_alignment_is_the_only_best(a: Sequence[Mod], b: Sequence[Mod]) -> bool:
    truth = frozenset((i, j) for i, x in enumerate(a) for j, y in enumerate(b) if x.ident == y.ident)
    _, ways = _best_alignments(a, b)
    return len(ways) == 1 and with_lone_gaps(ways[0], len(a), len(b)) == truth


def undecidable_containers(edits: Edits) -> set[int]:
    """Containers with whole-module edits whose signatures have several longest alignments."""
    out = set()
    for ident in edits.whole:
        s, t = find(edits.source, ident), find(edits.target, ident)
        if t is None:
            continue
        _, ways = _best_alignments(s.seq, t.seq)
        if len(ways) > 1:
            out.add(ident)
    return out


# ------------------------------------------------------------------------------------------ the case

@dataclass
class Case:
    edits: Edits
    prefix: str
    source: dict[str, TensorSpec]
    target: dict[str, TensorSpec]
    truth: dict[str, str | None]           # target key -> its true source key (None: new)
    undecidable: set[str]                  # target paths where the planner must report an ambiguity
    disputed: set[str]                     # target keys whose source the checkpoint cannot tell

    def describe(self) -> str:
        return (f"ops={self.edits.ops} prefix={self.prefix!r}\nsource:\n{self.edits.source.describe()}\n"
                f"target:\n{self.edits.target.describe()}")


def flatten(root: Mod, prefix: str, dtype: str) -> tuple[dict[str, TensorSpec], dict[tuple[int, str], str], dict[str, tuple[int, ...]]]:
    specs, owners = {}, {}
    for path, node in root.walk():
        for name, shape in node.own.items():
            key = f"{prefix}{path}.{name}" if path else f"{prefix}{name}"
            specs[key] = TensorSpec(key, shape, "int64" if is_bookkeeping(name) else dtype)
            owners[(node.ident, name)] = key
    return specs, owners


def paths_of(root: Mod) -> dict[int, str]:
    return {m.ident: path for path, m in root.walk()}


def make_case(ch, max_len: int = 5) -> Case | None:
    """A generated case, or None when the edits broke a decidability rule (draw again)."""
    ids = itertools.count()
    source = Builder(ch, ids).model(max_len)
    edits = edit(ch, ids, source)
    if violates_rules(edits):
        return None
    prefix = DP if ch.chance(25) else ""
    src_specs, src_keys = flatten(source, "", ch.pick(("float32", "float16")))
    tgt_specs, tgt_keys = flatten(edits.target, prefix, "float32")
    truth = {}
    for (ident, name), key in tgt_keys.items():
        origin = src_keys.get((ident, name))
        truth[key] = origin if origin is not None and src_specs[origin].shape == tgt_specs[key].shape else None
    for (ident, name), key in tgt_keys.items():   # a counter counts the statistics it came with
        if is_bookkeeping(name) and truth[key] is not None:
            stats = [truth[k] for (i, n), k in tgt_keys.items() if i == ident and not is_bookkeeping(n)]
            if stats and not any(stats):
                truth[key] = None
    target_paths = paths_of(edits.target)
    undecidable, disputed = set(), set()
    for ident in undecidable_containers(edits) | edits.undecidable_regroups:
        path = prefix + target_paths[ident]
        undecidable.add(path)
        node = find(edits.target, ident)
        region = node.seq if node.seq is not None else list(node.named.values())
        for child in region:
            disputed.update(tgt_keys[(m.ident, n)] for _, m in child.walk() for n in m.own)
    return Case(edits, prefix, src_specs, tgt_specs, truth, undecidable, disputed)


def draw_case(ch, max_len: int = 5) -> Case:
    while True:
        case = make_case(ch, max_len)
        if case is not None:
            return case
