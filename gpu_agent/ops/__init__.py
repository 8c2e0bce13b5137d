"""One module per media operation: a validated job and local file paths in, an FFmpeg argv out.

These are pure functions: no I/O, no clock. The agent fetches and validates, then runs the argv.
"""
