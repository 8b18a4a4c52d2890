"""The Triton kernels of the two bandwidth-bound passes of the factored consensus TSVD (private).

One module per building block: ``gram`` (the Gram pass, :func:`pair_gram`), ``mix`` (the low-rank mix,
:func:`mix_lowrank`), ``launch`` (Triton's availability, the interpreter, autotuning, argument checks). Each kernel
module holds its ``@triton.jit`` bodies (a docstring says what one program computes), its autotuning space and its
launch wrapper; ``decaf_kernels._backend`` is the only caller in the library and registration with torch.library
happens in ``decaf_kernels.ops``. The kernel modules are imported only when Triton is available and new enough.
"""

from .launch import MIN_TRITON, interpreter_active, is_available, triton_too_old, unavailable_reason

__all__ = ["MIN_TRITON", "interpreter_active", "is_available", "triton_too_old", "unavailable_reason"]

if is_available():
    from .gram import GRAM_PRECISIONS, pair_gram
    from .mix import MIX_PRECISIONS, default_precision, mix_lowrank

    __all__ += ["GRAM_PRECISIONS", "MIX_PRECISIONS", "default_precision", "mix_lowrank", "pair_gram"]
