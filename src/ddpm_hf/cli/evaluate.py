"""``ddpm-hf evaluate``: score a model (ddpm_hf.evaluation.report) and write what was measured beside it."""

from ..evaluation import ALL_METRICS
from ..sampling import SCHEDULERS
from ..scheduler_names import TIMESTEP_SPACINGS
from .common import fail

# the evaluation's argument names -> this command's flags, where they differ
FLAGS = {"steps": "num_inference_steps"}


def add_parser(sub):
    p = sub.add_parser("evaluate", help="score a model: bits/dim, FID, KID, precision/recall, the digits and MNIST "
                       "metrics",
                       description="Score a trained model and write eval-NAME.json (and plots) beside it; the headline "
                       "numbers go into its metrics.json. The data defaults to the run's own (training_args.json).")
    p.add_argument("model", help="a training output folder, a pipeline folder or a Hub repo id")
    p.add_argument("--metrics", default="bpd", help=f"comma-separated, from {', '.join(ALL_METRICS)} (default bpd; "
                   "fid/kid/prc need the Inception weights; digits and mnist are offline, for models of the "
                   "embedded digits and MNIST (--dataset_name mnist) only; guidance: "
                   "a class-conditional digits or MNIST model's label accuracy and digits or mnist FD per "
                   "--guidance_scales)")
    p.add_argument("--num_samples", type=int, default=1000, help="samples for fid/kid/prc/digits/mnist "
                   "(default 1000; mnist: at most 4500)")
    p.add_argument("--num_inference_steps", "--ddpm_num_inference_steps", dest="num_inference_steps", default=None,
                   help="sampling steps, or a comma-separated list to score each (e.g. 1000,250,100,50); default T "
                   "(--ddpm_num_inference_steps is the same, as `train` spells it)")
    p.add_argument("--batch_size", "--eval_batch_size", dest="batch_size", type=int, default=256,
                   help="images per forward pass (default 256; --eval_batch_size is the same, as `train` spells it)")
    p.add_argument("--timestep_spacing", choices=TIMESTEP_SPACINGS, default=None,
                   help="how fewer sampling steps are spread over the T timesteps (default: the model's scheduler's)")
    p.add_argument("--scheduler", choices=list(SCHEDULERS), default=None,
                   help="the sampler of the sample metrics, made from the model's scheduler config (default: the "
                   "model's own)")
    p.add_argument("--guidance_scales", default="0,1,2,3,5,8",
                   help="with --metrics guidance (a class-conditional digits or MNIST model): the guidance scales "
                   "swept, comma-separated, diffusers' convention (1 = no guidance, 0 = the unconditional branch); "
                   "--num_samples split evenly over the classes, the first --num_inference_steps (default 0,1,2,3,5,8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (image i: seed + i) and of the bound")
    p.add_argument("--dataset_name", default=None, help="data to score against (default: the run's)")
    p.add_argument("--dataset_config_name", default=None)
    p.add_argument("--train_data_dir", default=None, help="a folder of images to score against")
    p.add_argument("--split", "--eval_split", dest="split", default="test",
                   help="held-out split for bpd (default test; --eval_split, as `train` spells it, is the same)")
    p.add_argument("--reference_split", default="train",
                   help="the real images the sample metrics compare with (default train)")
    p.add_argument("--max_eval_images", type=int, default=None, help="at most this many images for bpd")
    p.add_argument("--max_reference_images", type=int, default=50_000, help="at most this many reference images")
    p.add_argument("--bpd_timesteps", "--eval_bpd_timesteps", dest="bpd_timesteps", type=int, default=None,
                   help="estimate the bound from this many of its T terms per image (stratified; default all T; "
                   "--eval_bpd_timesteps is the same, as `train` spells it)")
    p.add_argument("--inception_weights", default=None,
                   help="the TF-Inception TorchScript file (inception-2015-12-05.pt); default: the torch hub cache, "
                   "downloaded there if missing")
    p.add_argument("--name", default=None, help="the evaluation's name: eval-NAME.json (default: today's date)")
    p.add_argument("--output_dir", default=None, help="where eval-NAME.json goes (default: the model's folder)")
    p.add_argument("--update_model_card", action="store_true", help="re-render the run's README.md with the scores "
                   "(refused at start if the card was edited by hand, unless --replace_edited_card)")
    p.add_argument("--replace_edited_card", "--force", dest="replace_edited_card", action="store_true",
                   help="with --update_model_card: replace README.md even if it was edited by hand (--force is the "
                   "same)")
    return p


def config_from_args(args, parser):
    """The typed EvaluationConfig of the command's flags (exit 2 with the flag named when one is wrong)."""
    from ..errors import BadArgument
    from ..evaluation.report import EvaluationConfig

    steps = [None]
    if args.num_inference_steps:
        try:
            steps = [int(s) for s in args.num_inference_steps.split(",")]
        except ValueError:
            parser.error(f"--num_inference_steps {args.num_inference_steps}: integers separated by commas")
    try:
        guidance_scales = [float(s) for s in args.guidance_scales.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--guidance_scales {args.guidance_scales}: numbers separated by commas")
    try:
        return EvaluationConfig(
            metrics=[m.strip() for m in args.metrics.split(",") if m.strip()], num_samples=args.num_samples,
            steps=steps, seed=args.seed, batch_size=args.batch_size, split=args.split,
            reference_split=args.reference_split, dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name, train_data_dir=args.train_data_dir,
            max_eval_images=args.max_eval_images, max_reference_images=args.max_reference_images,
            inception_weights=args.inception_weights, bpd_timesteps=args.bpd_timesteps,
            timestep_spacing=args.timestep_spacing, scheduler=args.scheduler, guidance_scales=guidance_scales,
            name=args.name,
            output_dir=args.output_dir, update_model_card=args.update_model_card,
            replace_edited_card=args.replace_edited_card)
    except BadArgument as error:
        fail(parser, error, FLAGS)


def run(args, parser):
    from ..errors import DDPMHFError
    from ..evaluation.report import evaluate

    config = config_from_args(args, parser)
    try:
        report = evaluate(args.model, config)
    except (DDPMHFError, OSError, ValueError) as error:  # OSError: e.g. a model file missing
        fail(parser, error, FLAGS)
    print(f"wrote {report['path']}")
