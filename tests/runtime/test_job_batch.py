"""The digit job's chunk size: one per-device default (ModelSpec.job_batch), read by the job, the command and
the bench alike, and served by the engines' buckets in one call."""
import types

import torch

from hw2rt.models import get_spec
from hw2rt.runtime import jobs


def test_the_digit_job_batch_is_the_registrys_per_device_default():
    cpu, cuda = (types.SimpleNamespace(device=torch.device(d)) for d in ("cpu", "cuda"))
    assert jobs.digit_batch_size(cpu) == 250 and jobs.digit_batch_size(cuda) == 1000
    spec = get_spec("digit_unet")
    assert spec.max_batch == 2 * jobs.digit_batch_size(cuda)  # the GPU's chunk is one engine call


def test_sample_digits_without_a_batch_size_calls_the_engine_in_the_devices_chunks():
    calls = []

    class Engine:
        device = torch.device("cpu")

        def __call__(self, x, c, t, mask):
            calls.append(x.shape[0])
            return torch.zeros_like(x)

    labels = torch.arange(10).repeat_interleave(60)  # 600 digits: chunks of 250, 250, 100
    plan = jobs.digit_plan("ddim", 2)
    out = jobs.sample_digits(Engine(), labels, plan, progress=False)
    assert out.shape == (600, 3, 28, 28) and calls == [500] * 4 + [200] * 2  # 2 steps a chunk
    assert torch.equal(out, jobs.sample_digits(Engine(), labels, plan, batch_size=600, progress=False))


def test_the_ddpm_command_defaults_to_the_jobs_batch():
    from hw2rt.cli.jobs import ddpm

    (option,) = [p for p in ddpm.params if p.name == "batch_size"]
    assert option.default is None
