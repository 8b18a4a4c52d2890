"""What a run shows while it trains, on stderr (the final table goes to stdout).

* ``progress`` on and stderr a terminal: a tqdm bar, one step per round, whose postfix is the round just finished
  (its loss and consensus distance, the latest evaluated accuracy): the postfix is set before the update that
  draws the bar, so it never lags a round behind.
* ``progress`` on and stderr not a terminal (a log file, a pipe, CI): one plain line per round, no carriage
  returns.
* ``progress`` off (``--no-progress``): one line per evaluated round only.

Only the process that writes (rank 0) shows anything: the trainer passes ``enabled``.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence, TextIO

__all__ = ["RoundProgress"]


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed or detached stream
        return False


class RoundProgress:
    """Shows a run's rounds as they finish.

    Args:
        config: the run's :class:`~decaf_lora.config.TrainConfig` (``algorithm``, ``rounds``, ``progress``).
        start_round: rounds done before this call (a resumed run starts there).
        enabled: False on every process but the one that writes: nothing is shown.
        history: the records of the rounds done before (a resumed run shows their last accuracy until it
            evaluates again).
        stream: where to write (default: ``sys.stderr`` at construction); a terminal gets the bar.
    """

    def __init__(self, config, start_round: int = 0, enabled: bool = True, *, history: Sequence[dict] = (),
                 stream: Optional[TextIO] = None):
        self.algorithm = config.algorithm
        self.rounds = config.rounds
        self.stream = stream if stream is not None else sys.stderr
        self.last_eval = next((h for h in reversed(history) if h.get("test_acc_mean") is not None), None)
        self._bar = None
        if not enabled:
            self.mode = "off"
        elif not config.progress:
            self.mode = "evaluated"
        elif _is_terminal(self.stream):
            self.mode = "bar"
            from tqdm import tqdm

            # mininterval 0: a round takes seconds, so every update may draw (and shows its own postfix)
            self._bar = tqdm(total=self.rounds, initial=start_round, desc=f"{self.algorithm:<9}", unit="round",
                             file=self.stream, dynamic_ncols=True, leave=True, mininterval=0, miniters=1)
        else:
            self.mode = "lines"

    def round_done(self, rec: dict) -> None:
        """Show round ``rec`` (a record of the log: ``round``, ``train_loss``, ``test_acc_mean`` or None, ...)."""
        if self.mode == "off":
            return
        evaluated = rec.get("test_acc_mean") is not None
        if evaluated:
            self.last_eval = rec
        if self.mode == "bar":
            self._bar.set_postfix(self._postfix(rec), refresh=False)  # before the update, which draws it
            self._bar.update(1)
        elif self.mode == "lines" or evaluated:
            print(self.line(rec), file=self.stream, flush=True)

    def _postfix(self, rec: dict) -> dict:
        post = {"loss": f"{rec['train_loss']:.3f}"}
        if self.last_eval is not None:
            post["acc"] = f"{self.last_eval['test_acc_mean']:.3f}"
        if rec.get("consensus_distance_rel") is not None:
            post["cdist"] = f"{rec['consensus_distance_rel']:.2e}"
        return post

    def line(self, rec: dict) -> str:
        """One round as a plain line: ``decaf     round  5/20  loss 1.234  acc 0.600 (min 0.550, avg-model
        0.620)  cdist 1.20e-02  12.3 s`` (the accuracies only on an evaluated round)."""
        width = len(str(self.rounds))
        parts = [f"{self.algorithm:<9} round {rec['round']:>{width}}/{self.rounds}", f"loss {rec['train_loss']:.3f}"]
        if rec.get("test_acc_mean") is not None:
            extra = [f"min {rec['test_acc_min']:.3f}"] if rec.get("test_acc_min") is not None else []
            if rec.get("test_acc_avg_model") is not None:
                extra.append(f"avg-model {rec['test_acc_avg_model']:.3f}")
            parts.append(f"acc {rec['test_acc_mean']:.3f}" + (f" ({', '.join(extra)})" if extra else ""))
            if rec.get("test_perplexity_mean") is not None:  # a causal LM
                parts.append(f"ppl {rec['test_perplexity_mean']:.2f}")
        if rec.get("consensus_distance_rel") is not None:
            parts.append(f"cdist {rec['consensus_distance_rel']:.2e}")
        if rec.get("wall_time") is not None:
            parts.append(f"{rec['wall_time']:.1f} s")
        return "  ".join(parts)

    def close(self) -> None:
        """End the bar (its last state stays on the terminal); plain lines need nothing."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "RoundProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
