"""The recurrent driver, its backends, windows, tiles, memory, the session and ``hirn-run``.

Importing this package loads no heavy library: backends import theirs when chosen.
"""
