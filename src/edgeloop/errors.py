"""Errors that reach the user as one clear line.

Every problem caused by the user's input (a bad model file, an operator we
cannot handle, a malformed option) is raised as an :class:`EdgeloopError`.
The CLI prints ``error: <where>: <message>`` and exits with ``exit_code``;
anything else is a bug in edgeloop and is allowed to show a traceback.
"""

from __future__ import annotations


class EdgeloopError(Exception):
    """A user-facing error: one line, naming the problem and the place."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, node: str | None = None,
                 op: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where  # usually a file path
        self.node = node    # a graph node name, when the problem is one node
        self.op = op        # that node's operator type

    def with_where(self, where: str) -> "EdgeloopError":
        """Attach the file (or object) the error came from, if not set yet."""
        if self.where is None:
            self.where = where
        return self

    def __str__(self) -> str:
        parts = []
        if self.where:
            parts.append(str(self.where))
        if self.node is not None or self.op is not None:
            label = f"node '{self.node}'" if self.node is not None else "node"
            if self.op:
                label += f" ({self.op})"
            parts.append(label)
        parts.append(self.message)
        return ": ".join(parts)


class ModelLoadError(EdgeloopError):
    """The model file is missing, empty, truncated, corrupt or of an unknown format."""


class UnsupportedOperatorError(EdgeloopError):
    """A graph holds an operator (or attribute) that this stage cannot handle."""


class UsageError(EdgeloopError):
    """An option or argument that does not make sense."""


class MissingDependencyError(EdgeloopError):
    """An optional extra (sklearn, torch, tflite) is needed but not installed."""

    def __init__(self, package: str, extra: str, *, where: str | None = None):
        super().__init__(
            f"this needs the '{package}' package; install it with: pip install 'edgeloop[{extra}]'",
            where=where,
        )
