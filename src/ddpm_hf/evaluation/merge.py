"""What an evaluation leaves in a training run's ``metrics.json``: the headline numbers of an ``evaluate`` report
(the bound, each sample score with its sampler, steps and real-data floor, the guidance sweep), merged through
``run_dir``, the file's one writer, so the model card can state them."""

import os


def merge_into_metrics(folder, report):
    """Headline numbers of ``report`` into ``folder/metrics.json`` (a training run's, through ``run_dir``, its one
    writer): the bound as ``bits_per_dim`` (or ``bits_per_dim_estimate``) and each sample score as an entry of
    ``sample_metrics`` (one per metric, sampler and step count, replaced when measured again; ``sampler`` is a name
    of ``ddpm_hf.sampling.SCHEDULERS``, "ddpm" for the model's own ancestral chain). False if there is none."""
    from ..run_dir import METRICS, read_metrics, update_metrics

    if not os.path.isfile(os.path.join(folder, METRICS)):
        return False
    updates = {}
    bpd = report.get("bpd")
    if bpd:
        keys = ("bits_per_dim", "bits_per_dim_stderr", "prior_bits_per_dim", "decoder_bits_per_dim", "num_images")
        if bpd["estimate"]:
            updates["bits_per_dim_estimate"] = {k: bpd[k] for k in keys} | {"terms": bpd["terms"]}
        else:
            updates.update({k: bpd[k] for k in keys})
    entries = list(read_metrics(folder).get("sample_metrics", []))
    sampler = report.get("scheduler")
    sampler = "ddpm" if sampler in (None, "DDPMHFScheduler") else sampler
    for run in report.get("sampling", []):
        for name, score in run["scores"].items():
            entry = {"metric": name, "value": score["value"], "num_samples": run["num_samples"],
                     "num_inference_steps": run["num_inference_steps"], "seed": report["seed"],
                     "split": report["reference_split"], "features": score["features"],
                     "reference": score["reference"], "evaluation": report["name"], "sampler": sampler}
            prefix = name[: -len("_fd")]  # digits_fd, mnist_fd: the real-data floor at the same count beside it
            if f"{prefix}_fd_floor" in score:
                entry.update(floor=score[f"{prefix}_fd_floor"], floor_std=score[f"{prefix}_fd_floor_std"])
            key = (name, entry["num_inference_steps"], sampler)  # (entries from before "sampler": the ancestral chain)
            entries = [e for e in entries if (e["metric"], e["num_inference_steps"], e.get("sampler", "ddpm")) != key]
            entries.append(entry)
    if entries:
        updates["sample_metrics"] = entries
    guidance = report.get("guidance")
    if guidance:  # the guidance sweep of a class-conditional model (the card's guidance table), replaced when rerun
        metric = guidance.get("metric", "digits")
        updates["guidance"] = {
            "sampler": sampler, "num_inference_steps": guidance["num_inference_steps"], "seed": report["seed"],
            "default_guidance_scale": guidance["default_guidance_scale"], "evaluation": report["name"],
            "scales": [{"guidance_scale": e["guidance_scale"], "num_samples": e["num_samples"],
                        "accuracy": e["accuracy"]["mean"], **{k: e[k]["mean"] for k in (f"{metric}_fd",)},
                        **{k: e.get(k) for k in (f"{metric}_fd_floor", f"{metric}_fd_floor_std")}}
                       for e in guidance["summary"]], "metric": metric}
    update_metrics(folder, updates)
    return True
