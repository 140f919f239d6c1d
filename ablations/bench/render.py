"""Each section's result as BENCH.md's markdown (its measure is in the module that measures it)."""
from __future__ import annotations

# ----------------------------------------------------------------------------- rendering, one function per section


def render_throughput(rows: list[dict]) -> list[str]:
    nb = [k for k in rows[0]["images_per_s"] if k.startswith("notebook")] if rows else []
    lines = ["## Training throughput (full fine-tuning, batch 64, images/s, median of alternating rounds)", "",
             "| model | px | " + " | ".join(f"notebook, {k.split('workers')[1]} loader workers" for k in nb)
             + " | ours | model alone | ours / best notebook | ours / model alone |",
             "|---|---|" + "---|" * (len(nb) + 4)]
    for r in rows:
        ips = r["images_per_s"]
        lines.append(f"| {r['backbone']} | {r['resolution']} | " + " | ".join(f"{ips[k]:.1f}" for k in nb)
                     + f" | {ips['ours']:.1f} | {ips['model_alone']:.1f} | **{r['ratio_ours_vs_best_notebook']:.2f}x**"
                     f" | {r['ours_share_of_model_alone']:.0%} |")
    return lines + ["", "Model alone: forward, backward and optimizer step of the same model and precision on one "
                    "batch already on the device; the physical limit of any input pipeline.", ""]


def render_feature_cache(fc: dict) -> list[str]:
    lines = [f"## Frozen level-1 trial, {fc['epochs']} epochs (EfficientNet-Lite0, 64 px; train {fc['train']}, "
             f"val {fc['val']}, test {fc['test']} images)", "", "| variant | seconds | val acc |", "|---|---|---|"]
    for k in ("no_cache", "cold_cache", "warm_cache"):
        lines.append(f"| {k.replace('_', ' ')} | {fc[k]['seconds']:.2f} | {fc[k]['val_acc']:.3f} |")
    return lines + ["", f"Speed-up over no cache: warm **{fc['speedup_warm']:.1f}x**, cold {fc['speedup_cold']:.2f}x.",
                    ""]


def render_prefix_cache(pc: dict) -> list[str]:
    lines = [f"## Frozen-prefix cache: an L2-style trial, {pc['epochs']} epochs (EfficientNet-Lite0, 96 px, top "
             f"stage fine-tuned, basic augmentation; train {pc['train']}, val {pc['val']}, test {pc['test']} images)",
             "", "| variant | seconds | val acc | train img/s | prefix s | train s | val s | eval s |",
             "|---|---|---|---|---|---|---|---|"]
    for k in ("plain", "cold_cache", "warm_cache"):
        r, b = pc[k], pc[k]["breakdown"]
        lines.append(f"| {k.replace('_', ' ')} | {r['seconds']:.1f} | {r['val_acc']:.4f} | "
                     f"{r['train_images_per_second']:.0f} | {b['prefix_seconds']:.1f} | {b['train_seconds']:.1f} | "
                     f"{b['val_seconds']:.1f} | {b['eval_seconds']:.1f} |")
    return lines + ["", f"Speed-up over plain: warm **{pc['speedup_warm']:.2f}x** (a later trial of the same seed), "
                    f"cold {pc['speedup_cold']:.2f}x (the trial that computes the views).", ""]


def render_overhead(o: dict) -> list[str]:
    lines = [f"## Ray overhead per empty trial ({o['trials']} trials; {o['cpus']} CPUs)", "",
             "| setting | seconds/trial, one at a time | seconds/trial, concurrent |", "|---|---|---|"]
    conc_key = f"seconds_per_trial_concurrency_{o['cpus']}"
    for k in ("ray_defaults", "ours"):
        v = o[k]
        lines.append(f"| {k.replace('_', ' ')} | {v['seconds_per_trial_concurrency_1']:.1f} | {v[conc_key]:.1f} |")
    r = o["ratio_ours_vs_defaults"]
    lines += ["", "Ratio ours / defaults: " + ", ".join(f"{k.split('_')[-1]} at once {v:.2f}x" for k, v in r.items()),
              ""]
    if "phases_ours_concurrency_1" in o:
        ph = o["phases_ours_concurrency_1"]
        lines += ["Where an empty trial's time goes (ours, one at a time, medians): Tune between trials (trial actor, "
                  f"scheduling) {ph['tune_to_trainable']:.1f} s; the function's Train run until the worker runs the "
                  f"loop (Train controller, worker group, backend) {ph['trainable_to_loop']:.1f} s; the loop's report "
                  f"until the function returns (hand-over, worker shut-down) {ph['loop_to_returned']:.1f} s.", ""]
    return lines


def render_head_memory(hm: dict) -> list[str]:
    lines = ["## Head-node memory per concurrent trial", "",
             "Each running trial keeps a Tune trial actor and a Ray Train controller on the head node. Trials held "
             f"open {hm['hold_s']:.0f} s; memory of those processes while all were alive (PSS: shared pages divided "
             "among the processes that share them, so the sum is what they take together):", "",
             "| trials at once | trial actors MiB | Train controllers MiB | MiB per trial |", "|---|---|---|---|"]
    for n, r in hm["runs"].items():
        lines.append(f"| {n} | {r['trial actor_mib']:.0f} | {r['train controller_mib']:.0f} | "
                     f"**{r['mib_per_trial']:.0f}** |")
    return lines + ["", f"So 100 concurrent trials need about {hm['mib_per_trial'] * 100 / 1024:.0f} GiB on the head "
                    "beside Ray's own services.", ""]


def render_driver_memory(dm: dict) -> list[str]:
    return ["## Driver memory", "", f"failed: {dm['error']}" if "error" in dm else
            (f"`python -m ablations.run` on {dm['trials']} cheap real trials ({dm['seconds']:.0f} s): the driver's "
             f"resident memory was {dm['rss_mb_after_first']:.0f} MiB after the first trial and "
             f"{dm['rss_mb_after_last']:.0f} MiB after the last; over the second half it grew "
             f"**{dm['kib_per_trial_second_half']:.0f} KiB per trial** (least-squares slope)."), ""]


def render_driver_scale(ds: dict) -> list[str]:
    f, la, tb = ds["first_10pct"], ds["last_10pct"], ds["tensorboard"]
    return [f"## The driver at scale (no Ray: {ds['trials']} synthetic trials x {ds['epochs']} epochs, "
            f"{ds['concurrency']} at a time, {ds['events']} events)", "",
            "| events | ms per event | KiB per event (traced) |", "|---|---|---|",
            f"| first 10% | {f['ms_per_event']:.3f} | {f['kib_per_event']:.2f} |",
            f"| last 10% | {la['ms_per_event']:.3f} | {la['kib_per_event']:.2f} |", "",
            f"Last over first: **{ds['ratio_last_over_first']:.2f}x** (target ≤ 1.2). All events {ds['total_s']:.1f} s; "
            f"reading the live tables (ledger folded in) {ds['read_live_s']:.2f} s; compacting at the end "
            f"{ds['compact_s']:.2f} s. The TensorBoard callback adds {tb['ms_per_event']:.2f} ms per event "
            f"({tb['ms_per_trial']:.0f} ms per trial of {ds['epochs']} epochs).", ""]


def render_fail_fast(ff: dict) -> list[str]:
    lines = ["## Bad input fails fast (seconds to the one-line error, median)", "",
             "| case | seconds | exit code | one line |", "|---|---|---|---|"]
    for name, r in ff.items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['exit_code']} | {'yes' if r['one_line'] else 'NO'} |")
    return lines + [""]


def render_smoke(sm: dict) -> list[str]:
    return ["## Smoke grid", "", f"failed: {sm['error']}" if "error" in sm else
            (f"`python -m ablations.run --grid smoke`: {sm['seconds']:.0f} s wall for {sm['trials']} trials (Ray "
             f"start-up and data loading included); median Ray overhead per trial "
             f"{sm['median_ray_overhead_per_trial_s']:.1f} s."), ""]


def render_sequential(sq: dict) -> list[str]:
    from ablations.stats.simulation import markdown as sequential_markdown

    return sequential_markdown(sq)


def render_runner(r: dict) -> list[str]:
    lines = [f"## Trial runners: {r['trials']} identical small real trials, one at a time ({r['device']})", "",
             "| runner | wall s per trial | slot s per trial | of it work s | not work s (median) | not work s, "
             "first trial | not work s, later trials | model build s |", "|---|---|---|---|---|---|---|---|"]
    for name in ("train", "actor"):
        v = r.get(name, {})
        if "error" in v or not v:
            lines.append(f"| {name} | failed: {v.get('error')} | | | | | | |")
            continue
        lines.append(f"| {name} | {v['seconds_per_trial']:.1f} | {v['slot_s_median']:.1f} | {v['work_s_median']:.1f} | "
                     f"{v['not_work_s_median']:.1f} | {v['not_work_s_first']:.1f} | "
                     f"{v['not_work_s_later_median']:.1f} | {v['build_s_median']:.2f} |")
    if "ratio_actor_vs_train_not_work" in r:
        lines += ["", f"actor / train: what a slot costs besides work **{r['ratio_actor_vs_train_not_work']:.2f}x**, "
                  f"wall time per trial {r['ratio_actor_vs_train_per_trial']:.2f}x (the grid's wall includes Ray's "
                  "start and the data loading once)."]
    return [*lines, ""]
