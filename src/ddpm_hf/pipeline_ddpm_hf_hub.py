# Copyright 2026 The ddpm-hf authors. Licensed under the Apache License, Version 2.0.
"""The one upload path of ddpm-hf: ``upload_folder_to_hub``, which ``DDPMHFPipeline.save_pretrained(push_to_hub=True)``
and ``ddpm-hf push`` (``ddpm_hf.hub``) both call.

Shipped with the pipelines (``DDPMHFPipeline.save_pretrained`` copies it; ``SIBLING_MODULES``), so that a pipeline
loaded as remote code can push too. It imports nothing at import time but the standard library, and
``huggingface_hub`` (a dependency of diffusers) when it uploads: ``ddpm-hf push`` imports it without torch or
diffusers. No ``DiffusionPipeline`` subclass lives here.
"""


def upload_folder_to_hub(folder, repo_id, *, token=None, private=None, revision=None, commit_message=None,
                         ignore_patterns=None):
    """Upload a saved pipeline folder to the Hub repo ``repo_id`` (created if missing, private if ``private``), on
    branch ``revision`` (created from main if missing; default main), leaving out ``ignore_patterns``. Returns the
    commit info.

    Raises ValueError if ``private`` is asked for a repo that exists and is public (a push never changes a repo's
    visibility); huggingface_hub's errors pass through after its own retries."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if private and not api.repo_info(repo_id).private:
        raise ValueError(
            f"{repo_id} already exists and is public, and a push does not change an existing repo's visibility: "
            "make it private on the Hub first, or push without asking for a private repo"
        )
    if revision and revision not in ("main", "refs/heads/main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, ignore_patterns=ignore_patterns,
                             commit_message=commit_message or "Upload DDPMHFPipeline")
