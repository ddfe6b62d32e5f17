"""LRPolicy against a transcription of the reference's LRPolicyScheduler, step by step.

The transcription (``ReferencePolicy``) is the reference's ``get_lr`` line by line, with
its state (``_step_count`` counted from 1 and ``last_lr`` set by the warmup and decay
lines), so it shows what the reference computes in every case, including the ones where it
raises. It runs twice: stepped by hand as torch would step it, and inside torch's own
scheduler machinery, reading the lr each optimizer step actually uses. LRPolicy's closed
form must give the same float, bit for bit, at every step.
"""

from __future__ import annotations

import pytest

from numbadlrm.optim.lr_policy import LRPolicy, adagrad_decayed_lr

BASE = 0.3

# (warmup W, decay start S, decay steps N): none, warmup only, decay only, both...
CASES = {
    "none": (0, 0, 0),
    "warmup_only": (5, 5, 0),
    "warmup_only_late_start": (5, 9, 0),
    "decay_only": (0, 0, 6),
    "decay_from_step_1": (0, 1, 4),
    "both_adjacent": (4, 4, 3),
    "both_with_gap": (4, 7, 5),
    "warmup_1": (1, 1, 3),
    "mlperf_like": (8, 70, 30),
}


class ReferencePolicy:
    """dlrm_s_pytorch.py's LRPolicyScheduler.get_lr over one param group, torch's stepping."""

    def __init__(self, base_lr, num_warmup_steps, decay_start_step, num_decay_steps):
        self.base_lrs = [base_lr]
        self.num_warmup_steps = num_warmup_steps
        self.decay_start_step = decay_start_step
        self.decay_end_step = decay_start_step + num_decay_steps
        self.num_decay_steps = num_decay_steps
        self._step_count = 0

    def get_lr(self):
        step_count = self._step_count
        if step_count < self.num_warmup_steps:
            scale = 1.0 - (self.num_warmup_steps - step_count) / self.num_warmup_steps
            lr = [base_lr * scale for base_lr in self.base_lrs]
            self.last_lr = lr
        elif self.decay_start_step <= step_count and step_count < self.decay_end_step:
            decayed_steps = step_count - self.decay_start_step
            scale = ((self.num_decay_steps - decayed_steps) / self.num_decay_steps) ** 2
            min_lr = 0.0000001
            lr = [max(min_lr, base_lr * scale) for base_lr in self.base_lrs]
            self.last_lr = lr
        else:
            if self.num_decay_steps > 0:
                lr = self.last_lr
            else:
                lr = self.base_lrs
        return lr

    def step(self):
        """torch's LRScheduler.step: count, then set the group's lr from get_lr()."""
        self._step_count += 1
        return self.get_lr()[0]


def reference_lrs(base, w, s, n, steps):
    """The lr of steps 1..steps as the reference's training loop applies them."""
    policy = ReferencePolicy(base, w, s, n)
    lr = policy.step()  # the constructor's step
    lrs = []
    for _ in range(steps):
        lrs.append(lr)  # optimizer.step() uses it
        lr = policy.step()  # lr_scheduler.step()
    return lrs


@pytest.mark.parametrize("case", list(CASES))
def test_lr_at_matches_reference_step_by_step(case):
    w, s, n = CASES[case]
    steps = s + n + w + 12
    expect = reference_lrs(BASE, w, s, n, steps)
    policy = LRPolicy(BASE, w, s, n)
    got = [policy.lr_at(k) for k in range(steps)]
    assert got == expect  # the same float operations: bit-identical
    if w > 1:
        assert got[0] == pytest.approx(BASE / w) and got[w - 2] < BASE  # starts at base/W
    if n:
        assert got[-1] == pytest.approx(max(1e-7, BASE / n**2))  # frozen after decay


@pytest.mark.parametrize("case", ["warmup_only", "decay_only", "both_with_gap", "mlperf_like"])
def test_lr_at_matches_reference_inside_torch_scheduler(case):
    torch = pytest.importorskip("torch")
    w, s, n = CASES[case]

    class Scheduler(torch.optim.lr_scheduler.LRScheduler):
        def __init__(self, optimizer):
            self.ref = ReferencePolicy(BASE, w, s, n)
            super().__init__(optimizer)

        def get_lr(self):
            self.ref._step_count = self._step_count
            return self.ref.get_lr()

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=BASE)
    scheduler = Scheduler(optimizer)
    policy = LRPolicy(BASE, w, s, n)
    for k in range(s + n + w + 5):
        assert optimizer.param_groups[0]["lr"] == policy.lr_at(k), k
        param.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()


def test_examples_spelled_out():
    both = LRPolicy(1.0, num_warmup_steps=4, decay_start_step=6, num_decay_steps=2)
    lrs = [both.lr_at(k) for k in range(9)]
    # warmup s=1..3, frozen at warmup's last (3/4) for s=4, 5, decay s=6, 7, then frozen.
    assert lrs == [0.25, 0.5, 0.75, 0.75, 0.75, 1.0, 0.25, 0.25, 0.25]
    decay = LRPolicy(1.0, decay_start_step=0, num_decay_steps=4)
    assert [decay.lr_at(k) for k in range(5)] == [0.5625, 0.25, 0.0625, 0.0625, 0.0625]
    assert LRPolicy(2.0).lr_at(0) == LRPolicy(2.0).lr_at(10**9) == 2.0


def test_no_last_lr_in_the_reference_gives_base():
    # W <= 1 and decay later: the reference reads self.last_lr before any line set it.
    with pytest.raises(AttributeError, match="last_lr"):
        reference_lrs(BASE, 0, 3, 4, 2)
    policy = LRPolicy(BASE, 0, 3, 4)
    decay = [max(1e-7, BASE * ((4 - (s - 3)) / 4) ** 2) for s in range(3, 7)]
    expect = [BASE, BASE, *decay, decay[-1], decay[-1]]  # s = 1..8: base, decay, frozen
    assert [policy.lr_at(k) for k in range(8)] == expect


def test_refusals():
    with pytest.raises(ValueError, match="warmup must finish before the decay starts"):
        LRPolicy(0.1, num_warmup_steps=10)  # the reference refuses this too (S = 0 < W)
    with pytest.raises(ValueError, match=r"--lr-num-decay-steps: must be an integer >= 0, got -1"):
        LRPolicy(0.1, num_decay_steps=-1)
    with pytest.raises(ValueError, match=r"--lr-decay-start-step: .* got 2.5"):
        LRPolicy(0.1, decay_start_step=2.5)
    with pytest.raises(ValueError, match="--learning-rate"):
        LRPolicy(float("nan"))
    with pytest.raises(ValueError, match="step: must be >= 0"):
        LRPolicy(0.1).lr_at(-1)


def test_adagrad_decayed_lr():
    assert adagrad_decayed_lr(0.5, 0.0, 7) == 0.5
    assert adagrad_decayed_lr(0.5, 0.1, 1) == 0.5
    assert adagrad_decayed_lr(0.5, 0.1, 3) == 0.5 / 1.2
    with pytest.raises(ValueError, match="from 1"):
        adagrad_decayed_lr(0.5, 0.1, 0)
