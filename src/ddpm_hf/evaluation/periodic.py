"""A training run's periodic scores (``--eval_steps``): held-out bits/dim on every process, and on the main process
the digits metric and FID of a few samples."""

from .bound import evaluate_on_all_ranks


def periodic_scores(accelerator, unet, scheduler, held_out, config, inception=None, held_out_labels=None,
                    should_stop=None):
    """A training run's ``eval_metrics``, as {"eval/<name>": value}: held-out bits/dim (all ranks; an estimate from
    ``eval_bpd_timesteps`` terms when set), and on the main process the digits metric and FID of ``eval_num_samples``
    samples with ``eval_inference_steps`` steps (FID against the held-out images; the digits FD with
    ``eval/digits_fd_floor``, real digits' FD at the same sample count). ``config``: the run's typed training
    config (those fields, ``eval_batch_size`` and ``seed``). A class-conditional model: the bound is the conditional
    one (``held_out_labels``, the held-out images' class ids) and the samples cycle through the classes at the
    pipeline's default guidance scale. ``should_stop``: the run's signal flag; when it stops the bound (see
    ``evaluate_on_all_ranks``), no scores are returned and the run checkpoints after its next step."""
    scores = {}
    if "bpd" in config.eval_metrics and held_out is not None:
        result = evaluate_on_all_ranks(accelerator, unet, scheduler, held_out, config.eval_batch_size, config.seed,
                                       config.eval_bpd_timesteps, labels=held_out_labels, should_stop=should_stop)
        if result is None:
            return scores
        key = "eval/bits_per_dim_estimate" if config.eval_bpd_timesteps else "eval/bits_per_dim"
        scores[key] = result["bits_per_dim"]
    wanted = [m for m in ("digits", "fid") if m in config.eval_metrics and (m != "fid" or inception is not None)]
    if wanted and accelerator.is_main_process:
        from ..conditioning import null_class_id
        from ..pipeline_ddpm_hf import DDPMHFPipeline
        from ..sampling import balanced_labels, generate_uint8
        from ..scheduling_ddpm_hf import DDPMHFScheduler

        null = null_class_id(unet)
        pipe = DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler.from_config(scheduler.config),
                              **({} if null is None else {"null_class_id": null}))
        pipe.set_progress_bar_config(disable=True)
        samples, _ = generate_uint8(pipe, config.eval_num_samples, config.eval_batch_size,
                                    config.eval_inference_steps, config.seed,
                                    class_labels=balanced_labels(pipe, config.eval_num_samples))
        if "digits" in wanted:
            from .digits import digits_metric

            d = digits_metric(samples, floor_draws=5)  # 5 floor draws: well under a second at these sizes
            scores["eval/digits_fd"] = d["digits_fd"]
            scores["eval/digits_fd_floor"] = d["digits_fd_floor"]  # real digits at the same sample count
        if "fid" in wanted and held_out is not None:
            from .features import frechet_distance
            from .inception import image_features

            scores["eval/fid"] = frechet_distance(image_features(inception, held_out), image_features(inception,
                                                                                                      samples))
    return scores
