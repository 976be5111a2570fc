"""Aligning two sequences of module signatures (the children of an nn.Sequential / nn.ModuleList).

The alignment that matches the most modules in order wins (a longest common subsequence); among those,
the one that keeps the most indices (names) is taken. When another alignment matches as many, the
container is ambiguous and :func:`alternative_alignment` gives one such other reading.

Small containers (up to ``MAX_DP_CELLS`` pairs) are solved exactly. Large ones take the common runs at
both ends first and align only the gap between them, which keeps the cost near-linear for the usual case
of a few inserted or removed modules.
"""

from __future__ import annotations

import difflib
from typing import Sequence

MAX_DP_CELLS = 40_000
Pairs = list[tuple[int, int]]


def align_sequences(a: Sequence[int], b: Sequence[int], a_names: Sequence[int] | None = None,
                    b_names: Sequence[int] | None = None) -> Pairs:
    """Pairs (i, j) with a[i] == b[j], in order: longest first, then most a_names[i] == b_names[j]."""
    a_names = range(len(a)) if a_names is None else a_names
    b_names = range(len(b)) if b_names is None else b_names
    if list(a) == list(b):
        return [(k, k) for k in range(len(a))]
    if len(a) * len(b) <= MAX_DP_CELLS:
        return _best(a, b, a_names, b_names)
    return _trimmed(a, b, a_names, b_names)


def _trimmed(a: Sequence[int], b: Sequence[int], a_names: Sequence[int], b_names: Sequence[int]) -> Pairs:
    n, m = len(a), len(b)
    head = 0
    while head < min(n, m) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(n, m) - head and a[n - 1 - tail] == b[m - 1 - tail]:
        tail += 1
    mid_a, mid_b = a[head:n - tail], b[head:m - tail]
    if len(mid_a) * len(mid_b) <= MAX_DP_CELLS:
        middle = _best(mid_a, mid_b, a_names[head:n - tail], b_names[head:m - tail])
    else:
        blocks = difflib.SequenceMatcher(None, mid_a, mid_b, autojunk=False).get_matching_blocks()
        middle = [(blk.a + k, blk.b + k) for blk in blocks for k in range(blk.size)]
    return ([(k, k) for k in range(head)] + [(i + head, j + head) for i, j in middle]
            + [(n - tail + k, m - tail + k) for k in range(tail)])


def _suffix_table(a: Sequence[int], b: Sequence[int], a_names: Sequence[int], b_names: Sequence[int],
                  keep_weight: int) -> list[list[int]]:
    """best[i][j] for a[i:], b[j:]: matches * scale + keep_weight * (index-keeping matches)."""
    n, m = len(a), len(b)
    scale = 2 * (min(n, m) + 1)
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = best[i], best[i + 1]
        for j in range(m - 1, -1, -1):
            value = below[j] if below[j] >= row[j + 1] else row[j + 1]
            if a[i] == b[j]:
                matched = below[j + 1] + scale + keep_weight * (a_names[i] == b_names[j])
                if matched > value:
                    value = matched
            row[j] = value
    return best


def _walk(table: list[list[int]], a: Sequence[int], b: Sequence[int], a_names: Sequence[int],
          b_names: Sequence[int], keep_weight: int) -> Pairs:
    n, m = len(a), len(b)
    scale = 2 * (min(n, m) + 1)
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if a[i] == b[j] and table[i][j] == table[i + 1][j + 1] + scale + keep_weight * (a_names[i] == b_names[j]):
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def _best(a: Sequence[int], b: Sequence[int], a_names: Sequence[int], b_names: Sequence[int], keep_weight: int = 1) -> Pairs:
    return _walk(_suffix_table(a, b, a_names, b_names, keep_weight), a, b, a_names, b_names, keep_weight)


def _prefix_lcs(a: Sequence[int], b: Sequence[int]) -> list[list[int]]:
    n, m = len(a), len(b)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, above = table[i], table[i - 1]
        for j in range(1, m + 1):
            row[j] = above[j - 1] + 1 if a[i - 1] == b[j - 1] else max(above[j], row[j - 1])
    return table


def alternative_alignment(a: Sequence[int], b: Sequence[int], chosen: Pairs, a_names: Sequence[int] | None = None,
                          b_names: Sequence[int] | None = None) -> Pairs | None:
    """Another alignment as long as ``chosen`` that pairs some module differently, or None if it is unique.

    Exact for small containers; large ones are checked only around their unmatched modules.
    """
    a_names = range(len(a)) if a_names is None else a_names
    b_names = range(len(b)) if b_names is None else b_names
    if len(a) * len(b) > MAX_DP_CELLS:
        return _alternative_near_gaps(a, b, chosen)
    prefix = _prefix_lcs(a, b)
    suffix = _suffix_table(a, b, a_names, b_names, 0)
    scale = 2 * (min(len(a), len(b)) + 1)
    total = prefix[len(a)][len(b)]
    taken = set(chosen)
    for i in range(len(a)):
        for j in range(len(b)):
            if a[i] == b[j] and (i, j) not in taken and prefix[i][j] + 1 + suffix[i + 1][j + 1] // scale == total:
                return _through(a, b, a_names, b_names, i, j)
    return None


def _through(a: Sequence[int], b: Sequence[int], a_names: Sequence[int], b_names: Sequence[int], i: int, j: int) -> Pairs:
    """A longest alignment forced through the pair (i, j)."""
    before = _best(a[:i], b[:j], a_names[:i], b_names[:j])
    after = _best(a[i + 1:], b[j + 1:], a_names[i + 1:], b_names[j + 1:])
    return before + [(i, j)] + [(x + i + 1, y + j + 1) for x, y in after]


def _alternative_near_gaps(a: Sequence[int], b: Sequence[int], chosen: Pairs) -> Pairs | None:
    """Large containers: an unmatched module whose signature equals that of the nearest matched module on
    either side (skipping unmatched ones) could take that module's partner instead."""
    move = _one_shift(b, {j: i for i, j in chosen})
    if move is not None:
        k, j = move
        return sorted([(i, y) for i, y in chosen if y != k] + [(dict((y, i) for i, y in chosen)[k], j)])
    move = _one_shift(a, {i: j for i, j in chosen})
    if move is not None:
        k, i = move
        return sorted([(x, j) for x, j in chosen if x != k] + [(i, dict(chosen)[k])])
    return None


def _one_shift(seq: Sequence[int], matched: dict[int, int]) -> tuple[int, int] | None:
    """(k, j): the matched position k whose partner the unmatched position j could take instead."""
    for j in range(len(seq)):
        if j in matched:
            continue
        for step in (-1, 1):
            k = j + step
            while 0 <= k < len(seq) and k not in matched:
                k += step
            if 0 <= k < len(seq) and seq[k] == seq[j]:
                return k, j
    return None
