"""The reference's learning-rate policy (dlrm_s_pytorch.py's ``LRPolicyScheduler``), closed form.

The reference builds ``LRPolicyScheduler(optimizer, --lr-num-warmup-steps,
--lr-decay-start-step, --lr-num-decay-steps)`` on torch's ``_LRScheduler`` and calls
``optimizer.step(); lr_scheduler.step()`` once per training step. Torch's scheduler calls
``step()`` once in its constructor, so the lr that the (k+1)-th optimizer step uses (k steps
done before it) is the reference's ``get_lr()`` at ``_step_count = s = k + 1``. With
W warmup steps, decay start S and N decay steps:

    s < W             lr = base * (1 - (W - s) / W)                  linear warmup: base/W, 2 base/W
    S <= s < S + N    lr = max(1e-7, base * ((N - (s - S)) / N)^2)   squared (polynomial) decay
    otherwise         N = 0: lr = base;  N > 0: the last lr the two lines above gave, frozen

The off-by-one is the reference's: the first step already uses s = 1, so warmup never
uses lr 0 nor reaches base (its last warmup step uses base (W-1)/W), and decay starting
at S = 0 never uses base. Between warmup and decay (W <= s < S, N > 0) the frozen lr is
warmup's last, base (W-1)/W, not base; after decay it stays at max(1e-7, base / N^2).
The reference refuses S < W ("Learning rate warmup must finish before the decay starts")
even without decay; so does :class:`LRPolicy`. One deliberate difference: where the
reference has no last lr to freeze (N > 0 and no step has taken either line yet, e.g.
W <= 1 and S > 1), it raises AttributeError (``self.last_lr`` is unset); here the lr is base.

Adagrad's own ``lr_decay`` (torch.optim.Adagrad, the reference's RWSAdagrad) then scales
that lr per step: clr = lr / (1 + (t - 1) lr_decay), t = 1, 2, ... (:func:`adagrad_decayed_lr`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

MIN_DECAY_LR = 1e-7  # the reference's floor during decay


@dataclass(frozen=True)
class LRPolicy:
    """The reference's warmup + polynomial decay; ``lr_at(k)`` is the lr of step k + 1."""

    base_lr: float
    num_warmup_steps: int = 0
    decay_start_step: int = 0
    num_decay_steps: int = 0

    def __post_init__(self) -> None:
        if not self.base_lr >= 0:  # also rejects NaN
            raise ValueError(f"--learning-rate: must be >= 0, got {self.base_lr}")
        for name in ("num_warmup_steps", "decay_start_step", "num_decay_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                flag = "--lr-" + name.replace("_", "-")
                raise ValueError(f"{flag}: must be an integer >= 0, got {value!r}")
        if self.decay_start_step < self.num_warmup_steps:
            raise ValueError(
                "Learning rate warmup must finish before the decay starts: "
                f"--lr-decay-start-step {self.decay_start_step} < "
                f"--lr-num-warmup-steps {self.num_warmup_steps}"
            )

    def lr_at(self, step: int) -> float:
        """The lr of the training step that runs after ``step`` steps (step = 0, 1, 2...)."""
        if step < 0:
            raise ValueError(f"step: must be >= 0, got {step}")
        s = step + 1  # torch's _step_count when that step runs
        lr = self._branch_lr(s)
        if lr is not None:
            return lr
        if self.num_decay_steps == 0:
            return float(self.base_lr)
        # Frozen at the last lr a branch gave: decay's last step, or else warmup's last.
        w, start, n = self.num_warmup_steps, self.decay_start_step, self.num_decay_steps
        last = start + n - 1 if s >= start + n else w - 1
        if last >= 1:
            frozen = self._branch_lr(last)
            if frozen is not None:
                return frozen
        return float(self.base_lr)  # the reference has no last lr here (see the docstring)

    def _branch_lr(self, s: int) -> float | None:
        """get_lr()'s warmup or decay line at _step_count s, or None if neither applies."""
        w, start, n = self.num_warmup_steps, self.decay_start_step, self.num_decay_steps
        if s < w:
            scale = 1.0 - (w - s) / w
            return self.base_lr * scale
        if start <= s < start + n:
            scale = ((n - (s - start)) / n) ** 2
            return max(MIN_DECAY_LR, self.base_lr * scale)
        return None


def adagrad_decayed_lr(lr: float, lr_decay: float, step: int) -> float:
    """torch.optim.Adagrad's clr for its step-th step (step = 1, 2, ...)."""
    if step < 1:
        raise ValueError(f"step: Adagrad counts steps from 1, got {step}")
    return lr / (1 + (step - 1) * lr_decay)
