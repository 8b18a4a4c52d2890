"""Times every precision mode of the two Triton passes on one case's shapes, with its error against float64.

    python -m bench.triton_variants [--case large]

Rows: Gram pass (pair_gram: fp64 / fp32 / tf32x3 / native16, per-pair and grouped) and reconstruction
(mix_lowrank: ieee / tf32x3 / split16), for fp32 and bf16 data, B-like and A.mT-like layouts; time is the median of
``triton.testing.do_bench``; the error is ||out - ref|| / ||ref|| against the same pass in float64. The modes and
which of them the library uses are documented in ``decaf_kernels/_triton/gram.py`` and ``mix.py`` (CUDA only).
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="large")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("triton_variants: no CUDA device available; nothing to time", file=sys.stderr)
        return 2
    from triton.testing import do_bench

    import decaf_kernels._triton as tk
    from decaf_kernels._graph import neighbours, pair_groups

    from .cases import get_case, make_inputs

    dev = torch.device("cuda")
    case = get_case(args.case)
    B, A, W = make_inputs(case, device=dev)
    nb = neighbours(W.double().cpu())
    pairs = nb.pairs.to(dev)
    groups = pair_groups(nb.pairs, device=dev)
    idx = nb.idx.to(dev)
    Nu, D = idx.shape
    R = case.r

    def timed(fn) -> float:
        return do_bench(fn, warmup=25, rep=150, return_mode="median")

    print(f"# {case.name} {case.label} on {torch.cuda.get_device_name()}; ms (median) and relative error vs float64")
    for dt in (torch.float32, torch.bfloat16):
        for name, x0 in (("B", B), ("A.mT", A.mT)):
            x = x0.to(dt)
            ref = tk.pair_gram(x, pairs, precision="fp64", check_index=False)
            modes = ["fp64", "fp32", "tf32x3"] + (["native16"] if dt != torch.float32 else [])
            for prec in modes:
                for grp in (None, groups):
                    def f(prec=prec, grp=grp, x=x):
                        return tk.pair_gram(x, pairs, precision=prec, out_dtype=torch.float64, groups=grp,
                                            check_index=False)
                    try:
                        err = float((f() - ref).norm() / ref.norm())
                        print(f"gram {str(dt)[6:]:8} {name:5} {prec:8} {'grouped' if grp else 'per-pair':8} "
                              f"{timed(f):8.3f} ms  err {err:.1e}", flush=True)
                    except Exception as exc:  # report and go on: one mode must not hide the others
                        print(f"gram {dt} {name} {prec}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    T = torch.randn(Nu, case.L, D, case.r, R, device=dev) * 0.3
    for dt in (torch.float32, torch.bfloat16):
        for name, x0 in (("B", B), ("A.mT", A.mT)):
            x = x0.to(dt)
            P = x.shape[2]
            ref = tk.mix_lowrank(x.double(), idx, T.double(), check_index=False)
            for prec in (["ieee", "tf32x3"] if dt == torch.float32 else ["ieee", "split16"]):
                out = (torch.empty(Nu, case.L, P, R, device=dev, dtype=dt) if name == "B"
                       else torch.empty(Nu, case.L, R, P, device=dev, dtype=dt).mT)

                def f(prec=prec, out=out, x=x):
                    return tk.mix_lowrank(x, idx, T, out=out, precision=prec, check_index=False)
                try:
                    f()
                    err = float((out.double() - ref).norm() / ref.norm())
                    print(f"mix  {str(dt)[6:]:8} {name:5} {prec:8} {'':8} {timed(f):8.3f} ms  err {err:.1e}", flush=True)
                except Exception as exc:
                    print(f"mix {dt} {name} {prec}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
