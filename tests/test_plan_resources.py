"""Per-trial resources and concurrency (``ablations.plan.resources.plan_resources``) from flags and cluster resources,
without Ray: a local instance is fixed, an existing cluster may grow, impossible requests fail at once; trials
packed on a GPU by its memory (``--gpus-per-trial auto``)."""
from __future__ import annotations

import argparse

import pytest

from pipeline.config import TrialConfig

from ablations.plan import packing
from ablations.plan.estimate import Target, packing_gain, trial_seconds
from ablations.plan.gpu_memory import PEAK_MIB, Peak, heaviest, trial_peak
from ablations.plan.resources import (
    HEAD_MEMORY_SHARE,
    HEAD_MIB_PER_TRIAL,
    ClusterOptions,
    GpuMemory,
    ResourceError,
    gpu_share,
    plan_resources,
)


def flags(**kw) -> ClusterOptions:
    return ClusterOptions(**kw)


def test_local_concurrency_follows_the_machine():
    res = plan_resources(flags(gpus_per_trial=0.25), {"CPU": 16, "GPU": 2}, 100)
    assert (res.gpus, res.concurrency, res.device) == (0.25, 8, "cuda")
    assert plan_resources(flags(), {"CPU": 2}, 100).concurrency == 2


def test_local_gpus_absent_fail_at_once():
    with pytest.raises(ResourceError, match="ask for 1 GPU but the Ray cluster has 0"):
        plan_resources(flags(device="cuda"), {"CPU": 8}, 5)


def test_on_a_cluster_concurrency_is_not_frozen_by_the_nodes_present():
    """0 GPU nodes at the start of an autoscaling cluster: trials queue for the nodes it will add."""
    res = plan_resources(flags(gpus_per_trial=0.5), {"CPU": 8}, 40, on_cluster=True)
    assert res.concurrency == 40 and res.cluster and res.device == "cuda"
    capped = plan_resources(flags(gpus_per_trial=0.5, max_concurrent=6), {"CPU": 8}, 40, on_cluster=True)
    assert capped.concurrency == 6


def test_the_head_nodes_memory_caps_concurrency():
    head = 32 * 1024.0  # MiB
    res = plan_resources(flags(gpus_per_trial=0.25), {"CPU": 8}, 1000, on_cluster=True, head_memory_mib=head)
    assert res.concurrency == int(head * HEAD_MEMORY_SHARE / HEAD_MIB_PER_TRIAL)


def test_known_node_types_cap_concurrency_and_refuse_what_they_cannot_provide():
    most = {"CPU": 8 + 4 * 16, "GPU": 4}  # head + 4 GPU nodes of 16 CPUs
    res = plan_resources(flags(gpus_per_trial=0.25), {"CPU": 8}, 99, on_cluster=True, max_resources=most)
    assert res.concurrency == 16
    with pytest.raises(ResourceError, match="can ever have"):
        plan_resources(flags(gpus_per_trial=0.25), {"CPU": 8}, 99, on_cluster=True, max_resources={"CPU": 64})


def test_several_workers_on_a_fraction_of_a_gpu_are_refused():
    with pytest.raises(ResourceError, match="several NCCL ranks of one trial on one GPU"):
        plan_resources(flags(workers=2, gpus_per_trial=0.25), {"CPU": 8, "GPU": 4}, 4)


def test_a_custom_gpu_resource_names_the_device_trials_use():
    auto = plan_resources(flags(gpu_resource="accel", gpus_per_trial=1), {"CPU": 4, "accel": 2}, 4)
    assert auto.device == "auto" and not auto.use_gpu and "the node's GPU where it has one" in auto.describe()
    cuda = plan_resources(flags(gpu_resource="accel", device="cuda"), {"CPU": 4, "accel": 2}, 4)
    assert cuda.device == "cuda" and "device cuda" in cuda.describe()
    cpu = plan_resources(flags(gpu_resource="accel", device="cpu"), {"CPU": 4, "accel": 2}, 4)
    assert cpu.device == "cpu" and cpu.gpus == 0


def test_packing_is_time_slicing_with_the_measured_gain():
    assert packing_gain(1) == 1.0 and packing_gain(4) == pytest.approx(2.64)
    assert 1.44 < packing_gain(3) < 2.64 and packing_gain(8) == packing_gain(4)
    assert packing_gain(4, "H200") == pytest.approx(3.9)  # measured through Ray on an H200
    cfg = TrialConfig(backbone="resnet18", resolution=224, train_stages="1", epochs=10, augment="strong")
    alone = trial_seconds(cfg, 45000, 5000, 10000, Target(gpu=True))
    packed = trial_seconds(cfg, 45000, 5000, 10000, Target(gpu=True, per_gpu=4))
    overhead = Target(gpu=True).overhead_s
    # four trials sharing a GPU each take 4 / 2.64 times as long (overhead aside), not the same time
    assert (packed - overhead) / (alone - overhead) == pytest.approx(4 / 2.64)
    # ResNet-18 at 224 px, 10 epochs on 45k images: about 450k / 6632 img/s of training on an H100
    assert 60 < alone - overhead < 120


def test_gpu_tables_are_keyed_by_model_and_say_what_is_not_measured():
    cfg = TrialConfig(backbone="resnet18", resolution=224, train_stages="1", epochs=10, augment="strong")
    h100, h200 = Target(gpu=True, gpu_model="H100"), Target(gpu=True, gpu_model="H200")
    # the H200 row measured through Ray (5,921 img/s) against the H100's bench (6,632 img/s)
    t100 = trial_seconds(cfg, 45000, 5000, 10000, h100) - h100.overhead_s
    t200 = trial_seconds(cfg, 45000, 5000, 10000, h200) - h200.overhead_s
    assert t200 / t100 == pytest.approx(6632 / 5921, rel=0.05)
    assert any("H200" in n for n in h200.notes) and not h100.notes
    lite = cfg.replace(backbone="efficientnet_lite0", resolution=96, pretrained=True)
    trial_seconds(lite, 45000, 5000, 10000, h200)  # not measured on the H200: scaled from the H100, said so
    assert any("x 0.89" in n for n in h200.notes)


def test_cpu_estimates_pay_for_each_prefix_cache_entry_once():
    from ablations.plan.estimate import plan_seconds

    l2 = TrialConfig(backbone="efficientnet_lite0", resolution=96, train_stages="1", epochs=4, augment="strong")
    same_views = l2.replace(lr=3e-4)  # shares every entry of l2 (same seed, cut, views)
    other_seed = l2.replace(seed=1)  # shares validation and test, not the training views
    plain = l2.replace(mix="mixup")  # mixes pixels: the whole model every step
    est = plan_seconds({"a": l2, "b": same_views, "c": other_seed, "d": plain}, 10000, 5000, 10000, Target())
    alone = trial_seconds(l2, 10000, 5000, 10000, Target())
    assert est["a"] == pytest.approx(alone)  # the first trial of the plan computes its entries
    assert est["b"] < 0.6 * est["a"]  # a later one trains and evaluates the top only
    assert est["b"] < est["c"] < est["a"]  # the training views of another seed are computed again
    assert est["d"] > est["a"]  # the plain path recomputes the frozen stages every epoch
    # measured for this trial (the cpu grid's pilot): 166 s computing its prefix outputs and 100 s training, on 2
    # threads alone; a 1-thread trial of two takes about twice as long. The model is within a factor of 1.5.
    measured = 2 * (166 + 100)
    assert measured / 1.5 < est["a"] - Target().overhead_s < measured * 1.5


# ----------------------------------------------------------------------------- --gpus-per-trial auto

RESNET18_224 = Peak(3486.0, "resnet18 at 224 px")  # its measured peak: 3486 * 1.25 + 1024 = 5381.5 MiB planned


def test_auto_packs_trials_into_the_gpus_memory():
    """auto (no --gpus-per-trial) on GPUs: as many trials as the GPU's memory holds with the margin."""
    cluster = {"CPU": 16, "GPU": 1}
    # 16 GiB x 0.9 = 14,746 MiB holds 2 trials of 5,381.5 MiB
    res = plan_resources(flags(), cluster, 100, peak=RESNET18_224, gpu=GpuMemory(16 * 1024.0, name="T4"))
    assert (res.gpus, res.concurrency) == (0.5, 2)
    assert "--gpus-per-trial auto: 2 trial(s) per GPU (T4): memory holds 2" in res.describe()
    assert "3,486 MiB peak of resnet18 at 224 px" in res.describe()
    # what was free on the GPU when measured bounds it too (another process holds most of it)
    busy = plan_resources(flags(), cluster, 100, peak=RESNET18_224, gpu=GpuMemory(80 * 1024.0, free_mib=6000.0))
    assert busy.gpus == 1.0 and "memory holds 1" in busy.packing


def test_auto_is_capped_by_the_cpus_per_gpu_and_the_stated_maximum():
    big = GpuMemory(80 * 1024.0)
    res = plan_resources(flags(), {"CPU": 16, "GPU": 1}, 100, peak=RESNET18_224, gpu=big)
    assert res.gpus == 1 / packing.MAX_TRIALS_PER_GPU and res.concurrency == packing.MAX_TRIALS_PER_GPU
    assert f"at most {packing.MAX_TRIALS_PER_GPU}" in res.packing and "memory holds 13" in res.packing
    res = plan_resources(flags(), {"CPU": 4, "GPU": 2}, 100, peak=RESNET18_224, gpu=big)
    assert (res.gpus, res.concurrency) == (0.5, 4) and "CPUs feed 2 (2 per GPU, 1 per trial)" in res.packing
    res = plan_resources(flags(cpus_per_trial=3), {"CPU": 4, "GPU": 1}, 100, peak=RESNET18_224, gpu=big)
    assert (res.gpus, res.concurrency) == (1.0, 1) and "CPUs feed 1" in res.packing


def test_auto_with_a_stated_memory_per_gpu_and_per_trial_on_a_custom_resource():
    """The test's stand-in for a GPU: --gpu-resource accel with --gpu-memory and --trial-gpu-memory stated."""
    opts = flags(gpu_resource="accel", gpu_memory=40, trial_gpu_memory=6)  # 36,864 MiB / 8,704 MiB = 4
    res = plan_resources(opts, {"CPU": 8, "accel": 2}, 100)
    assert (res.gpus, res.concurrency, res.device) == (0.25, 8, "auto") and "4 trial(s) per accel" in res.packing
    assert "peak of the heaviest trial (--trial-gpu-memory)" in res.packing
    # a trial larger than the GPU's memory still gets a whole one, and the plan says it may not fit
    res = plan_resources(flags(gpu_resource="accel", gpu_memory=8, trial_gpu_memory=7), {"CPU": 8, "accel": 2}, 9)
    assert res.gpus == 1.0 and "may not fit" in res.packing


def test_auto_without_the_gpus_memory_gives_each_trial_a_gpu():
    res = plan_resources(flags(), {"CPU": 16, "GPU": 2}, 100, peak=RESNET18_224)
    assert (res.gpus, res.concurrency) == (1.0, 2) and "its memory is not known" in res.packing


def test_a_stated_share_is_kept_and_several_workers_get_whole_gpus():
    big = GpuMemory(80 * 1024.0)
    one = plan_resources(flags(gpus_per_trial=1), {"CPU": 16, "GPU": 1}, 100, peak=RESNET18_224, gpu=big)
    assert (one.gpus, one.concurrency, one.packing) == (1.0, 1, "")
    two = plan_resources(flags(workers=2), {"CPU": 16, "GPU": 4}, 100, peak=RESNET18_224, gpu=big)
    assert (two.gpus, two.concurrency) == (1.0, 2) and "a whole GPU per worker" in two.packing
    cpu = plan_resources(flags(), {"CPU": 16}, 100, peak=RESNET18_224, gpu=big)
    assert (cpu.gpus, cpu.device, cpu.packing) == (0.0, "cpu", "")


def test_gpu_share_flag_takes_a_number_or_auto():
    assert gpu_share("auto") is None and gpu_share("0.25") == 0.25
    with pytest.raises(argparse.ArgumentTypeError, match="a number or 'auto'"):
        gpu_share("half")
    with pytest.raises(ResourceError, match="--gpu-memory must be more than 0"):
        plan_resources(flags(gpu_memory=0), {"CPU": 4, "GPU": 1}, 4)


def test_the_heaviest_planned_trial_is_read_from_the_measured_peaks():
    r18 = TrialConfig(backbone="resnet18", resolution=224, train_stages="1")
    assert trial_peak(r18).mib == PEAK_MIB["resnet18"][224][1] and not trial_peak(r18).note
    assert trial_peak(r18.replace(train_stages="0")).mib == PEAK_MIB["resnet18"][224][0]
    # a resolution between measured ones: the next measured above; above the largest: scaled by pixels
    assert trial_peak(r18.replace(resolution=128)).mib == PEAK_MIB["resnet18"][224][1]
    big = trial_peak(r18.replace(resolution=448))
    assert big.mib == pytest.approx(4 * PEAK_MIB["resnet18"][224][1]) and "scaled by pixels" in big.note
    assert trial_peak(r18.replace(batch_size=128)).mib == pytest.approx(2 * PEAK_MIB["resnet18"][224][1])
    lite = TrialConfig(backbone="efficientnet_lite0", resolution=224, train_stages="0", pretrained=True)
    assert heaviest([r18, lite, r18.replace(resolution=64)]).what.startswith("efficientnet_lite0 at 224 px")
    assert heaviest([]) is None


def test_the_full_grid_on_one_gpu_by_default_fits_an_hour():
    """The dry run with no flag but the GPU: auto packs the full grid's trials 4 to the GPU, and the estimate
    (Ray Train runs, 24.7 s of overhead each) is under an hour on an H200 and on an H100."""
    import re

    from .conftest import run_cli

    for model in ("H200", "H100"):
        proc = run_cli("--grid", "full", "--dry-run", "--num-gpus", "1", "--gpu-model", model)
        assert proc.returncode == 0, proc.stderr
        assert "0.25 GPU" in proc.stdout and f"4 trial(s) per GPU ({model})" in proc.stdout, proc.stdout[-3000:]
        wall = float(re.search(r"about ([\d.]+) min wall", proc.stdout).group(1))
        assert wall <= 60, (model, wall)
