"""The samplers' per-image noise: drawn a block of steps at a time (ahead, on worker threads, for a GPU),
with exactly the values of one draw per image per step."""
import threading

import pytest
import torch

from hw2rt.runtime import noise as noise_mod
from hw2rt.runtime.noise import fused_draws_match, seeded_noise


def reference(seeds, shape, steps):
    """The per-step draw seeded_noise promises: each image's next [1, *shape] from its own generator."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return [torch.cat([torch.randn((1, *shape), generator=g) for g in gens]) for _ in range(steps)]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 3-4 steps for a batch of 5 images of [3, 4, 4] or [3, 5, 5]: draws cross block boundaries."""
    monkeypatch.setattr(noise_mod, "BLOCK_BYTES", 3 * 5 * 4 * 75)


@pytest.mark.parametrize("ahead", [False, True], ids=["here", "ahead"])
@pytest.mark.parametrize("shape", [(3, 4, 4), (3, 5, 5)], ids=["fused", "per-step"])
def test_block_draws_equal_one_draw_per_image_per_step(small_blocks, shape, ahead):
    seeds = [11, 12, 13, 14, 15]
    fn = seeded_noise(seeds, torch.zeros(5, *shape), ahead=ahead)
    assert 3 <= fn.steps <= 4 and fn.fused == (shape == (3, 4, 4))
    for step, want in enumerate(reference(seeds, shape, 8)):
        z = fn(step)
        assert z.shape == (5, *shape) and z.is_contiguous() and torch.equal(z, want), step


@pytest.mark.parametrize("ahead", [False, True], ids=["here", "ahead"])
def test_the_noise_does_not_depend_on_how_the_batch_is_split(small_blocks, ahead):
    seeds = list(range(20, 25))
    whole = seeded_noise(seeds, torch.zeros(5, 3, 4, 4), ahead=ahead)
    parts = [seeded_noise(seeds[:2], torch.zeros(2, 3, 4, 4), ahead=ahead),
             seeded_noise(seeds[2:], torch.zeros(3, 3, 4, 4), ahead=ahead)]
    for step in range(7):
        assert torch.equal(whole(step), torch.cat([p(step) for p in parts]))


def test_generators_continue_where_the_starting_noise_left_them(small_blocks):
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    x_T = torch.cat([torch.randn(1, 3, 4, 4, generator=g) for g in gens])
    fn = seeded_noise(gens, x_T)
    again = [torch.Generator().manual_seed(s) for s in (3, 4)]
    for g in again:
        torch.randn(1, 3, 4, 4, generator=g)
    for step in range(5):
        assert torch.equal(fn(step), torch.cat([torch.randn(1, 3, 4, 4, generator=g) for g in again]))


@pytest.fixture
def randn_calls(monkeypatch):
    """The thread of every torch.randn call from here on (fused_draws_match's own draws cached before)."""
    assert fused_draws_match((3, 4, 4))
    calls = []
    real = torch.randn

    def counting(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "randn", counting)
    return calls


def test_one_randn_per_image_per_block_not_per_step(small_blocks, randn_calls):
    """The per-step cost was a batch of tiny draws (1,000 randn calls a step for the digit job): now one
    draw of a whole block of steps per image."""
    calls = randn_calls
    fn = seeded_noise(list(range(5)), torch.zeros(5, 3, 4, 4), ahead=False)
    for step in range(6):
        fn(step)
    assert fn.steps == 4 and len(calls) == 5 * 2  # 6 steps: two blocks, one draw per image each


def test_ahead_draws_the_next_block_on_worker_threads(small_blocks, randn_calls):
    """For a GPU: the next block is drawn on worker threads while the current one is used, so no step waits
    for the CPU's draws (or, with pinned memory and a non-blocking copy, for the GPU)."""
    calls = randn_calls
    fn = seeded_noise(list(range(5)), torch.zeros(5, 3, 4, 4), ahead=True)
    fn(0)
    _, futures = fn.pending  # the second block was submitted when the first was taken
    for f in futures:
        f.result()
    assert len(calls) == 10 and all(name.startswith("hw2rt-noise") for name in calls)


def test_fused_draws_are_checked_not_assumed():
    assert fused_draws_match((3, 28, 28)) and fused_draws_match((3, 64, 64))  # digits; faces
    assert not fused_draws_match((3, 5, 5))  # 75 values: torch redraws the tail
