"""Many agents' forward passes as one pass over the shared frozen model.

All agents share the frozen base; they differ only in their LoRA factors and their dense trainable parameters (the
head). A batch made of n equal segments along dimension 0 goes through the model once: the base layers see all of
it, and in every adapted layer segment i gets its delta ``s * x_i A_i^T B_i^T`` from slot i of the stacks (two
batched matmuls straight from the ``(n, L, d, r)`` / ``(n, L, r, k)`` stacks, nothing copied into the model); every
module that owns a dense trainable parameter runs segment i with slot i of that parameter's stack
(``torch.func.vmap`` over ``functional_call``). Which is what n separate passes of the per-agent model would compute,
in one pass whose matmuls are n times larger and whose Python overhead is paid once.

While :class:`StackedAgents` is active, peft's own LoRA computation in the adapted layers is switched off (their
``_disable_adapters`` flag, restored on exit) and forward hooks add the stacked deltas; nothing else of the model
changes. It serves evaluation (the model in eval mode) and, with ``training=True``, the fused local steps: the
factors and dense stacks given may then be leaves that require grad, and a backward pass of the segments' losses
leaves each agent's gradient in its slot of their ``.grad``. In training mode peft's LoRA dropout is applied to
the layer input as peft would, drawn from torch's global RNG like every other dropout of the pass.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .lm_data import IGNORE_INDEX

__all__ = ["StackedAgents", "StackedAdamW", "equal_segments", "ignore_rows", "repeat_batch", "clip_per_agent",
           "stacked_leaves"]


def repeat_batch(batch: Dict[str, Tensor], n: int) -> Dict[str, Tensor]:
    """``batch`` with every tensor repeated ``n`` times along dimension 0: one segment per agent."""
    return {k: v.repeat(n, *([1] * (v.dim() - 1))) if isinstance(v, Tensor) else v for k, v in batch.items()}


def equal_segments(indices: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """The agents' batch rows ``indices`` (one 1-D tensor each) as one index of ``n`` equal segments: a shorter one
    (an agent whose partition is smaller than a batch) is filled up with copies of its first row. Returns the index
    and the positions of the fillers, whose labels the caller sets to -100 so that they carry no loss."""
    size = max(len(i) for i in indices)
    filler = [torch.arange(len(i), size) + k * size for k, i in enumerate(indices) if len(i) < size]
    full = [torch.cat([i, i[:1].expand(size - len(i))]) if len(i) < size else i for i in indices]
    return torch.cat(full), torch.cat(filler) if filler else torch.zeros(0, dtype=torch.long)


def ignore_rows(batch: Dict[str, Tensor], rows: Tensor) -> Dict[str, Tensor]:
    """``batch`` with the labels of ``rows`` (positions along dimension 0) set to -100: they carry no loss."""
    if len(rows):
        batch["labels"][rows.to(batch["labels"].device)] = IGNORE_INDEX
    return batch


def stacked_leaves(stacks, trains_A: bool):
    """Tensors that alias ``stacks`` (every agent's slot) and require grad, for the fused steps: the list of them
    (per group B, and A when ``trains_A``, then the dense stacks: the order of each agent's parameters), and the same
    arranged as :class:`StackedAgents` takes them (a frozen A is the stack itself)."""
    factors = [(g.B.detach().requires_grad_(), g.A.detach().requires_grad_() if trains_A else g.A)
               for g in stacks.groups]
    dense = {k: t.detach().requires_grad_() for k, t in stacks.dense.items()}
    leaves = [t for B, A in factors for t in ((B, A) if trains_A else (B,))] + list(dense.values())
    return leaves, factors, dense


def clip_per_agent(grads: Sequence[Tensor], max_grad_norm: float) -> None:
    """Scale each agent's slice ``g[i]`` of the stacked gradients ``grads`` (in place) so that agent ``i``'s
    gradient norm over all of them is at most ``max_grad_norm``, as ``clip_grad_norm_`` on its parameters alone
    would."""
    n = grads[0].shape[0]
    norms = torch.stack([g.reshape(n, -1).norm(dim=1) for g in grads]).norm(dim=0)  # (n,)
    coef = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(n, *([1] * (g.dim() - 1))))


class StackedAdamW:
    """One ``torch.optim.AdamW`` over stacked leaves ``(n, ...)``: n agents' optimizers in one (Adam is
    elementwise, so this is n AdamWs stepping together; their launches do not grow with n).

    Each agent's view (``agents[i]``) has ``state_dict()`` / ``load_state_dict()`` in the format of a per-agent
    ``AdamW`` over that agent's parameters in the leaves' order, so checkpoints hold per-agent state whichever loop
    wrote them. The step count is one for all agents (they step together); loading agents with different step
    counts is refused."""

    def __init__(self, leaves: Sequence[Tensor], **hyper):
        self.leaves = list(leaves)
        self.n = self.leaves[0].shape[0]
        self.opt = torch.optim.AdamW(self.leaves, **hyper)
        self.agents = [_AgentView(self, i) for i in range(self.n)]

    def step(self, max_grad_norm: Optional[float] = None) -> None:
        """Clip each agent's gradient to ``max_grad_norm`` (None: no clipping, see :func:`clip_per_agent`), step
        every agent, clear the gradients."""
        if max_grad_norm is not None:
            clip_per_agent([t.grad if t.grad is not None else torch.zeros_like(t) for t in self.leaves],
                           max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def reset(self, leaves: Sequence[Tensor]) -> None:
        """Forget the moments (and step count) of ``leaves``, for every agent."""
        for t in leaves:
            self.opt.state.pop(t, None)

    def agent_state_dict(self, slot: int) -> dict:
        state = {}
        for j, t in enumerate(self.leaves):
            st = self.opt.state.get(t)
            if st:
                state[j] = {k: v[slot].clone() if torch.is_tensor(v) and v.dim() > 0 else
                            (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
        group = {k: v for k, v in self.opt.param_groups[0].items() if k != "params"}
        return {"state": state, "param_groups": [dict(group, params=list(range(len(self.leaves))))]}

    @torch.no_grad()
    def load_agent_state_dict(self, slot: int, sd: dict) -> None:
        if len(sd["param_groups"]) != 1 or len(sd["param_groups"][0]["params"]) != len(self.leaves):
            raise ValueError(f"the saved optimizer has {sum(len(g['params']) for g in sd['param_groups'])} "
                             f"parameters, this agent {len(self.leaves)}")
        for j, saved in sd["state"].items():
            t = self.leaves[int(j)]
            st = self.opt.state[t]
            for k, v in saved.items():
                if torch.is_tensor(v) and v.dim() > 0:
                    if v.shape != t.shape[1:]:
                        raise ValueError(f"saved optimizer state {k!r} of shape {tuple(v.shape)} does not fit "
                                         f"{tuple(t.shape[1:])}")
                    if k not in st:
                        st[k] = torch.zeros_like(t, dtype=v.dtype)
                    st[k][slot].copy_(v)
                elif k in st and slot > 0 and torch.is_tensor(v) and float(st[k]) != float(v):
                    raise ValueError(f"the agents' optimizers are at different steps ({float(st[k]):g} and "
                                     f"{float(v):g}); the fused steps need them in step")
                else:
                    st[k] = v.clone() if torch.is_tensor(v) else v


class _AgentView:
    """One agent's optimizer in a :class:`StackedAdamW` (what checkpoints save and restore)."""

    def __init__(self, shared: StackedAdamW, slot: int):
        self.shared, self.slot = shared, slot

    def state_dict(self) -> dict:
        return self.shared.agent_state_dict(self.slot)

    def load_state_dict(self, sd: dict) -> None:
        self.shared.load_agent_state_dict(self.slot, sd)


def _segments(x: Tensor, n: int, what: str) -> int:
    if x.shape[0] % n:
        raise ValueError(f"{what}: a batch of {x.shape[0]} rows cannot be cut into {n} equal agent segments")
    return x.shape[0] // n


class StackedAgents:
    """Within the ``with`` block, a forward pass of ``stacks.model`` on a batch of ``n`` equal segments computes
    segment ``i`` with adapter ``i``: ``factors[g] = (B (n, L, d, r), A (n, L, r, k))`` per layer group of
    ``stacks`` and ``dense[name]`` of shape ``(n, *param.shape)`` per dense trainable parameter.

    Raises ValueError on entry if a shape does not fit ``stacks``, and in the pass if the model's training mode is
    not ``training`` or a batch does not split into ``n`` equal segments.
    """

    def __init__(self, stacks, factors: Sequence[Tuple[Tensor, Tensor]], dense: Dict[str, Tensor], *,
                 training: bool = False):
        self.stacks = stacks
        self.training = training
        self.factors = list(factors)
        self.dense = dict(dense)
        if len(self.factors) != len(stacks.groups):
            raise ValueError(f"factors has {len(self.factors)} groups, the stacks have {len(stacks.groups)}")
        self.n = self.factors[0][0].shape[0]
        for g, (B, A) in zip(stacks.groups, self.factors):
            if B.shape[1:] != g.B.shape[1:] or A.shape[1:] != g.A.shape[1:] or B.shape[0] != self.n \
                    or A.shape[0] != self.n:
                raise ValueError(f"factors of shapes {tuple(B.shape)}, {tuple(A.shape)} do not fit the group "
                                 f"({g.d}, {g.r}, {g.k}) with {len(g.names)} layers and n = {self.n}")
        if set(self.dense) != set(stacks.dense):
            raise ValueError(f"dense must hold {sorted(stacks.dense)}, got {sorted(self.dense)}")
        for name, t in self.dense.items():
            if t.shape != (self.n, *stacks.dense[name].shape[1:]):
                raise ValueError(f"dense[{name!r}] has shape {tuple(t.shape)}, expected "
                                 f"{(self.n, *stacks.dense[name].shape[1:])}")
        self._handles: List = []
        self._disabled: List[Tuple[nn.Module, bool]] = []

    # ------------------------------------------------------------------------------------------------ hooks
    def _lora_hook(self, B: Tensor, A: Tensor, scale: float, name: str):
        n = self.n
        adapter = self.stacks.adapter

        def hook(module, args, output):
            if module.training != self.training:
                raise ValueError(f"StackedAgents(training={self.training}) met the model in "
                                 f"{'training' if module.training else 'eval'} mode: call model.train() or "
                                 "model.eval() to match")
            x = args[0]
            _segments(x, n, name)
            if self.training:
                x = module.lora_dropout[adapter](x)  # what peft's own forward does before lora_A
            xs = x.reshape(n, -1, x.shape[-1]).to(A.dtype)
            delta = torch.bmm(torch.bmm(xs, A.transpose(1, 2)), B.transpose(1, 2)) * scale
            return output + delta.reshape(output.shape).to(output.dtype)

        return hook

    def _dense_hook(self, params: Dict[str, Tensor], name: str):
        n = self.n
        from torch.func import functional_call, vmap

        inside = []  # functional_call calls the module again, hooks included: that call keeps its output

        def hook(module, args, output):
            if inside:
                return output
            if not args or not all(isinstance(a, Tensor) for a in args):
                raise ValueError(f"{name}: a module with a dense trainable parameter must take tensors only")
            split = [a.reshape(n, _segments(a, n, name), *a.shape[1:]) for a in args]
            inside.append(True)
            try:
                out = vmap(lambda p, *xs: functional_call(module, p, xs),
                           randomness="different" if self.training else "error")(params, *split)
            finally:
                inside.pop()
            return out.reshape(n * out.shape[1], *out.shape[2:])

        return hook

    def __enter__(self) -> "StackedAgents":
        model = self.stacks.model
        try:
            for g, (B, A) in zip(self.stacks.groups, self.factors):
                for l, name in enumerate(g.names):
                    module = model.get_submodule(name)
                    if not hasattr(module, "_disable_adapters"):
                        raise TypeError(f"layer {name!r} is not a peft LoRA layer this version of decaf_lora knows")
                    self._disabled.append((module, module._disable_adapters))
                    module._disable_adapters = True  # the base layer only; the hook adds every agent's delta
                    self._handles.append(module.register_forward_hook(
                        self._lora_hook(B[:, l], A[:, l], float(g.scaling[l]), name)))
            owners: Dict[str, Dict[str, Tensor]] = {}
            for full, t in self.dense.items():
                owner, _, leaf = full.rpartition(".")
                owners.setdefault(owner, {})[leaf] = t
            for owner, params in owners.items():
                module = model.get_submodule(owner)
                self._handles.append(module.register_forward_hook(self._dense_hook(params, owner)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        for module, flag in self._disabled:
            module._disable_adapters = flag
        self._handles, self._disabled = [], []
