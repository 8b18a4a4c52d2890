"""What a task computes on a batch: the training loss and the evaluation sums.

* Classification: cross-entropy of the logits against the labels; accuracy and mean loss per example.
* Causal LM: next-token cross-entropy over the label tokens (``labels`` aligned with ``input_ids``, -100 where no
  loss is taken: the prompt, the padding), averaged over the batch's label tokens; evaluation gives the loss per
  token (its exponential, the perplexity), the next-token accuracy and, per example, whether every label token is
  the greedy choice under teacher forcing -- the same as greedy decoding reproducing the completion exactly, which
  is what ``accuracy`` reports for prompt/completion data.

A user's own loss (``Trainer(..., loss=fn)``) replaces the training loss: ``fn(model, batch) -> scalar tensor``.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from .lm_data import IGNORE_INDEX, lm_accuracy
from .models import model_output_logits


def _forward(model, batch: Dict[str, torch.Tensor]):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


class _Task:
    """What both tasks evaluate the same way: their per-example ``row_sums(logits, labels)``, added up over one
    batch or per segment, read back to the host once per batch."""

    @torch.no_grad()
    def eval_sums(self, model, batch) -> Dict[str, float]:
        """The evaluation sums of one batch."""
        return self.segment_sums(model, batch, 1)[0]

    @torch.no_grad()
    def segment_sums(self, model, batch, n: int) -> List[Dict[str, float]]:
        """The evaluation sums of each of the ``n`` equal segments of ``batch`` (one per agent: see
        :class:`decaf_lora.fused.StackedAgents`), from one forward pass."""
        rows = self.row_sums(model_output_logits(_forward(model, batch)), batch["labels"])
        table = torch.stack([v.to(torch.float64).reshape(n, -1).sum(1) for v in rows.values()])  # (metrics, n)
        return [dict(zip(rows, column)) for column in table.T.tolist()]

    def segment_losses(self, model, batch, n: int) -> torch.Tensor:
        """The training loss of each of the ``n`` equal segments of ``batch`` (one per agent), ``(n,)``, from one
        forward pass: each the mean over its own rows (classification) or label tokens (causal LM), as
        :meth:`loss` gives for the segment alone; rows or tokens labelled -100 count in none."""
        total, count = self.row_losses(model_output_logits(_forward(model, batch)), batch["labels"])
        return total.reshape(n, -1).sum(1) / count.reshape(n, -1).sum(1).clamp(min=1)


class ClassificationTask(_Task):
    name = "classification"

    def loss(self, model, batch) -> torch.Tensor:
        return F.cross_entropy(model_output_logits(_forward(model, batch)).float(), batch["labels"])

    @staticmethod
    def row_losses(logits, labels):
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
        return loss, (labels != IGNORE_INDEX).to(loss.dtype)

    @staticmethod
    def row_sums(logits, labels) -> Dict[str, torch.Tensor]:
        logits = logits.float()
        return {"correct": logits.argmax(-1) == labels, "loss_sum": F.cross_entropy(logits, labels, reduction="none"),
                "count": torch.ones_like(labels)}

    @staticmethod
    def metrics(sums: Dict[str, float]) -> Dict[str, float]:
        return {"acc": sums["correct"] / sums["count"], "loss": sums["loss_sum"] / sums["count"]}


class CausalLMTask(_Task):
    """``completions``: the data are prompt/completion pairs, and ``acc`` is the exact-match rate of the
    completions; otherwise (plain texts) ``acc`` is the next-token accuracy."""

    name = "causal_lm"

    def __init__(self, completions: bool = False):
        self.completions = completions

    @staticmethod
    def _shifted(model, batch):
        logits = model_output_logits(_forward(model, batch))[:, :-1].float()
        return logits, batch["labels"][:, 1:]

    def loss(self, model, batch) -> torch.Tensor:
        logits, target = self._shifted(model, batch)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX)

    @staticmethod
    def row_losses(logits, labels):
        target = labels[:, 1:]
        loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE_INDEX,
                               reduction="none")
        return loss.sum(1), (target != IGNORE_INDEX).sum(1).to(loss.dtype)

    @staticmethod
    def row_sums(logits, labels) -> Dict[str, torch.Tensor]:
        loss_sum, _ = CausalLMTask.row_losses(logits, labels)
        acc = lm_accuracy(logits, labels)  # per row: label tokens predicted right, label tokens, all right
        has = acc["tokens"] > 0
        return {"loss_sum": loss_sum, "tokens": acc["tokens"], "token_correct": acc["correct"],
                "exact": acc["exact"] & has, "count": has}

    def metrics(self, sums: Dict[str, float]) -> Dict[str, float]:
        loss = sums["loss_sum"] / max(sums["tokens"], 1.0)
        token_acc = sums["token_correct"] / max(sums["tokens"], 1.0)
        exact = sums["exact"] / max(sums["count"], 1.0)
        return {"acc": exact if self.completions else token_acc, "loss": loss, "token_acc": token_acc,
                "exact_match": exact, "perplexity": math.exp(min(loss, 700.0))}


def make_task(name: str, loss: Optional[Callable] = None, *, completions: bool = False):
    """The task object of ``name`` ("classification" / "causal_lm"); ``loss`` overrides its training loss (and
    leaves the task without :meth:`segment_losses`: the fused steps need the task's own); ``completions``: see
    :class:`CausalLMTask`."""
    task = ClassificationTask() if name == "classification" else CausalLMTask(completions)
    if loss is not None:
        if not callable(loss):
            raise TypeError(f"loss must be a callable (model, batch) -> scalar tensor, got {type(loss).__name__}")
        task.loss = loss
        task.segment_losses = None
    return task


def add_sums(total: Dict[str, float], part: Dict[str, float]) -> Dict[str, float]:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v
    return total
