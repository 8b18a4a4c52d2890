"""Where the `native16` Gram mode misses its kernel-test bounds on the GPU (issue: cause unknown).

For the kernel tests' shape (N 6, L 3, P 4096, Q 16, ring pairs) and each 16-bit dtype, layout and grouping, prints
every Gram mode's error against the float64 oracle: max |err| / max |ref| (the tests' `rel < 1e-5` check), the
largest ratio of |err| to the tests' element-wise bound 2 (P + 2) 2^-23 |x|^T|x| (must stay <= 1), and where the
worst element sits (diagonal or not, and its block). Nothing is asserted: it is the diagnosis the GPU tests lack.

    python bench/native16_check.py          (needs a CUDA GPU and Triton)
    TRITON_INTERPRET=1 python bench/native16_check.py --interpret    (the wiring on the CPU: fp16 only, since the
                                                                     interpreter's bf16 dot multiplies the integers)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

try:
    import decaf_kernels  # noqa: F401
except ImportError:  # run from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from decaf_kernels import _triton as tk  # noqa: E402
from decaf_kernels._graph import pair_groups  # noqa: E402


def main() -> int:
    interpret = "--interpret" in sys.argv[1:]
    dev = "cpu" if interpret else "cuda"
    if not tk.is_available() or not (interpret or torch.cuda.is_available()):
        print("native16_check: needs Triton and a CUDA GPU (or --interpret with TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    N, L, P, Q = 6, 3, 4096, 16
    pairs = sorted({tuple(sorted((j, (j + d) % N))) for j in range(N) for d in range(3)})
    pairs_t = torch.tensor(pairs, device=dev)
    print(f"# {torch.cuda.get_device_name() if dev == 'cuda' else 'Triton interpreter'}  N={N} L={L} P={P} Q={Q}  {len(pairs)} pairs")
    print(f"{'dtype':>8} {'layout':>10} {'grouped':>7} {'mode':>8} | {'rel err':>9} {'err/bound':>9} | worst element")
    for dtype in (torch.float16,) if interpret else (torch.bfloat16, torch.float16):
        for layout in ("contig", "transposed"):
            gen = torch.Generator().manual_seed(5)
            if layout == "contig":
                x64 = torch.randn(N, L, P, Q, generator=gen, dtype=torch.float64)
                x = x64.to(dev, dtype)
            else:
                x64 = torch.randn(N, L, Q, P, generator=gen, dtype=torch.float64)
                x = x64.to(dev, dtype).transpose(-1, -2)
            xe = x.to("cpu", torch.float64)  # the rounded data: the oracle's exact input
            p = pairs_t.cpu()
            ref = torch.einsum("tlpa,tlpb->ltab", xe[p[:, 0]], xe[p[:, 1]])
            S = torch.einsum("tlpa,tlpb->ltab", xe[p[:, 0]].abs(), xe[p[:, 1]].abs())
            bound = 2 * (P + 2) * 2.0**-23 * S + 1e-300
            for grouped in (False, True):
                groups = pair_groups(pairs_t) if grouped else None
                for mode in ("fp64", "fp32", "tf32x3", "native16"):
                    try:
                        got = tk.pair_gram(x, pairs_t, precision=mode, groups=groups).to("cpu", torch.float64)
                    except Exception as err:  # noqa: BLE001 - report and go on
                        print(f"{str(dtype)[6:]:>8} {layout:>10} {grouped!s:>7} {mode:>8} | error: {err}")
                        continue
                    err = (got - ref).abs()
                    rel = (err.max() / ref.abs().max()).item()
                    ratio = err / bound
                    worst = int(ratio.argmax())
                    lyr, t, a, b = torch.unravel_index(torch.tensor(worst), ratio.shape)
                    where = (f"layer {int(lyr)} pair {pairs[int(t)]} ({int(a)},{int(b)}) "
                             f"{'diag' if int(a) == int(b) and pairs[int(t)][0] == pairs[int(t)][1] else 'off'} "
                             f"got {got[lyr, t, a, b].item():.6g} ref {ref[lyr, t, a, b].item():.6g}")
                    nan = " NaN!" if torch.isnan(got).any() else ""
                    print(f"{str(dtype)[6:]:>8} {layout:>10} {grouped!s:>7} {mode:>8} | {rel:9.2e} "
                          f"{ratio.max().item():9.2e} | {where}{nan}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
