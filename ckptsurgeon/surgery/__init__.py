"""State-dict surgery without a model: rename, drop, extract, merge, average, cast, strip, fuse BatchNorm.

Each command builds a :class:`~ckptsurgeon.plan.Plan` from the inputs' names, shapes and dtypes (no tensor
data), which the dry run and the report render; applying it streams the output tensor by tensor through the
same writer as ``transfer`` (:func:`.run.run_surgery`): atomic, bounded in memory, inputs never modified.
"""
