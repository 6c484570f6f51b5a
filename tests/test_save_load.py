"""Saving and loading DDPMHFPipeline: the remote-code layout, loading it with and without ddpm_hf, interoperability
with diffusers' DDPMPipeline / DDPMScheduler, and the round trip through a (loopback) Hub.

Everything is real: files on disk, fresh Python subprocesses, HTTP to tests/hub_server.HubServer on 127.0.0.1.

"Without ddpm_hf" means a subprocess whose ``-c`` code starts by putting an import blocker at the front of
``sys.meta_path`` that raises ImportError for ``ddpm_hf`` and ``ddpm_hf.*`` (the package is installed editable in the
venv, so it would otherwise be importable); the subprocess asserts that ``import ddpm_hf`` fails, and at the end that
no module of the package was imported and no module was loaded from the package's source folder. Every subprocess
also refuses name lookups and connections that are not loopback, so nothing can silently reach the real Hub.
"""

import copy
import json
import logging
import os
import re
import runpy
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging

import ddpm_hf
from ddpm_hf import DDPMHFPipeline, DDPMHFScheduler, build_unet
from ddpm_hf import pipeline_ddpm_hf as pipeline_module
from ddpm_hf import scheduling_ddpm_hf as scheduling_module

from helpers import BATCH, PACKAGE_DIR, SEED, STEPS, hub_env, local_env, run_python

# Non-default values, so that a config that is lost or mangled on the way changes the images.
SCHEDULER_KWARGS = dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing")
# In-process sampling on one thread too, as the subprocesses (helpers.THREADS).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ------------------------------------------------------------------------------------------------ helpers


def generate(pipe, seed=SEED):
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        batch_size=BATCH, generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=STEPS,
        output_type="np",
    ).images


def public_config(config):
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def tree(folder):
    """{relative posix path: bytes} of every file under ``folder`` (the huggingface_hub .cache folder excluded)."""
    out = {}
    for dirpath, _dirs, files in os.walk(folder):
        for fn in files:
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if not rel.startswith(".cache/"):
                with open(full, "rb") as f:
                    out[rel] = f.read()
    return out


def json_strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from json_strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from json_strings(v)


def leaks_in_json(folder, extra_forbidden=()):
    """Absolute paths, tokens or ``_name_or_path`` entries in the .json files of ``folder``: a list of findings."""
    findings = []
    forbidden = [os.path.expanduser("~"), os.fspath(folder), *map(os.fspath, extra_forbidden)]
    for rel, data in tree(folder).items():
        if not rel.endswith(".json"):
            continue
        text = data.decode("utf-8")
        obj = json.loads(text)
        if isinstance(obj, dict) and "_name_or_path" in obj:
            findings.append(f"{rel}: _name_or_path = {obj['_name_or_path']!r}")
        for s in json_strings(obj):
            if os.path.isabs(s) or re.match(r"^[A-Za-z]:[\\/]", s):
                findings.append(f"{rel}: absolute path {s!r}")
            if re.search(r"\bhf_[A-Za-z0-9]{6,}", s):
                findings.append(f"{rel}: token-like string {s!r}")
        for bad in forbidden:
            if bad and bad != os.sep and bad in text:
                findings.append(f"{rel}: contains {bad!r}")
    return findings


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A DDPMHFPipeline (cpu-8 UNet, non-default scheduler) saved with save_pretrained, and its reference images."""
    torch.manual_seed(0)
    pipe = DDPMHFPipeline(unet=build_unet("cpu-8").eval(), scheduler=DDPMHFScheduler(**SCHEDULER_KWARGS))
    folder = tmp_path_factory.mktemp("saved") / "ddpm-hf-cpu8"
    pipe.save_pretrained(folder)
    images = generate(pipe)
    assert images.shape == (BATCH, 8, 8, 1) and images.dtype == np.float32
    # a meaningful reference: neither constant nor saturated, and the seed matters
    assert images.std() > 0.05 and ((images > 0) & (images < 1)).mean() > 0.3
    assert np.abs(generate(pipe, seed=SEED + 1) - images).max() > 0.05
    return SimpleNamespace(pipe=pipe, folder=folder, images=images)


# ------------------------------------------------------------------------------------------------ 1. layout


def test_save_pretrained_layout(saved):
    folder = saved.folder
    files = tree(folder)
    assert sorted(files) == [
        "model_index.json",
        "pipeline_ddpm_hf.py",
        "pipeline_ddpm_hf_denoiser.py",
        "pipeline_ddpm_hf_hub.py",
        "pipeline_ddpm_hf_img2img.py",
        "pipeline_ddpm_hf_inpaint.py",
        "pipeline_ddpm_hf_layout.py",
        "pipeline_ddpm_hf_super_resolution.py",
        "pipeline_ddpm_hf_task_base.py",
        "scheduler/scheduler_config.json",
        "scheduler/scheduling_ddpm_hf.py",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]

    index = json.loads(files["model_index.json"])
    assert index["_class_name"] == ["pipeline_ddpm_hf", "DDPMHFPipeline"]
    assert index["scheduler"] == ["scheduling_ddpm_hf", "DDPMHFScheduler"]
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert "_name_or_path" not in index

    # the copied code is the package's own source, byte for byte
    with open(pipeline_module.__file__, "rb") as f:
        assert files["pipeline_ddpm_hf.py"] == f.read()
    with open(scheduling_module.__file__, "rb") as f:
        assert files["scheduler/scheduling_ddpm_hf.py"] == f.read()

    # weights are safetensors (and hold the UNet's state dict exactly)
    from safetensors.torch import load_file

    assert not any(rel.endswith((".bin", ".pt", ".pth", ".ckpt")) for rel in files)
    state = load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    expected = saved.pipe.unet.state_dict()
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name

    scheduler_config = json.loads(files["scheduler/scheduler_config.json"])
    assert scheduler_config["_class_name"] == "DDPMHFScheduler"
    assert public_config(scheduler_config) == public_config(saved.pipe.scheduler.config)
    unet_config = json.loads(files["unet/config.json"])
    assert unet_config["_class_name"] == "UNet2DModel" and unet_config["sample_size"] == 8
    assert unet_config["in_channels"] == unet_config["out_channels"] == 1

    assert leaks_in_json(folder, extra_forbidden=[PACKAGE_DIR]) == []


def test_save_pretrained_with_a_diffusers_scheduler_keeps_its_entry(saved, tmp_path):
    pipe = DDPMHFPipeline(unet=saved.pipe.unet, scheduler=DDPMScheduler(**SCHEDULER_KWARGS))
    pipe.save_pretrained(tmp_path / "out")
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ddpm_hf", "DDPMHFPipeline"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert not (tmp_path / "out" / "scheduler" / "scheduling_ddpm_hf.py").exists()
    loaded = DDPMHFPipeline.from_pretrained(tmp_path / "out")
    assert type(loaded.scheduler) is DDPMHFScheduler
    np.testing.assert_allclose(generate(loaded), saved.images, rtol=0, atol=1e-6)


def test_resaving_a_loaded_pipeline_leaks_no_absolute_path(saved, tmp_path):
    loaded = DDPMHFPipeline.from_pretrained(saved.folder)
    loaded.save_pretrained(tmp_path / "resaved")
    assert leaks_in_json(tmp_path / "resaved", extra_forbidden=[saved.folder]) == []


# ------------------------------------------------------------------------------------------------ 2. remote code


@pytest.mark.slow
def test_remote_code_load_without_ddpm_hf(saved, tmp_path):
    out = run_python(
        """
        import inspect, os
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(ARGS["folder"], trust_remote_code=True)
        images = generate(pipe)
        np.save(ARGS["out"], images)
        # the remote class's own from_pretrained (no folder code of its own) also works without ddpm_hf
        again = type(pipe).from_pretrained(ARGS["folder"])
        np.save(ARGS["out_again"], generate(again))
        result({
            "pipeline": [type(pipe).__name__, type(pipe).__module__, inspect.getsourcefile(type(pipe))],
            "scheduler": [type(pipe.scheduler).__name__, type(pipe.scheduler).__module__,
                          inspect.getsourcefile(type(pipe.scheduler))],
            "unet": [type(pipe.unet).__name__, type(pipe.unet).__module__],
            "again": [type(again).__name__, type(again.scheduler).__name__, type(again.scheduler).__module__],
            "scheduler_config": public_config(pipe.scheduler.config),
            "modules_cache": os.environ["HF_MODULES_CACHE"],
        })
        """,
        {"folder": str(saved.folder), "out": str(tmp_path / "images.npy"), "out_again": str(tmp_path / "again.npy")},
        env=local_env(tmp_path),
        block_ddpm_hf=True,
    )
    pipeline_name, pipeline_mod, pipeline_file = out["pipeline"]
    scheduler_name, scheduler_mod, scheduler_file = out["scheduler"]
    assert pipeline_name == "DDPMHFPipeline" and scheduler_name == "DDPMHFScheduler"
    assert not pipeline_mod.startswith("ddpm_hf") and not scheduler_mod.startswith("ddpm_hf")
    assert pipeline_mod.startswith("diffusers_modules.") and scheduler_mod.startswith("diffusers_modules.")
    # the code that ran is the folder's, copied into the (temporary) modules cache
    for path in (pipeline_file, scheduler_file):
        assert os.path.abspath(path).startswith(out["modules_cache"] + os.sep), path
    assert out["unet"] == ["UNet2DModel", "diffusers.models.unets.unet_2d"]
    assert out["scheduler_config"] == public_config(saved.pipe.scheduler.config)
    assert out["again"][:2] == ["DDPMHFPipeline", "DDPMHFScheduler"]
    assert not out["again"][2].startswith("ddpm_hf")

    images = np.load(tmp_path / "images.npy")
    assert images.shape == saved.images.shape
    np.testing.assert_allclose(images, saved.images, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "again.npy"), saved.images, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ 3. no folder code

_HOSTILE = """\
import pathlib
pathlib.Path({marker!r}).write_text("executed {name}")
raise RuntimeError("code from the saved folder was executed: {name}")
"""


def make_hostile(folder, marker):
    """Replace the saved code files under ``folder`` with code that writes ``marker`` and raises; return them."""
    hostile_files = [path for path in (folder / "pipeline_ddpm_hf.py", folder / "scheduler" / "scheduling_ddpm_hf.py")
                     if path.exists()]
    assert hostile_files
    for path in hostile_files:
        path.write_text(_HOSTILE.format(marker=str(marker), name=path.name))
    return hostile_files


def test_package_from_pretrained_executes_no_folder_code(saved, tmp_path):
    folder = tmp_path / "tampered"
    shutil.copytree(saved.folder, folder)
    marker = tmp_path / "MARKER"
    hostile_files = make_hostile(folder, marker)
    assert len(hostile_files) == 2
    # positive control: the replaced files do write the marker and raise when executed
    for path in hostile_files:
        with pytest.raises(RuntimeError, match="was executed"):
            runpy.run_path(str(path))
        assert marker.exists()
        marker.unlink()

    modules_before = set(sys.modules)
    for kwargs in ({}, {"trust_remote_code": True}):
        pipe = DDPMHFPipeline.from_pretrained(folder, **kwargs)
        assert not marker.exists()
        assert type(pipe) is ddpm_hf.DDPMHFPipeline
        assert type(pipe.scheduler) is ddpm_hf.DDPMHFScheduler
        assert type(pipe.unet) is UNet2DModel
        assert public_config(pipe.scheduler.config) == public_config(saved.pipe.scheduler.config)
        np.testing.assert_allclose(generate(pipe), saved.images, rtol=0, atol=1e-6)
    new_modules = set(sys.modules) - modules_before
    from_folder = [
        n for n in new_modules
        if getattr(sys.modules[n], "__file__", None) and str(sys.modules[n].__file__).startswith(str(tmp_path))
    ]
    assert from_folder == [] and not any(n.startswith("diffusers_modules") for n in new_modules), new_modules
    assert not marker.exists()


def test_package_from_pretrained_refuses_other_folder_code_even_with_trust_remote_code(saved, tmp_path):
    """from_pretrained hands the folder to DiffusionPipeline.from_pretrained but never passes trust_remote_code on:
    a component whose class only the folder's code defines is refused, not run."""
    folder = tmp_path / "other-code"
    shutil.copytree(saved.folder, folder)
    marker = tmp_path / "MARKER"
    make_hostile(folder, marker)
    other = folder / "scheduler" / "scheduling_other.py"
    other.write_text(_HOSTILE.format(marker=str(marker), name=other.name))
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["scheduling_other", "OtherScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    for kwargs in ({}, {"trust_remote_code": True}):
        with pytest.raises(ValueError, match="trust_remote_code"):
            DDPMHFPipeline.from_pretrained(folder, **kwargs)
        assert not marker.exists()


# ------------------------------------------------------------------------------------------------ 4. interop


def test_diffusers_ddpm_pipeline_folder_loads_into_ddpmhf(saved, tmp_path):
    theirs = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large", clip_sample=False)
    reference = DDPMPipeline(unet=saved.pipe.unet, scheduler=theirs)
    folder = tmp_path / "ddpm-cifar10-layout"
    reference.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"] and index["unet"] == ["diffusers", "UNet2DModel"]
    assert not any(rel.endswith(".py") for rel in tree(folder))

    ours = DDPMHFPipeline.from_pretrained(folder)
    assert type(ours) is DDPMHFPipeline and type(ours.scheduler) is DDPMHFScheduler
    assert public_config(ours.scheduler.config) == public_config(theirs.config)
    assert ours.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert ours.scheduler.config.variance_type == "fixed_large" and ours.scheduler.config.clip_sample is False

    expected = generate(reference)
    got = generate(ours)
    assert ((expected > 0) & (expected < 1)).any()  # not fully saturated
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)

    # The unclamped numbers agree too (the images above saturate with clip_sample=False): one reverse step each.
    ours_s, theirs_s = ours.scheduler, DDPMScheduler.from_config(theirs.config)
    ours_s.set_timesteps(STEPS)
    theirs_s.set_timesteps(STEPS)
    assert ours_s.timesteps.tolist() == theirs_s.timesteps.tolist()
    x = torch.randn(BATCH, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for t in ours_s.timesteps:
        eps = saved.pipe.unet(x, t).sample.detach()
        a = ours_s.step(eps, t, x, generator=torch.Generator().manual_seed(int(t))).prev_sample
        b = theirs_s.step(eps, t, x, generator=torch.Generator().manual_seed(int(t))).prev_sample
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_scheduler_configs_round_trip_with_diffusers(saved, tmp_path):
    kwargs = dict(
        num_train_timesteps=500, beta_start=0.0002, beta_end=0.03, beta_schedule="squaredcos_cap_v2",
        variance_type="fixed_large", clip_sample=False, prediction_type="v_prediction", thresholding=True,
        dynamic_thresholding_ratio=0.9, clip_sample_range=1.5, sample_max_value=2.0, timestep_spacing="trailing",
        steps_offset=1,
    )
    ours = DDPMHFScheduler(**kwargs)
    folder = tmp_path / "ours"
    DDPMHFPipeline(unet=saved.pipe.unet, scheduler=ours).save_pretrained(folder)
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "DDPMHFScheduler"

    theirs = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    assert type(theirs) is DDPMScheduler
    assert public_config(theirs.config) == public_config(ours.config)
    for name, value in kwargs.items():
        assert theirs.config[name] == value, name
    torch.testing.assert_close(theirs.alphas_cumprod, ours.alphas_cumprod, rtol=0, atol=0)

    theirs.save_pretrained(tmp_path / "theirs")
    back = DDPMHFScheduler.from_pretrained(tmp_path / "theirs")
    assert type(back) is DDPMHFScheduler
    assert public_config(back.config) == public_config(ours.config)

    from_ours = DDPMScheduler.from_config(ours.config)
    assert type(from_ours) is DDPMScheduler and public_config(from_ours.config) == public_config(ours.config)
    from_theirs = DDPMHFScheduler.from_config(theirs.config)
    assert type(from_theirs) is DDPMHFScheduler and public_config(from_theirs.config) == public_config(theirs.config)


# ------------------------------------------------------------------------------------------ 5. diffusers' arguments


@pytest.fixture
def folders(saved, tmp_path):
    """``ours``: the saved remote-code folder with its code files replaced by hostile ones (``marker``);
    ``theirs``: the same UNet saved by diffusers' DDPMPipeline with a DDPMScheduler of the same config, the oracle
    for what DiffusionPipeline.from_pretrained does with an argument."""
    ours = tmp_path / "ours"
    shutil.copytree(saved.folder, ours)
    marker = tmp_path / "MARKER"
    make_hostile(ours, marker)
    theirs = tmp_path / "theirs"
    DDPMPipeline(unet=saved.pipe.unet, scheduler=DDPMScheduler(**SCHEDULER_KWARGS)).save_pretrained(theirs)
    yield SimpleNamespace(ours=ours, theirs=theirs, marker=marker)
    assert not marker.exists(), "code from the saved folder was executed"


@pytest.fixture
def diffusers_warnings(caplog):
    """caplog that also sees the diffusers.* records (diffusers' root logger does not propagate by default)."""
    root = logging.getLogger("diffusers")
    propagate = root.propagate
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            yield caplog
    finally:
        root.propagate = propagate


def remove_one_weight(folder):
    """Drop one tensor from the folder's UNet checkpoint; return its name."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")
    state = load_file(path)
    name = sorted(state)[-1]
    del state[name]
    save_file(state, path, metadata={"format": "pt"})
    return name


@pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")
@pytest.mark.parametrize("argument", ["torch_dtype", "dtype"])
def test_from_pretrained_dtype_reaches_the_unet(saved, folders, argument):
    pipe = DDPMHFPipeline.from_pretrained(folders.ours, **{argument: torch.float64})
    reference = DDPMPipeline.from_pretrained(folders.theirs, **{argument: torch.float64})
    assert reference.unet.dtype == torch.float64  # what diffusers does with the argument
    assert type(pipe) is DDPMHFPipeline and type(pipe.scheduler) is DDPMHFScheduler
    assert pipe.unet.dtype == torch.float64
    params = dict(pipe.unet.named_parameters())
    for name, tensor in saved.pipe.unet.named_parameters():
        assert params[name].dtype == torch.float64 and torch.equal(params[name], tensor.double()), name
    # it samples as the saved pipeline does when converted to float64 (float64 noise is not float32 noise)
    converted = DDPMHFPipeline(unet=copy.deepcopy(saved.pipe.unet).double(), scheduler=saved.pipe.scheduler)
    np.testing.assert_allclose(generate(pipe), generate(converted), rtol=0, atol=1e-6)


def test_from_pretrained_device_map_reaches_the_unet(saved, folders):
    pipe = DDPMHFPipeline.from_pretrained(folders.ours, device_map="cpu")
    reference = DDPMPipeline.from_pretrained(folders.theirs, device_map="cpu")
    assert type(pipe) is DDPMHFPipeline and type(pipe.scheduler) is DDPMHFScheduler
    assert pipe.hf_device_map == reference.hf_device_map == "cpu"
    # the UNet was dispatched by accelerate, as diffusers' own pipeline's is
    assert pipe.unet.hf_device_map == reference.unet.hf_device_map == {"": torch.device("cpu")}
    np.testing.assert_allclose(generate(pipe), saved.images, rtol=0, atol=1e-6)


def test_from_pretrained_low_cpu_mem_usage_reaches_the_unet(folders):
    """With low_cpu_mem_usage=True diffusers builds the UNet on the meta device and fills in the checkpoint, so a
    weight the checkpoint lacks stays on the meta device; with False it is a real tensor."""
    missing = remove_one_weight(folders.ours)
    assert remove_one_weight(folders.theirs) == missing
    for low_cpu_mem_usage in (True, False):
        pipe = DDPMHFPipeline.from_pretrained(folders.ours, low_cpu_mem_usage=low_cpu_mem_usage)
        reference = DDPMPipeline.from_pretrained(folders.theirs, low_cpu_mem_usage=low_cpu_mem_usage)
        unet = UNet2DModel.from_pretrained(folders.ours, subfolder="unet", low_cpu_mem_usage=low_cpu_mem_usage)
        on_meta = [dict(m.named_parameters())[missing].is_meta for m in (pipe.unet, reference.unet, unet)]
        assert on_meta == [low_cpu_mem_usage] * 3, (low_cpu_mem_usage, on_meta)
        # the weights the checkpoint has are loaded either way
        assert not dict(pipe.unet.named_parameters())["conv_in.weight"].is_meta


def test_from_pretrained_unknown_argument_is_ignored_with_a_warning_as_in_diffusers(saved, folders,
                                                                                     diffusers_warnings):
    reference = DDPMPipeline.from_pretrained(folders.theirs, not_a_loading_argument=1)
    theirs = [r.getMessage() for r in diffusers_warnings.records if "not_a_loading_argument" in r.getMessage()]
    diffusers_warnings.clear()
    pipe = DDPMHFPipeline.from_pretrained(folders.ours, not_a_loading_argument=1)
    ours = [r.getMessage() for r in diffusers_warnings.records if "not_a_loading_argument" in r.getMessage()]
    assert type(reference) is DDPMPipeline and type(pipe) is DDPMHFPipeline
    assert len(theirs) == len(ours) == 1
    assert ours == [theirs[0].replace("DDPMPipeline", "DDPMHFPipeline")]
    assert "ignored" in ours[0]
    np.testing.assert_allclose(generate(pipe), saved.images, rtol=0, atol=1e-6)


def test_from_pretrained_refuses_custom_pipeline(folders):
    with pytest.raises(ValueError, match="custom_pipeline"):
        DDPMHFPipeline.from_pretrained(folders.ours, custom_pipeline=str(folders.ours / "pipeline_ddpm_hf.py"))


def test_from_pretrained_logs_the_ddpm_scheduler_conversion(saved, tmp_path, caplog):
    # our layout with a diffusers DDPMScheduler, and hostile code beside it
    folder = tmp_path / "with-ddpm-scheduler"
    DDPMHFPipeline(unet=saved.pipe.unet, scheduler=DDPMScheduler(**SCHEDULER_KWARGS)).save_pretrained(folder)
    assert json.loads((folder / "model_index.json").read_text())["scheduler"] == ["diffusers", "DDPMScheduler"]
    marker = tmp_path / "MARKER"
    make_hostile(folder, marker)
    logger_name = "ddpm_hf.pipeline_ddpm_hf_layout"  # where from_pretrained lives (DDPMHFLayoutMixin)

    def conversions(**kwargs):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=logger_name):
            pipe = DDPMHFPipeline.from_pretrained(folder, **kwargs)
        messages = [r.getMessage() for r in caplog.records if r.name == logger_name]
        return pipe, [m for m in messages if "DDPMScheduler" in m and "DDPMHFScheduler" in m]

    pipe, logged = conversions()
    assert type(pipe.scheduler) is DDPMHFScheduler
    assert public_config(pipe.scheduler.config) == public_config(saved.pipe.scheduler.config)
    assert len(logged) == 1 and str(folder) in logged[0]
    np.testing.assert_allclose(generate(pipe), saved.images, rtol=0, atol=1e-6)

    # a passed scheduler is used as it is: nothing converted, nothing logged
    pipe, logged = conversions(scheduler=DDPMScheduler(**SCHEDULER_KWARGS))
    assert type(pipe.scheduler) is DDPMScheduler and logged == []
    assert not marker.exists()

    # a saved DDPMHFScheduler needs no conversion
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=logger_name):
        DDPMHFPipeline.from_pretrained(saved.folder)
    assert not [r for r in caplog.records if r.name == logger_name and "DDPMScheduler" in r.getMessage()]


# ------------------------------------------------------------------------------------------------ 6. loopback Hub


@pytest.mark.slow
def test_hub_remote_code_load_without_ddpm_hf(saved, hub, tmp_path):
    sha = hub.seed_repo("ns/ddpm-cpu8", saved.folder)
    out = run_python(
        """
        import inspect
        from diffusers import DiffusionPipeline

        try:
            DiffusionPipeline.from_pretrained(ARGS["repo"])
            refused = None
        except ValueError as e:
            refused = str(e)
        pipe = DiffusionPipeline.from_pretrained(ARGS["repo"], trust_remote_code=True)
        np.save(ARGS["out"], generate(pipe))
        result({
            "refused": refused,
            "pipeline": [type(pipe).__name__, type(pipe).__module__],
            "scheduler": [type(pipe.scheduler).__name__, type(pipe.scheduler).__module__],
            "scheduler_config": public_config(pipe.scheduler.config),
        })
        """,
        {"repo": "ns/ddpm-cpu8", "out": str(tmp_path / "images.npy")},
        env=hub_env(hub, tmp_path),
        block_ddpm_hf=True,
    )
    assert out["refused"] is not None and "trust_remote_code" in out["refused"]
    assert out["pipeline"][0] == "DDPMHFPipeline" and out["scheduler"][0] == "DDPMHFScheduler"
    assert not out["pipeline"][1].startswith("ddpm_hf") and not out["scheduler"][1].startswith("ddpm_hf")
    assert out["scheduler_config"] == public_config(saved.pipe.scheduler.config)
    np.testing.assert_allclose(np.load(tmp_path / "images.npy"), saved.images, rtol=0, atol=1e-6)
    # the code and the weights came from the loopback Hub
    for path in ("pipeline_ddpm_hf.py", "scheduler/scheduling_ddpm_hf.py", "unet/diffusion_pytorch_model.safetensors"):
        assert ("GET", f"/ns/ddpm-cpu8/resolve/{sha}/{path}") in hub.requests, path


@pytest.mark.slow
def test_hub_load_with_package(saved, hub, tmp_path):
    sha = hub.seed_repo("ns/ddpm-cpu8", saved.folder)
    out = run_python(
        """
        import os
        import ddpm_hf
        from ddpm_hf import DDPMHFPipeline

        # with diffusers' Hub and loading arguments
        pipe = DDPMHFPipeline.from_pretrained(ARGS["repo"], revision="main", device_map="cpu", low_cpu_mem_usage=True)
        np.save(ARGS["out"], generate(pipe))
        cache = os.environ["HF_MODULES_CACHE"]
        result({
            "own_classes": type(pipe) is ddpm_hf.DDPMHFPipeline and type(pipe.scheduler) is ddpm_hf.DDPMHFScheduler,
            "pipeline": f"{type(pipe).__module__}.{type(pipe).__name__}",
            "scheduler": f"{type(pipe.scheduler).__module__}.{type(pipe.scheduler).__name__}",
            "dynamic_modules": sorted(n for n in sys.modules if n.startswith("diffusers_modules")),
            "modules_cache_files": sorted(
                os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs if f.endswith(".py")
            ) if os.path.isdir(cache) else [],
            "name_or_path": pipe.config._name_or_path,
            "scheduler_config": public_config(pipe.scheduler.config),
            "device_maps": [pipe.hf_device_map, str(pipe.unet.hf_device_map[""])],
        })
        """,
        {"repo": "ns/ddpm-cpu8", "out": str(tmp_path / "images.npy")},
        env=hub_env(hub, tmp_path),
    )
    assert out["own_classes"] is True
    assert out["device_maps"] == ["cpu", "cpu"]
    assert out["pipeline"] == "ddpm_hf.pipeline_ddpm_hf.DDPMHFPipeline"
    assert out["scheduler"] == "ddpm_hf.scheduling_ddpm_hf.DDPMHFScheduler"
    assert out["dynamic_modules"] == [] and out["modules_cache_files"] == []
    assert out["name_or_path"] == "ns/ddpm-cpu8"
    assert out["scheduler_config"] == public_config(saved.pipe.scheduler.config)
    np.testing.assert_allclose(np.load(tmp_path / "images.npy"), saved.images, rtol=0, atol=1e-6)
    assert ("GET", f"/ns/ddpm-cpu8/resolve/{sha}/unet/diffusion_pytorch_model.safetensors") in hub.requests


@pytest.mark.slow
def test_hub_push_to_hub(saved, hub, tmp_path):
    out_dir = tmp_path / "pushed-local"
    out = run_python(
        """
        from ddpm_hf import DDPMHFPipeline

        pipe = DDPMHFPipeline.from_pretrained(ARGS["folder"])
        pipe.save_pretrained(ARGS["out_dir"], push_to_hub=True, repo_id=ARGS["repo"], commit_message="push test")
        # and back from the Hub
        again = DDPMHFPipeline.from_pretrained(ARGS["repo"])
        np.save(ARGS["out"], generate(again))
        result({"scheduler": type(again.scheduler).__name__})
        """,
        {"folder": str(saved.folder), "out_dir": str(out_dir), "repo": "ns/pushed",
         "out": str(tmp_path / "images.npy")},
        env=hub_env(hub, tmp_path),
    )
    assert out["scheduler"] == "DDPMHFScheduler"
    assert hub.repo_exists("ns/pushed")
    assert ("POST", "/api/repos/create") in hub.requests
    assert ("POST", "/api/models/ns/pushed/commit/main") in hub.requests
    assert hub.commit_count("ns/pushed") == 2  # the initial commit and the upload

    stored = tree(hub.repo_dir("ns/pushed"))
    for rel in ("model_index.json", "pipeline_ddpm_hf.py", "scheduler/scheduling_ddpm_hf.py",
                "scheduler/scheduler_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"):
        assert rel in stored, rel
    assert stored == tree(out_dir)  # exactly the saved folder, byte for byte
    with open(pipeline_module.__file__, "rb") as f:
        assert stored["pipeline_ddpm_hf.py"] == f.read()
    with open(scheduling_module.__file__, "rb") as f:
        assert stored["scheduler/scheduling_ddpm_hf.py"] == f.read()
    assert stored["unet/diffusion_pytorch_model.safetensors"] == tree(saved.folder)[
        "unet/diffusion_pytorch_model.safetensors"]
    assert json.loads(stored["model_index.json"])["_class_name"] == ["pipeline_ddpm_hf", "DDPMHFPipeline"]
    np.testing.assert_allclose(np.load(tmp_path / "images.npy"), saved.images, rtol=0, atol=1e-6)
