"""Bad input (issue 12): each case ends in one error line that names the problem and the fix, exit code 2, no
traceback, and leaves an existing output folder (and the model folder) exactly as it was. Every command's flag
errors are in the one table CASES (train, sample, evaluate, the restoration commands).

Training cases run `ddpm-hf train` in this process with `--output_dir` on a finished-looking run and
`--overwrite_output_dir` (where the flags allow it): the error must come before the old run is deleted. A few cases
run as real commands (the CLI's own exit code and stderr). Nothing here trains: every case stops at parse time, at
data preparation or when the model is loaded.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import train_env

TINY = ["--ddpm_num_steps", "20", "--ddpm_num_inference_steps", "5", "--train_batch_size", "4", "--logger", "none",
        "--max_train_steps", "1", "--eval_split", "", "--unet_preset", "cpu-8"]


def _images(folder, n=12, modes=("L",), size=(8, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        mode = modes[i % len(modes)]
        rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        if mode == "I;16":
            image = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
        elif mode == "P":
            image = rgb.convert("P", palette=Image.ADAPTIVE)
        else:
            image = rgb.convert(mode)
        image.save(folder / f"{i:02d}.{'jpg' if mode == 'CMYK' else 'png'}")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The folders the cases point at, made once: image folders, saved datasets, a finished-looking run, a small
    model folder (untrained cpu-8 UNet, T = 20) and damaged copies of it."""
    import shutil

    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    from ddpm_hf import DDPMHFPipeline, DDPMHFScheduler, build_unet

    root = tmp_path_factory.mktemp("bad_input")
    w = {"root": root}
    w["images"] = _images(root / "images")
    w["rgb_images"] = _images(root / "rgb_images", modes=("RGB",))
    (root / "empty").mkdir()
    (root / "text_files").mkdir()
    (root / "text_files" / "notes.txt").write_text("no images here")
    corrupt = _images(root / "corrupt", n=8)
    (corrupt / "03.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    truncated = (corrupt / "05.png").read_bytes()
    (corrupt / "05.png").write_bytes(truncated[: len(truncated) // 2])  # a download cut off half-way
    w["corrupt"] = corrupt
    _images(root / "all_corrupt", n=2)
    for p in (root / "all_corrupt").iterdir():
        p.write_bytes(b"not an image")
    Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(root / "text_dataset"))
    Dataset.from_dict({"image": []}, features=Features({"image": ImageFeature()})).save_to_disk(
        str(root / "empty_dataset"))
    run = root / "run"  # what a finished run leaves (small stand-ins)
    (run / "checkpoint-2" / "unet").mkdir(parents=True)
    (run / "checkpoint-2" / "unet" / "config.json").write_text("{}")
    for name, text in (("training_args.json", '{"recipe": "digits"}'), ("model_index.json", "{}"),
                       ("history.jsonl", '{"step": 1}\n'), ("metrics.json", "{}")):
        (run / name).write_text(text)
    w["run"] = run
    model = root / "model"
    unet = build_unet("cpu-8", channels=1)
    DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler(num_train_timesteps=20)).save_pretrained(model)
    w["model"] = model
    weights = os.path.join("unet", "diffusion_pytorch_model.safetensors")

    def damaged(name, change):
        folder = root / name
        shutil.copytree(model, folder)
        change(folder)
        return folder

    w["no_weights"] = damaged("no_weights", lambda f: (f / weights).unlink())
    w["no_scheduler"] = damaged("no_scheduler",
                                lambda f: (f / "scheduler" / "scheduler_config.json").unlink())

    def truncate(f):
        data = (f / weights).read_bytes()
        (f / weights).write_bytes(data[: len(data) // 3])

    w["truncated"] = damaged("truncated", truncate)

    def edit(path, **changes):
        config = json.loads(path.read_text())
        config.update(changes)
        path.write_text(json.dumps(config))

    w["mismatch"] = damaged("mismatch", lambda f: edit(f / "unet" / "config.json", in_channels=3, out_channels=3))
    w["bad_schedule"] = damaged("bad_schedule", lambda f: edit(f / "scheduler" / "scheduler_config.json",
                                                              beta_schedule="cosine-ish"))
    w["bad_variance"] = damaged("bad_variance", lambda f: edit(f / "scheduler" / "scheduler_config.json",
                                                              variance_type="huge"))

    def ddim(f):  # a diffusers DDIM pipeline's layout: not a DDPM to distil
        edit(f / "model_index.json", scheduler=["diffusers", "DDIMScheduler"])
        edit(f / "scheduler" / "scheduler_config.json", _class_name="DDIMScheduler")

    w["ddim_model"] = damaged("ddim_model", ddim)
    for name, shape in (("rgb", (8, 8, 3)), ("small", (4, 4)), ("gray", (8, 8))):  # restoration inputs
        w[name] = root / f"{name}.png"
        Image.fromarray(np.zeros(shape, np.uint8)).save(w[name])
    w["notmodel"] = root / "text_files"
    w["samples"] = root / "samples"  # an existing samples folder `sample --output_dir` must leave alone
    w["samples"].mkdir()
    (w["samples"] / "keep.txt").write_text("earlier samples")
    return w


# (id, command, argv (with {names} from the fixture), the message's parts: problem and fix)
CASES = [
    # flags, checked at parse time
    ("misspelt choice", "train", ["--lr_scheduler", "cosin"], ["invalid choice: 'cosin'", "constant_with_warmup"]),
    ("misspelt beta schedule", "train", ["--ddpm_beta_schedule", "cosine"],
     ["invalid choice: 'cosine'", "squaredcos_cap_v2"]),
    ("unknown flag", "train", ["--lerning_rate", "1e-4"], ["unrecognized arguments: --lerning_rate"]),
    ("not a number", "train", ["--max_train_steps", "ten"], ["--max_train_steps: invalid int value: 'ten'"]),
    ("zero batch", "train", ["--train_batch_size", "0"], ["--train_batch_size must be >= 1"]),
    ("negative learning rate", "train", ["--learning_rate=-1e-4"], ["--learning_rate must be > 0"]),
    ("dropout out of range", "train", ["--dropout", "1.5"], ["--dropout must be in [0, 1)"]),
    ("output_dir is a file", "train", ["--output_dir", "{root}/text_files/notes.txt"],
     ["--output_dir", "notes.txt is a file, not a folder", "choose another --output_dir"]),
    ("output_dir inside a file", "train", ["--output_dir", "{root}/text_files/notes.txt/run"],
     ["--output_dir", "notes.txt/run cannot be created", "NotADirectoryError"]),
    ("EMA decay above 1", "train", ["--ema_max_decay", "2"], ["--ema_max_decay must be in [0, 1]", "got 2.0"]),
    ("EMA inv_gamma zero", "train", ["--ema_inv_gamma", "0"], ["--ema_inv_gamma must be > 0", "got 0.0"]),
    ("EMA power negative", "train", ["--ema_power=-1"], ["--ema_power must be > 0"]),
    ("Adam beta1 of 1", "train", ["--adam_beta1", "1"], ["--adam_beta1 must be in [0, 1)", "got 1.0"]),
    ("Adam beta2 negative", "train", ["--adam_beta2=-0.1"], ["--adam_beta2 must be in [0, 1)"]),
    ("Adam epsilon zero", "train", ["--adam_epsilon", "0"], ["--adam_epsilon must be > 0"]),
    ("weight decay negative", "train", ["--adam_weight_decay=-1e-2"], ["--adam_weight_decay must be >= 0"]),
    ("gradient clipping negative", "train", ["--max_grad_norm=-1"], ["--max_grad_norm must be >= 0"]),
    ("warm-up negative", "train", ["--lr_warmup_steps=-5"], ["--lr_warmup_steps must be >= 0, got -5"]),
    ("learning rate NaN", "train", ["--learning_rate", "nan"], ["--learning_rate must be > 0, got nan"]),
    ("dropout negative", "train", ["--dropout=-0.1"], ["--dropout must be in [0, 1)"]),
    ("min-SNR gamma zero", "train", ["--snr_gamma", "0"], ["--snr_gamma must be > 0"]),
    ("vlb weight negative", "train", ["--vlb_weight=-1"], ["--vlb_weight must be >= 0"]),
    ("log-SNR shift on linear betas", "train", ["--ddpm_beta_schedule", "linear", "--cosine_logsnr_shift", "2"],
     ["--cosine_logsnr_shift shifts the cosine schedule: it needs --ddpm_beta_schedule squaredcos_cap_v2"]),
    ("log-SNR shift that leaves no noise", "train", ["--cosine_logsnr_shift", "50"],
     ["--cosine_logsnr_shift 50.0 leaves beta_1 = 0 at --ddpm_num_steps 20"]),
    ("seed negative", "train", ["--seed=-1"], ["--seed must be >= 0, got -1"]),
    ("a Hub dataset and a local folder", "train-fresh", ["--dataset_name", "x/y", "--train_data_dir", "d"],
     ["not both"]),
    ("a Hub model id that is not one", "train-fresh", ["--hub_model_id", "not a/valid/id"],
     ["is not a Hub repo id"]),
    ("a vlb weight without learned variances", "train-fresh", ["--variance_type", "fixed_small", "--vlb_weight",
                                                              "0.01"], ["--vlb_weight only applies with --variance_type learned_range"]),
    ("a push without a repo id", "train-fresh", ["--push_to_hub"], ["--push_to_hub needs --hub_model_id"]),
    ("an unknown UNet preset", "train-fresh", ["--unet_preset", "huge"], ["invalid choice: 'huge'"]),
    ("a label column without class conditioning", "train-fresh", ["--label_column", "label"],
     ["--label_column only applies with --class_conditional"]),
    ("label dropout without class conditioning", "train-fresh", ["--cond_drop_prob", "0.2"],
     ["--cond_drop_prob only applies with --class_conditional"]),
    ("label dropout of 1", "train-fresh", ["--class_conditional", "--cond_drop_prob", "1"],
     ["--cond_drop_prob must be in [0, 1)"]),
    ("label dropout negative", "train-fresh", ["--class_conditional", "--cond_drop_prob=-0.1"],
     ["--cond_drop_prob must be in [0, 1)"]),
    ("a guidance scale without class conditioning", "train-fresh", ["--guidance_scale", "2"],
     ["--guidance_scale only applies with --class_conditional"]),
    ("a negative guidance scale", "train-fresh", ["--class_conditional", "--guidance_scale=-1"],
     ["--guidance_scale must be >= 0"]),
    ("bound terms above T", "train", ["--bpd_timesteps", "50"], ["--eval_bpd_timesteps cannot exceed --ddpm_num_steps"]),
    ("inference steps above T", "train", ["--ddpm_num_inference_steps", "50"],
     ["--ddpm_num_inference_steps cannot exceed --ddpm_num_steps"]),
    ("periodic sample steps above T", "train", ["--eval_metrics", "bpd,digits"],
     ["--eval_inference_steps (the periodic samples' steps) cannot exceed --ddpm_num_steps"]),
    ("zero timesteps", "train", ["--ddpm_num_steps", "0"], ["--ddpm_num_steps must be >= 1"]),
    ("channels", "train", ["--channels", "2"], ["--channels: invalid choice: 2", "choose from 1, 3"]),
    ("resolution the UNet cannot take", "train", ["--resolution", "10"],
     ["--unet_preset cpu-8 halves the image", "divisible by 4", "got 10"]),
    ("model config missing", "train", ["--model_config_name_or_path", "{root}/nope.json"],
     ["--model_config_name_or_path", "no such file"]),
    ("output_dir holds a run", "train-keep", [], ["already holds a training run", "--resume_from_checkpoint latest",
                                                   "--overwrite_output_dir"]),
    ("overwrite and resume", "train-keep", ["--overwrite_output_dir", "--resume_from_checkpoint", "latest"],
     ["--overwrite_output_dir would delete the checkpoints"]),
    ("resume from nothing", "train-keep", ["--resume_from_checkpoint", "checkpoint-99"],
     ["--resume_from_checkpoint checkpoint-99: no such checkpoint", "checkpoints there: checkpoint-2"]),
    ("resume from a folder that is no checkpoint", "train-keep", ["--resume_from_checkpoint", "{root}/empty"],
     ["is not a checkpoint", "give checkpoint-N"]),
    # data, checked before the old run is touched
    ("local dataset missing", "train", ["--dataset_name", "./no_such_folder"], ["./no_such_folder: no such folder"]),
    ("image folder missing", "train", ["--train_data_dir", "{root}/no_such_folder"],
     ["no_such_folder: no such folder; give a folder of images"]),
    ("digits split missing", "train", ["--split", "validation"],
     ["--split validation: the embedded digits have the splits train and test"]),
    ("folder split missing", "train", ["--train_data_dir", "{images}", "--split", "validation", "--resolution", "8"],
     ["--split validation", "no such split", "train"]),
    ("image column missing", "train", ["--image_column", "pixels"],
     ["--image_column 'pixels' is not a column; columns: image, label; image columns: image"]),
    ("image column of labels", "train", ["--image_column", "label"],
     ["--image_column 'label' holds ClassLabel values, not images; image columns: image"]),
    ("no image column", "train", ["--dataset_name", "{root}/text_dataset", "--resolution", "8"],
     ["no image column found among the columns text", "--image_column NAME"]),
    ("empty folder", "train", ["--train_data_dir", "{root}/empty", "--resolution", "8"],
     ["empty holds no image files", "give a folder of images"]),
    ("folder without images", "train", ["--train_data_dir", "{root}/text_files", "--resolution", "8"],
     ["text_files holds no image files"]),
    ("empty dataset", "train", ["--dataset_name", "{root}/empty_dataset", "--resolution", "8"],
     ["empty_dataset: the saved dataset cannot be loaded", "it is empty or damaged", "save_to_disk"]),
    ("corrupt image with --strict", "train", ["--train_data_dir", "{corrupt}", "--resolution", "8", "--strict"],
     ["cannot read an image of --split train", "03.png", "leave out --strict"]),
    ("every image corrupt", "train", ["--train_data_dir", "{root}/all_corrupt", "--resolution", "8"],
     ["no readable image"]),
    ("batch larger than the data", "train", ["--train_data_dir", "{images}", "--resolution", "8",
                                             "--train_batch_size", "64"],
     ["the 12 training images are fewer than one batch of --train_batch_size 64", "--train_batch_size 12 or less"]),
    ("digits metric on other data", "train", ["--train_data_dir", "{images}", "--eval_metrics", "digits"],
     ["--eval_metrics digits applies to the embedded digits only"]),
    # models
    ("sample from a folder that is not a model", "sample", ["{notmodel}"],
     ["is not a model folder: no model_index.json", "save_pretrained"]),
    ("sample from nothing", "sample", ["{root}/no_such_model"], ["no_such_model: no such folder"]),
    ("model without weights", "sample", ["{no_weights}"],
     ["cannot load the pipeline", "diffusion_pytorch_model", "save it again"]),
    ("model without scheduler config", "sample", ["{no_scheduler}"],
     ["cannot load the pipeline", "scheduler_config.json", "save it again"]),
    ("truncated weights", "sample", ["{truncated}"],
     ["cannot load the pipeline", "Unable to load weights", "diffusion_pytorch_model.safetensors"]),
    ("config not matching the weights", "sample", ["{mismatch}"],
     ["cannot load the pipeline", "conv_in.weight expected shape", "of the same shapes"]),
    ("scheduler option out of range", "sample", ["{bad_schedule}"], ["cannot load the pipeline", "cosine-ish"]),
    ("scheduler variance type unknown", "sample", ["{bad_variance}"], ["cannot load the pipeline", "huge"]),
    ("sampling steps above T", "sample", ["{model}", "--num_inference_steps", "100"],
     ["--num_inference_steps 100: the model was trained with 20 timesteps; give at most 20"]),
    ("zero images", "sample", ["{model}", "--num_images", "0"], ["--num_images must be >= 1, got 0"]),
    ("evaluate a folder that is not a model", "evaluate", ["{notmodel}"], ["is not a saved pipeline or training run"]),
    ("evaluate an unknown metric", "evaluate", ["{model}", "--metrics", "fdi"], ["--metrics fdi: choose from"]),
    ("evaluate a model without weights", "evaluate", ["{no_weights}", "--metrics", "bpd"],
     ["diffusion_pytorch_model"]),
    ("evaluate a misspelt metric", "evaluate", ["{model}", "--metrics", "fidd"],
     ["choose from bpd, fid, kid, prc, digits"]),
    ("evaluate steps that are not integers", "evaluate", ["{model}", "--num_inference_steps", "5,x"],
     ["integers separated by commas"]),
    ("evaluate zero samples", "evaluate", ["{model}", "--num_samples", "0"], ["--num_samples must be >= 1"]),
    ("unknown command", "frobnicate", [], ["invalid choice"]),
    # recipes and settings that cannot work together, refused at parse time (a fresh output folder, no TINY flags)
    ("preset resolution", "train-fresh", ["--unet_preset", "ddpm-cifar10-32", "--resolution", "20"],
     ["divisible by 8 (e.g. 8, 16, 24, 32, 64); got 20"]),
    ("diffusers recipe resolution", "train-fresh", ["--recipe", "diffusers", "--resolution", "48"],
     ["divisible by 32"]),
    ("unknown recipe", "train-fresh", ["--recipe", "nope"], ["invalid choice"]),
    ("resume from a checkpoint that is not there", "train-fresh", ["--resume_from_checkpoint", "checkpoint-9"],
     ["no such checkpoint"]),
    ("resume from a folder that is not there", "train-fresh", ["--resume_from_checkpoint", "{root}/no/such/folder"],
     ["no such checkpoint"]),
    ("dropout above 1", "train-fresh", ["--dropout", "1.5"], ["--dropout must be in [0, 1)"]),
    ("inference steps above a smaller T", "train-fresh", ["--ddpm_num_steps", "500", "--ddpm_num_inference_steps",
                                                         "501"], ["cannot exceed --ddpm_num_steps"]),
    ("streaming with image epochs", "train-fresh", ["--streaming", "--max_train_steps", "9", "--save_images_epochs",
                                                    "2"], ["a --streaming run cannot"]),
    ("streaming with model epochs", "train-fresh", ["--streaming", "--max_train_steps", "9", "--save_model_epochs",
                                                    "2"], ["a --streaming run cannot"]),
    # distillation
    ("distil a teacher that is not a DDPM", "distill", ["{ddim_model}", "--output_dir", "{root}/distilled"],
     ["ddpm-hf distill: error: the teacher", "samples with DDIMScheduler", "needs a DDPM teacher"]),
    ("distil onto a grid of one point", "distill", ["{model}", "--num_teacher_steps", "1", "--output_dir",
                                                    "{root}/distilled"], ["--num_teacher_steps must be an integer in [2, 20]"]),
    ("distil a folder that is not a model", "distill", ["{notmodel}", "--output_dir", "{root}/distilled"],
     ["text_files is not a saved pipeline or training run: no model_index.json"]),
    ("distil with a negative learning rate", "distill", ["{model}", "--learning_rate=-1", "--output_dir",
                                                         "{root}/distilled"], ["--learning_rate must be > 0"]),
    ("distil a grayscale teacher on colour images", "distill", ["{model}", "--dataset_name", "{rgb_images}",
                                                                "--train_batch_size", "4", "--output_dir",
                                                                "{root}/distilled"],
     ["the teacher takes 1x8x8 images, the data is 3x"]),
    ("distil progressively from steps that do not halve to the student's", "distill",
     ["{model}", "--method", "progressive", "--num_teacher_steps", "12", "--output_dir", "{root}/distilled"],
     ["--num_teacher_steps 12 and --num_student_steps 1: progressive distillation halves the steps",
      "must be 1 x 2^r"]),
    ("distil progressively to a student whose grid does not divide T", "distill",
     ["{model}", "--method", "progressive", "--num_teacher_steps", "16", "--output_dir", "{root}/distilled"],
     ["a student of 8 steps needs the teacher's T = 20 to be a multiple of 8"]),
    ("ask consistency distillation for a progressive student's steps", "distill",
     ["{model}", "--method", "consistency", "--num_student_steps", "2", "--output_dir", "{root}/distilled"],
     ["--num_student_steps is progressive distillation's"]),
    ("give guidance scales to the student of an unconditional teacher", "distill",
     ["{model}", "--guidance_scales", "1", "2", "--output_dir", "{root}/distilled"],
     ["--guidance_scales only applies to a class-conditional teacher"]),
    ("distil by distribution matching to steps that progressive distillation cannot reach", "distill",
     ["{model}", "--num_student_steps", "3", "--output_dir", "{root}/distilled"],
     ["--num_teacher_steps 8 and --num_student_steps 3: progressive distillation halves the steps"]),
    ("give steps of a progressive phase to a refinement of a given student", "distill",
     ["{model}", "--init_student", "{model}", "--progressive_round_steps", "5", "--output_dir", "{root}/distilled"],
     ["--progressive_round_steps is the progressive phase's of distribution_matching without --init_student"]),
    ("refine by distribution matching a folder that is not a progressive student", "distill",
     ["{model}", "--method", "distribution_matching", "--init_student", "{model}", "--output_dir",
      "{root}/distilled"], ["is not a progressive student (DDIMScheduler, trailing"]),
    ("give a student to a method that does not refine one", "distill",
     ["{model}", "--method", "progressive", "--init_student", "{model}", "--output_dir", "{root}/distilled"],
     ["--init_student is distribution_matching's"]),
    # restoration
    ("inpaint a colour image with a grayscale model", "inpaint", ["{model}", "--image", "{rgb}", "--mask_image", "{gray}"],
     ["ddpm-hf inpaint: error: the image has 3 channels but the model takes 1"]),
    ("inpaint with a mask of another size", "inpaint", ["{model}", "--image", "{gray}", "--mask_image", "{small}"],
     ["ddpm-hf inpaint: error: ", "--mask_image is (4, 4) (H, W) but image is (8, 8)"]),
    ("upscale by a factor the model cannot take", "upscale", ["{model}", "--image", "{small}", "--scale", "3"],
     ["ddpm-hf upscale: error: ", "cannot take --scale 3"]),
    ("img2img strength above 1", "img2img", ["{model}", "--image", "{gray}", "--strength", "1.5"],
     ["ddpm-hf img2img: error: --strength must be in (0, 1]"]),
    ("img2img strength 0", "img2img", ["{model}", "--image", "{gray}", "--strength", "0"],
     ["--strength must be in (0, 1], got 0.0"]),
    ("denoise a negative noise level", "denoise", ["{model}", "--image", "{gray}", "--noise_level", "-1"],
     ["--noise_level must be > 0, got -1.0"]),
    ("denoise an image that is not there", "denoise", ["{model}", "--image", "{root}/missing.png", "--noise_level",
                                                       "0.1"], ["missing.png does not exist"]),
    ("upscale with noise by ILVR", "upscale", ["{model}", "--image", "{gray}", "--method", "ilvr", "--noise_level",
                                               "0.1"], ["--noise_level must be >= 0, and > 0 only with --method ddnm"]),
]


def _snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, world, capsys, monkeypatch, tmp_path):
    from accelerate.state import AcceleratorState

    from ddpm_hf.cli import main

    _, command, argv, parts = case
    argv = [a.format(**{k: str(v) for k, v in world.items()}) for a in argv]
    monkeypatch.chdir(world["root"])
    if command == "train-fresh":  # parse-time refusals: no TINY flags, a new output folder that must stay empty
        fresh = tmp_path / "fresh"
        argv = ["train", "--output_dir", str(fresh), *argv]
        watched = [fresh]
    elif command.startswith("train"):  # a copy per case: a case that wrongly trains spoils no other case
        run = tmp_path / "run"
        __import__("shutil").copytree(world["run"], run)
        argv = ["train", *TINY, "--output_dir", str(run), *argv]
        if command == "train":
            argv.append("--overwrite_output_dir")
        watched = [run]
    else:
        argv = [command, *argv] + (["--output_dir", str(world["samples"])] if command == "sample" else [])
        watched = [world["samples"]] + [p for p in map(__import__("pathlib").Path, argv[1:2]) if p.is_dir()]
    before = [_snapshot(folder) for folder in watched]
    with pytest.raises(SystemExit) as stop:
        try:
            main(argv)
        finally:
            AcceleratorState._reset_state(True)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err[-2000:]
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if ": error: " in line][-1]
    for part in parts:
        assert part in message, message
    assert [_snapshot(folder) for folder in watched] == before


@pytest.mark.slow
def test_as_a_real_command(world, tmp_path):
    """The CLI itself (one process, a real exit code): a Hub dataset id that cannot be reached (offline here) is named
    with what to check, no traceback, the run folder untouched."""
    before = _snapshot(world["run"])
    for argv, part in (
        (["train", "--dataset_name", "nobody/no-such-dataset", "--overwrite_output_dir"],
         "--dataset_name nobody/no-such-dataset: the dataset could not be loaded"),
    ):
        cmd = [sys.executable, "-m", "ddpm_hf.cli", *argv]
        if argv[0] == "train":
            cmd += [*TINY, "--output_dir", str(world["run"])]
        r = subprocess.run(cmd, cwd=tmp_path, env=train_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert part in [line for line in r.stderr.splitlines() if ": error: " in line][-1]
    assert _snapshot(world["run"]) == before


def test_corrupt_image_is_skipped_and_named(world, capsys):
    """Without --strict a corrupt file and a truncated one are skipped, named and counted; the other images are used
    (cached or streamed)."""
    from argparse import Namespace

    from ddpm_hf.data import prepare_data

    args = Namespace(dataset_name=None, dataset_config_name=None, train_data_dir=str(world["corrupt"]),
                     cache_dir=None, split="train", streaming=False, image_column=None, channels=None, resolution=8,
                     center_crop=True, train_batch_size=2, seed=0, eval_split="", strict=False,
                     shuffle_buffer_size=10)
    batches, _, channels, _ = prepare_data(args, 0, 1, progress=False)
    err = capsys.readouterr().err
    assert len(batches.images) == 6 and channels == 1
    assert "skipped an unreadable image of --split train:" in err and "03.png" in err and "05.png" in err
    assert "skipped 2 of 8 images of --split train that could not be read" in err
    args.streaming = True  # streamed: skipped and named as the stream reaches it, every pass
    batches, _, _, _ = prepare_data(args, 0, 1, progress=False)
    assert [tuple(batches.batch(k).shape) for k in range(4)] == [(2, 1, 8, 8)] * 4
    err = capsys.readouterr().err
    assert "skipped an unreadable image of the stream:" in err and "03.png" in err and "05.png" in err


def test_mixed_image_modes_train_in_colour(tmp_path, capsys):
    """L, LA, RGB, RGBA, P, I;16 and CMYK (JPEG) files in one folder: all read, the folder trains in RGB (one
    colour image is enough), 16-bit grayscale is scaled to 8 bits; a grayscale-only mix (L, LA, I;16) stays one
    channel."""
    from argparse import Namespace

    from ddpm_hf.data import prepare_data

    modes = ("L", "LA", "RGB", "RGBA", "P", "I;16", "CMYK")
    folder = _images(tmp_path / "mixed", n=14, modes=modes, size=(10, 8))
    gray = _images(tmp_path / "gray", n=6, modes=("L", "LA", "I;16"))
    with Image.open(next(folder.glob("*.jpg"))) as jpeg:
        assert jpeg.mode == "CMYK"
    for path, expected in ((folder, 3), (gray, 1)):
        args = Namespace(dataset_name=None, dataset_config_name=None, train_data_dir=str(path), cache_dir=None,
                         split="train", streaming=False, image_column=None, channels=None, resolution=8,
                         center_crop=True, train_batch_size=2, seed=0, eval_split="", strict=True)
        batches, _, channels, _ = prepare_data(args, 0, 1, progress=False)
        assert channels == expected and batches.images.shape[1:] == (expected, 8, 8)
        assert len(batches.images) == len(list(path.iterdir()))
    sixteen = np.asarray(Image.open(gray / "02.png"))
    assert sixteen.dtype == np.uint16 and sixteen.max() > 255  # really 16-bit on disk, 8-bit after loading
    assert "skipped" not in capsys.readouterr().err


def test_library_errors_name_settings_the_cli_names_flags(tmp_path):
    """Below the CLI an error names the setting (``output_dir``), never a flag; only the CLI's ``flag_message``
    spells it ``--output_dir``. Braces in a value (a path) are taken verbatim, not as a setting."""
    from ddpm_hf.cli.common import flag_message
    from ddpm_hf.data import load_image_dataset
    from ddpm_hf.errors import MissingSplit, OutputDirError
    from ddpm_hf.run_dir import check_output_dir

    taken = tmp_path / "a {file}"
    taken.write_text("x")
    with pytest.raises(OutputDirError) as caught:
        check_output_dir(str(taken))
    assert str(caught.value).startswith(f"output_dir {taken} is a file") and "--" not in str(caught.value)
    assert flag_message(caught.value) == (f"--output_dir {taken} is a file, not a folder: choose another "
                                          "--output_dir (or move the file away)")
    with pytest.raises(MissingSplit) as caught:
        load_image_dataset("digits", None, None, None, "validation")
    assert str(caught.value).startswith("split validation: ") and "--" not in str(caught.value)
    assert flag_message(caught.value).startswith("--split validation: ")


def test_a_failed_push_says_how_to_resume_in_the_library_and_on_the_command_line(tmp_path):
    """A push that failed (hub.push_failed, what training and `ddpm-hf push` raise or print): the library's message
    resumes with ``push_run`` and its arguments and spells no flag; the CLI's gives the `ddpm-hf push` command with
    the same repo, branch and privacy. Neither holds the token, only that one is needed."""
    from ddpm_hf.cli.common import flag_message
    from ddpm_hf.hub import push_failed

    run, token = tmp_path / "my run", "hf_not_a_real_token_value_222222222"
    error = push_failed(OSError(f"refused for {token}"), run, "ns/x", private=True, revision="dev", token=token)
    library, cli = str(error), flag_message(error)
    assert library.startswith("the upload to ns/x (branch dev) failed: OSError: refused for <token>\n")
    assert library.endswith(f"\n  ddpm_hf.hub.push_run({str(run)!r}, 'ns/x', private=True, revision='dev', "
                            "token=<the same token>)") and "--" not in library
    assert cli.splitlines()[:2] == library.splitlines()[:2]
    assert cli.endswith(f"\n  ddpm-hf push '{run}' --hub_model_id ns/x --hub_revision dev --hub_private_repo\n"
                        "(adding the same --hub_token, or with HF_TOKEN set)")
    assert token not in library + cli
    plain = push_failed(KeyboardInterrupt(), run, "ns/x")
    assert str(plain).startswith("the upload to ns/x was interrupted\n")
    assert flag_message(plain).endswith(f"\n  ddpm-hf push '{run}' --hub_model_id ns/x")
