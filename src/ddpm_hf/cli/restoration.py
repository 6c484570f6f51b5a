"""``ddpm-hf inpaint | upscale | img2img | denoise``: restore an image with a trained model, no retraining.

Each command writes the result at its native size (``<stem>_<command>.png``) and a labelled before/after strip,
upscaled so that an 8x8 digit is visible (``<stem>_<command>_strip.png``), into ``--output_dir``. The flags are the
pipelines' argument names (``--noise_level``, ``--strength``, ...) with the pipelines' defaults.
"""

import os

from ..sampling import SCHEDULERS
from ..scheduler_names import INPAINT_METHODS, SUPER_RESOLUTION_METHODS
from .common import fail

COMMANDS = ("inpaint", "upscale", "img2img", "denoise")
IMG2IMG_STRENGTH = 0.8  # DDPMHFImg2ImgPipeline's default, as diffusers' img2img pipelines (a test checks they agree)


def _common(p):
    p.add_argument("model", help="a folder written by save_pretrained, or a Hub repo id (namespace/name)")
    p.add_argument("--image", required=True, help="the input image file (PNG, JPEG, ...); its channels must match "
                   "the model's (L for grayscale, RGB)")
    p.add_argument("--num_inference_steps", type=int, default=250,
                   help="reverse steps of the chain, respaced by the scheduler (default 250)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator (default 0)")
    p.add_argument("--output_dir", default="restored", help="where the result and the strip go (default ./restored)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    return p


def add_parsers(sub):
    """Add the four subcommands to ``sub`` (argparse subparsers); returns {name: (parser, function)}."""
    inpaint = _common(sub.add_parser("inpaint", help="fill the white region of --mask (RePaint or DDNM)"))
    inpaint.add_argument("--mask_image", "--mask", dest="mask_image", required=True,
                         help="mask image, same size as --image: white = repaint, black = keep (grey levels are "
                         "thresholded at 0.5); the pipeline's mask_image (--mask is the same)")
    inpaint.add_argument("--method", choices=INPAINT_METHODS, default="repaint",
                         help="RePaint resampling (Lugmayr et al. CVPR 2022) or DDNM projection (Wang et al. ICLR "
                         "2023); default repaint")
    inpaint.add_argument("--jump_length", type=int, default=10, help="RePaint's jump length j (default 10)")
    inpaint.add_argument("--jump_n_sample", type=int, default=None,
                         help="RePaint's resampling count r, 1 = none (default 10 for repaint, 1 for ddnm)")
    upscale = _common(sub.add_parser("upscale", help="super-resolution of a low-resolution image to the model's size"))
    upscale.add_argument("--scale", type=int, default=None,
                         help="upscaling factor; the model's resolution must be scale x the image's (default: the "
                         "ratio of the two)")
    upscale.add_argument("--method", choices=SUPER_RESOLUTION_METHODS, default="ddnm",
                         help="DDNM projection (Wang et al. ICLR 2023) or ILVR (Choi et al. ICCV 2021); default ddnm")
    upscale.add_argument("--noise_level", type=float, default=0.0,
                         help="std of Gaussian noise in the input, [0, 1] pixel units (DDNM+, Wang et al. ICLR 2023, "
                         "Eq. 17 and 19; ddnm only; default 0)")
    img2img = _common(sub.add_parser("img2img", help="SDEdit: noise the image to strength x T and denoise it back"))
    img2img.add_argument("--strength", type=float, default=IMG2IMG_STRENGTH,
                         help=f"in (0, 1]: how far the image is noised (as diffusers' img2img; default "
                         f"{IMG2IMG_STRENGTH})")
    denoise = _common(sub.add_parser("denoise", help="remove Gaussian noise of a known std from an image"))
    denoise.add_argument("--noise_level", "--sigma", dest="noise_level", type=float, required=True,
                         help="the noise std in [0, 1] pixel units (e.g. 0.1; --sigma is the same)")
    for parser in (inpaint, upscale, img2img, denoise):
        parser.add_argument("--class_labels", "--class_label", dest="class_labels", default=None,
                            help="class-conditional models: the class to restore towards, an id (or a name), for "
                            "every image; default: none (the model's null class); --class_label is the same")
        parser.add_argument("--guidance_scale", type=float, default=None,
                            help="with --class_labels: classifier-free guidance scale, 1 = the conditional model alone "
                            "(default: the pipeline's)")
    for parser in (img2img, denoise):
        parser.add_argument("--scheduler", choices=list(SCHEDULERS), default=None,
                            help="the sampler, made from the model's scheduler config (default: the model's own; "
                            "denoise needs one that starts the chain at t*: ddpm, dpmsolver++, dpmsolver-sde, euler)")
    return {name: (parser, run) for name, parser in zip(COMMANDS, (inpaint, upscale, img2img, denoise))}


def _open_image(parser, path, what):
    from PIL import Image

    if not os.path.isfile(path):
        parser.error(f"{what} {path} does not exist")
    try:
        image = Image.open(path)
        image.load()
    except OSError as error:
        parser.error(f"cannot read {what} {path}: {error}")
    return image


def _as_array(image):
    """A PIL image as (1, H, W, C) floats in [0, 1]."""
    import numpy as np

    array = np.asarray(image, dtype=np.float64) / 255
    return (array[..., None] if array.ndim == 2 else array)[None]


def _replicate(array, size):
    """(1, h, w, C) -> (1, H, W, C) by repeating pixels (to show a low-resolution input beside the result)."""
    factor_h, factor_w = size[0] // array.shape[1], size[1] // array.shape[2]
    return array.repeat(factor_h, axis=1).repeat(factor_w, axis=2)


def restore(base, command, image, output_dir, stem, num_inference_steps, seed, mask=None, **options):
    """Run ``command`` on the PIL ``image`` with the loaded DDPMHFPipeline ``base`` and the task pipeline's own
    arguments ``options`` (method, jump_length, scale, strength, noise_level, ...); write ``<stem>.png`` and
    ``<stem>_strip.png`` into ``output_dir``. Returns their paths. The pipelines' ValueErrors pass through."""
    import numpy as np
    import torch

    from ..images import make_strip
    from ..pipeline_ddpm_hf_img2img import DDPMHFImg2ImgPipeline
    from ..pipeline_ddpm_hf_inpaint import DDPMHFInpaintPipeline
    from ..pipeline_ddpm_hf_super_resolution import DDPMHFSuperResolutionPipeline

    common = dict(num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed),
                  output_type="np")
    before = _as_array(image)
    if command == "inpaint":
        pipe = DDPMHFInpaintPipeline.from_pipe(base, torch_dtype=None)
        out = pipe(image, mask, **options, **common)
        shown = (_as_array(mask.convert("L")) >= 0.5).astype(np.float64)
        columns, labels = [before, np.repeat(shown, before.shape[-1], axis=-1)], ["input", "mask", options["method"]]
    elif command == "upscale":
        pipe = DDPMHFSuperResolutionPipeline.from_pipe(base, torch_dtype=None)
        out = pipe(image, **options, **common)
        factor = out.images.shape[1] // before.shape[1]
        columns, labels = [_replicate(before, out.images.shape[1:3])], ["low-res", f"x{factor} {options['method']}"]
    else:
        pipe = DDPMHFImg2ImgPipeline.from_pipe(base, torch_dtype=None)
        out = pipe(image, **options, **common)
        columns = [before]
        labels = (["input", f"strength {options['strength']}"] if command == "img2img" else
                  ["noisy", f"noise level {options['noise_level']}"])
    os.makedirs(output_dir, exist_ok=True)
    result_path, strip_path = os.path.join(output_dir, stem + ".png"), os.path.join(output_dir, stem + "_strip.png")
    pipe.numpy_to_pil(out.images)[0].save(result_path)
    title = f"{command}, {num_inference_steps} steps" + (f", class {options['class_labels'][0]}"
                                                         if options.get("class_labels") else "")
    make_strip(columns + [out.images], labels, tile=64, title=title).save(strip_path)
    return result_path, strip_path


def run(args, parser):
    """Run one of the restoration commands from its flags."""
    if args.num_inference_steps < 1:
        parser.error(f"--num_inference_steps must be >= 1, got {args.num_inference_steps}")
    if args.command == "img2img" and not 0 < args.strength <= 1:
        parser.error(f"--strength must be in (0, 1], got {args.strength}")
    if args.command == "denoise" and not args.noise_level > 0:
        parser.error(f"--noise_level must be > 0, got {args.noise_level}")
    image = _open_image(parser, args.image, "--image")
    mask = _open_image(parser, args.mask_image, "--mask_image") if args.command == "inpaint" else None
    import torch

    from ..errors import ModelNotFound
    from ..pipeline_ddpm_hf import DDPMHFPipeline
    from ..sampling import label_id, load_pipeline, use_scheduler

    try:
        base = load_pipeline(DDPMHFPipeline, args.model, **({"revision": args.revision} if args.revision else {}))
    except ModelNotFound as error:
        fail(parser, error)
    base.to("cuda" if torch.cuda.is_available() else "cpu")
    options = {"inpaint": lambda: dict(method=args.method, jump_length=args.jump_length,
                                       jump_n_sample=args.jump_n_sample),
               "upscale": lambda: dict(scale=args.scale, method=args.method, noise_level=args.noise_level),
               "img2img": lambda: dict(strength=args.strength),
               "denoise": lambda: dict(noise_level=args.noise_level)}[args.command]()
    if args.class_labels is not None:  # a class name, even one made of digits, else an id
        options["class_labels"] = [label_id(base, args.class_labels)]
    if args.guidance_scale is not None:
        options["guidance_scale"] = args.guidance_scale
    stem = f"{os.path.splitext(os.path.basename(args.image))[0]}_{args.command}"
    try:
        use_scheduler(base, getattr(args, "scheduler", None))
        paths = restore(base, args.command, image, args.output_dir, stem, args.num_inference_steps, args.seed,
                        mask=mask, **options)
    except ValueError as error:
        parser.error(flags_spelled(str(error), parser))
    print(f"wrote {paths[0]} and {paths[1]}")


def flags_spelled(message, parser):
    """A pipeline's error message with each of its argument names that is also a flag of this command spelled as
    the flag (``mask_image`` -> ``--mask_image``, ``method='ddnm'`` -> ``--method ddnm``)."""
    import re

    flags = {action.dest for action in parser._actions}
    message = re.sub(r"\b([a-z_]+)='([^']*)'", lambda m: f"--{m[1]} {m[2]}" if m[1] in flags else m[0], message)
    return re.sub(r"(?<![-\w])([a-z]+_[a-z_]+|strength|scale|method)\b(?!=)",
                  lambda m: f"--{m[1]}" if m[1] in flags else m[1], message)
