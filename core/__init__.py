"""What every hirn package shares, importing nothing heavy (no torch, numpy or onnx).

The errors (:mod:`.errors`), the constants of the architecture (:mod:`.constants`), the
recurrence plan and its walker (:mod:`.schedule`, :mod:`.recurrence`), the per-step graph
specs (:mod:`.graphs`), and small file helpers (:mod:`.files`).
"""
