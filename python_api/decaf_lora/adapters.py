"""Every agent's adapters as stacked tensors over one shared peft model.

peft holds one set of LoRA weights (adapter ``"default"``) in the model. :class:`AgentStacks` holds N of them:
for every group of adapted layers that share a shape ``(d, r, k)``, ``B: (N, L, d, r)`` and ``A: (N, L, r, k)``,
so that one consensus call covers all agents and all layers of that shape; and for every other trainable
parameter (the classifier head, via ``modules_to_save``) a stack ``(N, *shape)``. Training agent i means
copying slot i into the model (:meth:`AgentStacks.load_agent`), running forward/backward there, and handing the
gradients to agent i's own optimizer, whose parameters alias slot i of the stacks. The base model exists once.

peft's API is used as is: adapted layers are found as ``peft.tuners.lora.LoraLayer`` modules and their
``lora_A[name]`` / ``lora_B[name]`` / ``scaling[name]`` entries; nothing is patched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn


@dataclass
class LayerGroup:
    """Adapted layers that share ``(d_out, r, d_in)``: one stack, one consensus call."""

    d: int
    r: int
    k: int
    names: List[str]
    modules: List[nn.Module] = field(repr=False)
    scaling: Tensor  # (L,) float64: peft's per-layer scale (alpha / r, or alpha / sqrt(r) with rsLoRA)
    B: Tensor = field(repr=False, default=None)  # (N, L, d, r)
    A: Tensor = field(repr=False, default=None)  # (N, L, r, k)


def _lora_layers(model: nn.Module, adapter: str):
    from peft.tuners.lora import LoraLayer

    found = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in getattr(module, "lora_A", {}):
            continue
        if module.use_dora.get(adapter, False):
            raise ValueError(f"layer {name!r} uses DoRA; decaf_lora supports plain LoRA adapters only "
                             "(DoRA's magnitude vector has no consensus rule here)")
        lora_A, lora_B = module.lora_A[adapter], module.lora_B[adapter]
        if not (type(lora_A) is nn.Linear and type(lora_B) is nn.Linear):
            raise ValueError(f"layer {name!r} has LoRA factors of type {type(lora_A).__name__}; decaf_lora supports "
                             "LoRA on linear layers (nn.Linear, transformers' Conv1D)")
        if lora_B.bias is not None:
            raise ValueError(f"layer {name!r} has a LoRA bias (lora_bias=True), which decaf_lora does not support")
        found.append((name, module, lora_A, lora_B))
    return found


class AgentStacks:
    """The trainable state of N agents, stacked, over one peft model.

    Args:
        model: a ``peft.PeftModel`` (or any module holding peft ``LoraLayer`` modules) with adapter ``adapter``.
        n_agents: number of agents N; every slot starts as a copy of the model's current adapter and head.
        adapter: the peft adapter name.
        device: where the stacks live (the model's device by default).

    Raises:
        ValueError: no LoRA layer found, an unsupported LoRA variant, or a rank above a layer's size.
    """

    def __init__(self, model: nn.Module, n_agents: int, *, adapter: str = "default",
                 device: Optional[torch.device] = None):
        if n_agents < 1:
            raise ValueError(f"n_agents must be >= 1, got {n_agents}")
        self.model = model
        self.n = n_agents
        self.adapter = adapter
        layers = _lora_layers(model, adapter)
        if not layers:
            raise ValueError(f"the model has no LoRA layer with adapter {adapter!r}: wrap it with peft.get_peft_model "
                             "and a LoraConfig whose target_modules match some of its linear layers")
        groups: Dict[Tuple[int, int, int], dict] = {}
        lora_params = set()
        for name, module, lora_A, lora_B in layers:
            r, k = lora_A.weight.shape
            d = lora_B.weight.shape[0]
            if r > min(d, k):
                raise ValueError(f"rank r={r} is above the size of layer {name!r} ({d} x {k}): a rank-r adapter of "
                                 f"that layer needs r <= {min(d, k)}")
            g = groups.setdefault((d, r, k), {"names": [], "modules": [], "scaling": []})
            g["names"].append(name)
            g["modules"].append((lora_A, lora_B))
            g["scaling"].append(float(module.scaling[adapter]))
            lora_params.update((id(lora_A.weight), id(lora_B.weight)))
        ref = layers[0][2].weight
        self.device = torch.device(device) if device is not None else ref.device
        self.groups: List[LayerGroup] = []
        with torch.no_grad():
            for (d, r, k), g in groups.items():
                grp = LayerGroup(d, r, k, g["names"], g["modules"], torch.tensor(g["scaling"], dtype=torch.float64))
                B0 = torch.stack([lb.weight for _, lb in g["modules"]]).to(self.device)
                A0 = torch.stack([la.weight for la, _ in g["modules"]]).to(self.device)
                grp.B = B0.unsqueeze(0).repeat(n_agents, 1, 1, 1).contiguous()
                grp.A = A0.unsqueeze(0).repeat(n_agents, 1, 1, 1).contiguous()
                self.groups.append(grp)
            # every other trainable parameter (the head through modules_to_save, a user's extra trainables)
            self.dense_params: Dict[str, nn.Parameter] = {
                n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in lora_params}
            self.dense: Dict[str, Tensor] = {
                n: p.detach().to(self.device).unsqueeze(0).repeat(n_agents, *([1] * p.dim())).contiguous()
                for n, p in self.dense_params.items()}

    # ---------------------------------------------------------------------------------------------- structure
    @property
    def num_layers(self) -> int:
        return sum(len(g.names) for g in self.groups)

    def payload_bytes(self, *, include_A: bool = True) -> int:
        """Bytes one agent sends per message: its factors (B, and A unless frozen) and its dense parameters."""
        total = 0
        for g in self.groups:
            total += g.B[0].numel() * g.B.element_size()
            if include_A:
                total += g.A[0].numel() * g.A.element_size()
        return total + sum(t[0].numel() * t.element_size() for t in self.dense.values())

    def describe(self) -> dict:
        return {
            "lora_layers": self.num_layers,
            "groups": [{"d": g.d, "r": g.r, "k": g.k, "layers": len(g.names), "scaling": float(g.scaling[0])}
                       for g in self.groups],
            "dense_parameters": {n: list(t.shape[1:]) for n, t in self.dense.items()},
            "trainable_per_agent": sum(g.B[0].numel() + g.A[0].numel() for g in self.groups)
            + sum(t[0].numel() for t in self.dense.values()),
        }

    def set_train_A(self, flag: bool) -> None:
        """Whether the model computes gradients of the A factors (DLoRA-FA freezes them)."""
        for g in self.groups:
            for lora_A, _ in g.modules:
                lora_A.weight.requires_grad_(flag)

    # ---------------------------------------------------------------------------------------------- agent <-> model
    def load_agent(self, i: int) -> None:
        """Copy agent i's adapters and dense parameters into the shared model."""
        self.load_factors([(g.B[i], g.A[i]) for g in self.groups], {n: t[i] for n, t in self.dense.items()})

    @torch.no_grad()
    def load_factors(self, factors: List[Tuple[Tensor, Tensor]], dense: Dict[str, Tensor]) -> None:
        """Copy given per-group ``(B (L, d, r), A (L, r, k))`` and dense values (one agent's shape) into the model."""
        for g, (B, A) in zip(self.groups, factors):
            for l, (lora_A, lora_B) in enumerate(g.modules):
                lora_A.weight.copy_(A[l])
                lora_B.weight.copy_(B[l])
        for n, p in self.dense_params.items():
            p.copy_(dense[n])

    @torch.no_grad()
    def store_agent(self, i: int) -> None:
        """Copy the model's current adapters and dense parameters into agent i's slot (the reverse of
        :meth:`load_agent`): for a training loop that steps the model's own parameters, not the stacks."""
        for g in self.groups:
            for l, (lora_A, lora_B) in enumerate(g.modules):
                g.A[i, l].copy_(lora_A.weight)
                g.B[i, l].copy_(lora_B.weight)
        for n, p in self.dense_params.items():
            self.dense[n][i].copy_(p)

    @torch.no_grad()
    def draw_A(self, slot: int, generator: torch.Generator) -> None:
        """Replace slot ``slot``'s A factors by a fresh draw of peft's default LoRA initialisation (Kaiming-uniform
        with a = sqrt(5): uniform in +-1/sqrt(k) for a layer of input size k), from ``generator`` (CPU), layer by
        layer in group order."""
        for g in self.groups:
            bound = 1.0 / math.sqrt(g.k)
            draw = torch.rand(g.A[slot].shape, generator=generator, dtype=torch.float64) * (2 * bound) - bound
            g.A[slot].copy_(draw.to(g.A.dtype))

    def agent_parameters(self, i: int, *, include_A: bool = True) -> List[nn.Parameter]:
        """Parameters that alias agent i's slots of the stacks (an optimizer updating them updates the stacks)."""
        params = []
        for g in self.groups:
            params.append(nn.Parameter(g.B[i]))
            if include_A:
                params.append(nn.Parameter(g.A[i]))
        params.extend(nn.Parameter(t[i]) for t in self.dense.values())
        return params

    def gather_grads(self, params: List[nn.Parameter], *, include_A: bool = True) -> None:
        """Move the model's gradients (after a backward for one agent) onto that agent's aliasing parameters."""
        it = iter(params)
        for g in self.groups:
            pb = next(it)
            pb.grad = torch.stack([self._grad(lb.weight) for _, lb in g.modules])
            if include_A:
                pa = next(it)
                pa.grad = torch.stack([self._grad(la.weight) for la, _ in g.modules])
        for n in self.dense:
            next(it).grad = self._grad(self.dense_params[n])
        self.model.zero_grad(set_to_none=True)

    @staticmethod
    def _grad(p: Tensor) -> Tensor:
        return p.grad if p.grad is not None else torch.zeros_like(p)

    # ---------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"B": [g.B.clone() for g in self.groups], "A": [g.A.clone() for g in self.groups],
                "dense": {n: t.clone() for n, t in self.dense.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Copy saved stacks in place (the optimizers' aliases stay valid). Shapes must match exactly."""
        if len(state["B"]) != len(self.groups) or set(state["dense"]) != set(self.dense):
            raise ValueError("the saved adapter stacks do not match this model's LoRA layers / trainable parameters")
        for g, B, A in zip(self.groups, state["B"], state["A"]):
            if B.shape != g.B.shape or A.shape != g.A.shape:
                raise ValueError(f"saved stacks of shapes {tuple(B.shape)}, {tuple(A.shape)} do not match "
                                 f"{tuple(g.B.shape)}, {tuple(g.A.shape)}")
            g.B.copy_(B)
            g.A.copy_(A)
        for n, t in self.dense.items():
            if state["dense"][n].shape != t.shape:
                raise ValueError(f"saved parameter {n!r} has shape {tuple(state['dense'][n].shape)}, "
                                 f"expected {tuple(t.shape)}")
            t.copy_(state["dense"][n])

    # ---------------------------------------------------------------------------------------------- diagnostics
    def scaled(self) -> List[Tuple[Tensor, Tensor]]:
        """Per group, ``(s * B, A)`` in float64: their products are the agents' actual weight updates."""
        return [((g.B.double() * g.scaling.to(g.B.device).view(1, -1, 1, 1)), g.A.double()) for g in self.groups]
