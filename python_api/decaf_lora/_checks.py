"""Type checks of plain arguments (ints, floats, seeds), with one wording of their errors for all of decaf_lora.

Standard library only, so that :mod:`decaf_lora.config` may use it and stay free of torch and numpy. numpy's
integer and floating scalars pass because numpy registers them with :mod:`numbers`; ``bool`` is refused
everywhere, since ``True`` is an ``int`` to Python but never a count or a seed to a user.
"""

from __future__ import annotations

import numbers
from typing import Any


def shown(value: Any) -> str:
    """``value`` as an error message shows it: its repr and its type."""
    return f"{value!r} ({type(value).__name__})"


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (int or float, Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int | None = None, *, what: str = "") -> int:
    """``value`` as a Python int.

    Args:
        name: The argument's name, for the messages.
        value: The argument.
        minimum: The smallest value allowed, or None for any.
        what: Words after ``name`` in the ValueError, saying what the argument counts (e.g. ``" (agents)"``).

    Raises:
        TypeError: ``value`` is not an integer (a bool is not).
        ValueError: ``value < minimum``.
    """
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {shown(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}{what} must be >= {minimum}, got {name}={value}")
    return value


def check_seed(seed: Any) -> int:
    """A non-negative int seed (see :func:`check_int`)."""
    return check_int("seed", seed, 0)


def check_float(name: str, value: Any) -> float:
    """``value`` (an int or a float, not a bool) as a Python float; TypeError for anything else."""
    if not is_real(value):
        raise TypeError(f"{name} must be a float, got {shown(value)}")
    return float(value)


def check_choice(what: str, value: Any, allowed: tuple) -> Any:
    """``value`` if it is one of ``allowed``; ValueError ``unknown <what> <value>; expected one of ...`` else."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")
    return value


class PeerError(RuntimeError):
    """A peer process did not answer within the timeout, died, or was started with other settings (defined here,
    torch-free, so that the command line can catch it; :mod:`decaf_lora.processes` raises it)."""
