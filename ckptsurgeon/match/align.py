"""Aligning two sequences of modules (the children of an nn.Sequential / nn.ModuleList).

Each possible pair (i, j) has a weight: ``full`` when the two modules' signatures are equal, a smaller
positive partial weight when they are the same module changed in place (a child added, a tensor resized),
0 when they cannot pair at all. The alignment with the largest total weight wins (with ``full`` larger than
any sum of partial weights: identical modules first, then the modules that changed least); among those, the
one that keeps the most indices (names). When another alignment reaches the same total, the container is
ambiguous and :func:`alternative_alignment` gives one such other reading.

Small containers (up to ``MAX_DP_CELLS`` pairs) are solved exactly. Large ones take the common runs at both
ends first and align only the gap between them, which keeps the cost near-linear for the usual case of a
few inserted or removed modules.
"""

from __future__ import annotations

import difflib
from typing import Callable, Sequence

MAX_DP_CELLS = 40_000
Pairs = list[tuple[int, int]]
Weights = list[list[int]]
Partial = Callable[[int, int], int]   # weight of pairing unequal modules i and j (0: never)


def _no_partial(i: int, j: int) -> int:
    return 0


def full_weight(n: int, m: int, partial_max: int) -> int:
    """A weight that outranks every sum of partial weights an alignment of n by m modules can have."""
    return (partial_max + 1) * (min(n, m) + 1)


def align_sequences(a: Sequence[int], b: Sequence[int], a_names: Sequence[int] | None = None,
                    b_names: Sequence[int] | None = None) -> Pairs:
    """Pairs (i, j) with a[i] == b[j], in order: longest first, then most a_names[i] == b_names[j]."""
    return align_modules(a, b, _no_partial, 0, a_names, b_names)[0]


def align_modules(a: Sequence[int], b: Sequence[int], partial: Partial, partial_max: int,
                  a_names: Sequence[int] | None = None, b_names: Sequence[int] | None = None
                  ) -> tuple[Pairs, Pairs | None]:
    """The best alignment of signatures ``a`` and ``b`` (equal ones, then ``partial`` ones), and another
    alignment as good but for names, or None where it is unique."""
    a_names = range(len(a)) if a_names is None else a_names
    b_names = range(len(b)) if b_names is None else b_names
    if list(a) == list(b):
        return [(k, k) for k in range(len(a))], None
    if len(a) * len(b) <= MAX_DP_CELLS:
        weights = _weights(a, b, partial, partial_max)
        chosen = _best(weights, a_names, b_names)
        return chosen, _alternative(weights, chosen, a_names, b_names)
    return _trimmed(a, b, partial, partial_max, a_names, b_names)


def _weights(a: Sequence[int], b: Sequence[int], partial: Partial, partial_max: int,
             a_offset: int = 0, b_offset: int = 0) -> Weights:
    full = full_weight(len(a), len(b), partial_max)
    return [[full if x == y else partial(i + a_offset, j + b_offset) for j, y in enumerate(b)]
            for i, x in enumerate(a)]


def _trimmed(a: Sequence[int], b: Sequence[int], partial: Partial, partial_max: int, a_names: Sequence[int],
             b_names: Sequence[int]) -> tuple[Pairs, Pairs | None]:
    n, m = len(a), len(b)
    head = 0
    while head < min(n, m) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(n, m) - head and a[n - 1 - tail] == b[m - 1 - tail]:
        tail += 1
    mid_a, mid_b = a[head:n - tail], b[head:m - tail]
    if len(mid_a) * len(mid_b) <= MAX_DP_CELLS:
        weights = _weights(mid_a, mid_b, partial, partial_max, head, head)
        middle = _best(weights, a_names[head:n - tail], b_names[head:m - tail])
    else:
        blocks = difflib.SequenceMatcher(None, mid_a, mid_b, autojunk=False).get_matching_blocks()
        middle = [(blk.a + k, blk.b + k) for blk in blocks for k in range(blk.size)]
    chosen = ([(k, k) for k in range(head)] + [(i + head, j + head) for i, j in middle]
              + [(n - tail + k, m - tail + k) for k in range(tail)])
    chosen += _partial_in_gaps(chosen, n, m, partial, a_names, b_names)
    chosen.sort()
    return chosen, _alternative_near_gaps(a, b, chosen)


def _partial_in_gaps(chosen: Pairs, n: int, m: int, partial: Partial, a_names: Sequence[int],
                     b_names: Sequence[int]) -> Pairs:
    """Large containers: modules changed in place, paired inside each gap between equal ones."""
    out: Pairs = []
    for s_gap, t_gap in gaps(chosen, n, m):
        if s_gap and t_gap and len(s_gap) * len(t_gap) <= MAX_DP_CELLS:
            weights = [[partial(i, j) for j in t_gap] for i in s_gap]
            pairs = _best(weights, [a_names[i] for i in s_gap], [b_names[j] for j in t_gap])
            out += [(s_gap[i], t_gap[j]) for i, j in pairs]
    return out


def gaps(pairs: Pairs, n: int, m: int) -> list[tuple[list[int], list[int]]]:
    """The unmatched stretches between consecutive matched pairs, on both sides."""
    out = []
    prev_i, prev_j = -1, -1
    for i, j in sorted(pairs) + [(n, m)]:
        s_gap, t_gap = list(range(prev_i + 1, i)), list(range(prev_j + 1, j))
        if s_gap or t_gap:
            out.append((s_gap, t_gap))
        prev_i, prev_j = i, j
    return out


def _suffix_table(weights: Weights, n: int, m: int, kept: Callable[[int, int], int], scale: int) -> list[list[int]]:
    """best[i][j] for a[i:], b[j:]: total weight * scale + index-keeping pairs."""
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below, w_row = best[i], best[i + 1], weights[i]
        for j in range(m - 1, -1, -1):
            value = below[j] if below[j] >= row[j + 1] else row[j + 1]
            w = w_row[j]
            if w:
                matched = below[j + 1] + w * scale + kept(i, j)
                if matched > value:
                    value = matched
            row[j] = value
    return best


def _best(weights: Weights, a_names: Sequence[int], b_names: Sequence[int]) -> Pairs:
    n, m = len(weights), len(weights[0]) if weights else 0
    scale = min(n, m) + 1

    def kept(i: int, j: int) -> int:
        return a_names[i] == b_names[j]

    table = _suffix_table(weights, n, m, kept, scale)
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        w = weights[i][j]
        if w and table[i][j] == table[i + 1][j + 1] + w * scale + kept(i, j):
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def _prefix_table(weights: Weights, n: int, m: int) -> list[list[int]]:
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, above, w_row = table[i], table[i - 1], weights[i - 1]
        for j in range(1, m + 1):
            value = above[j] if above[j] >= row[j - 1] else row[j - 1]
            w = w_row[j - 1]
            if w and above[j - 1] + w > value:
                value = above[j - 1] + w
            row[j] = value
    return table


def _alternative(weights: Weights, chosen: Pairs, a_names: Sequence[int], b_names: Sequence[int]) -> Pairs | None:
    """Another alignment of the same total weight that pairs some module differently, or None."""
    n, m = len(weights), len(weights[0]) if weights else 0
    prefix = _prefix_table(weights, n, m)
    suffix = _suffix_table(weights, n, m, lambda i, j: 0, 1)
    total = prefix[n][m]
    taken = set(chosen)
    for i in range(n):
        for j in range(m):
            w = weights[i][j]
            if w and (i, j) not in taken and prefix[i][j] + w + suffix[i + 1][j + 1] == total:
                before = _best([row[:j] for row in weights[:i]], a_names[:i], b_names[:j])
                after = _best([row[j + 1:] for row in weights[i + 1:]], a_names[i + 1:], b_names[j + 1:])
                return before + [(i, j)] + [(x + i + 1, y + j + 1) for x, y in after]
    return None


def alternative_alignment(a: Sequence[int], b: Sequence[int], chosen: Pairs, a_names: Sequence[int] | None = None,
                          b_names: Sequence[int] | None = None) -> Pairs | None:
    """Another alignment of equal signatures as long as ``chosen``, or None if it is unique.

    Exact for small containers; large ones are checked only around their unmatched modules.
    """
    a_names = range(len(a)) if a_names is None else a_names
    b_names = range(len(b)) if b_names is None else b_names
    if len(a) * len(b) > MAX_DP_CELLS:
        return _alternative_near_gaps(a, b, chosen)
    return _alternative(_weights(a, b, _no_partial, 0), chosen, a_names, b_names)


def _alternative_near_gaps(a: Sequence[int], b: Sequence[int], chosen: Pairs) -> Pairs | None:
    """Large containers: an unmatched module whose signature equals that of the nearest matched module on
    either side (skipping unmatched ones) could take that module's partner instead."""
    equal = [(i, j) for i, j in chosen if a[i] == b[j]]
    move = _one_shift(b, {j: i for i, j in equal}, {j for _, j in chosen})
    if move is not None:
        k, j = move
        return sorted([(i, y) for i, y in equal if y != k] + [(dict((y, i) for i, y in equal)[k], j)])
    move = _one_shift(a, {i: j for i, j in equal}, {i for i, _ in chosen})
    if move is not None:
        k, i = move
        return sorted([(x, j) for x, j in equal if x != k] + [(i, dict(equal)[k])])
    return None


def _one_shift(seq: Sequence[int], matched: dict[int, int], paired: set[int]) -> tuple[int, int] | None:
    """(k, j): the matched position k whose partner the unpaired position j could take instead."""
    for j in range(len(seq)):
        if j in paired:
            continue
        for step in (-1, 1):
            k = j + step
            while 0 <= k < len(seq) and k not in matched:
                k += step
            if 0 <= k < len(seq) and seq[k] == seq[j]:
                return k, j
    return None
