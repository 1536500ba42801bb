"""Writing results: :func:`distconv.save.steps.save` and the steps it is made of.

``steps``: plan → create or reopen → check what workers see (``sight``) → write (``writing``,
``layout``, ``pyramid``, ``clipping``) → verify → seal; ``outputs``: creating, reopening and
protecting output stores. Nothing is imported here, so that ``distconv.save.layout`` can be
read by the input side without loading the save path.
"""
