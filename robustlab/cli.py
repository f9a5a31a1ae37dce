"""The ``robustlab`` command: ``train``, ``eval``, ``demo`` and ``list``.

Errors the user can fix (bad config, missing dataset file, corrupt checkpoint, refused input, unwritable or
unreadable file) are printed as one line ``robustlab: error: ...`` with exit status 2 (``robustlab --debug ...``
shows the traceback instead); an interrupted run says how to continue (exit 130).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from robustlab.errors import ConfigError, RobustlabError


def _parse_floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustlab", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model with a defense from a TOML config")
    train.add_argument("--config", required=True, help="TOML file (see configs/)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value; VALUE is TOML: --set data.batch_size=64, "
                            "--set 'run.out_dir=\"runs/x\"', --set 'eval.eps=[0.1, 0.3]' (repeatable)")
    train.add_argument("--threads", type=int,
                       help="torch CPU threads (default: torch's, one per core; 1 is faster on a busy machine)")
    train.add_argument("--resume", action="store_true", help="continue the run in run.out_dir from its last checkpoint")

    ev = sub.add_parser("eval", help="robust accuracy of a checkpoint or your own model, with masking checks",
                        description="Robust accuracy under an attack suite, with the masking checks. --suite "
                                    "standard (default): AutoAttack's standard attacks and settings (APGD-CE, APGD-T, "
                                    "FAB-T, Square), the headline number; rand: EOT attacks for randomised models "
                                    "(chosen automatically); adaptive: AutoAttack's attacks where an outcome can "
                                    "still change (a cut-down suite, not yet a claim; adaptive_rand on a randomised "
                                    "model); fast: every attack of the library with cut budgets "
                                    "(ρ_adv, curves; not a robustness claim); quick: the run's [eval] attacks. "
                                    "An interrupted evaluation continues from its saved state when rerun; each suite, "
                                    "threat model and ε keeps its own state and report files.")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run directory or checkpoints/epoch-* directory")
    source.add_argument("--model", metavar="MODULE:FUNCTION",
                        help="your own model: package.module:function returning an nn.Module on [0,1] inputs "
                             "(needs --dataset)")
    ev.add_argument("--weights", help="--model: a safetensors file of weights to load into it")
    ev.add_argument("--dataset", help="--model: the dataset whose test split to evaluate on (robustlab list datasets)")
    ev.add_argument("--download", action="store_true",
                    help="--model: download the dataset if it is not there (sha256-checked), as data.download does "
                         "for training")
    ev.add_argument("--suite", help="a preset of robustlab/evaluation/suites.py: standard (default; fast with "
                                    "--paper), rand, adaptive, adaptive_rand, fast or quick (robustlab list attacks "
                                    "lists them)")
    ev.add_argument("--norm", choices=["linf", "l2"], default="linf", help="the threat model (default linf)")
    ev.add_argument("--fresh", action="store_true",
                    help="discard the saved state of an interrupted evaluation of these settings")
    ev.add_argument("--eps", type=_parse_floats,
                    help="ε, or a comma-separated list for a curve (default: the run's largest eval.eps; quick: the "
                         "run's eval.eps; fast: ε/2 and ε of its largest)")
    ev.add_argument("--eps-l2", type=_parse_floats, help="L2 ε list of PGD-L2 in the fast suite (default: ε·√d/4)")
    ev.add_argument("--attacks", help="comma-separated attacks (quick: default the run's eval.attacks; "
                                      "fast: only these suite rows)")
    ev.add_argument("--subset", type=int,
                    help="test examples (default: the run's eval.subset, or 500 with --model; fast: 500)")
    ev.add_argument("--minimal-subset", type=int,
                    help="fast: examples for C&W, DeepFool and the critic attack (default 50; DeepFool 100)")
    ev.add_argument("--few-pixel-subset", type=int, help="fast: examples for the few-pixel attacks (default 20)")
    ev.add_argument("--pgd-steps", type=int, help="fast/quick: PGD iterations (default: the run's eval.pgd_steps; fast: 20)")
    ev.add_argument("--paper", action="store_true",
                    help="fast: the papers' attack settings (PGD-40, APGD-100 × 9 targets, C&W 1000 × 9, DeepFool "
                         "500, few-pixel 400 × 75, EOT 80 samples): much slower")
    ev.add_argument("--transfer-source", metavar="CKPT",
                    help="also attack with PGD transferred from this checkpoint's model (white-box vs transfer check)")
    ev.add_argument("--eot", action="store_true", help="add EOT-PGD even if the model's predictions are repeatable")
    ev.add_argument("--eot-samples", type=int, help="gradients averaged per EOT step (rand and fast: 20, --paper 80; "
                                                     "quick: the run's eval.eot_samples)")
    ev.add_argument("--seed", type=int, default=0, help="seed of random starts and targets (default 0)")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                    help="run the attacks under torch.autocast in this precision (faster on GPUs; default off: "
                         "fp32, the reference for published numbers)")
    ev.add_argument("--threads", type=int,
                    help="torch CPU threads (default: torch's, one per core; 1 is faster on a busy machine)")
    ev.add_argument("--out", help="output directory (default: the run directory, or "
                                  "runs/eval/MODULE.FUNCTION[/WEIGHTS] with --model); a path ending in .json names the "
                                  "JSON file, the other files go beside it")
    ev.add_argument("--metric", action="store_true",
                    help="also analyse the learned metric (TLA): misclassification-detection ROC-AUC from the max "
                         "softmax and from the distance to class centroids, and kNN retrieval precision, on clean and "
                         "PGD inputs (the first ε, the run's PGD settings, up to 1000 examples); writes a ROC plot")
    ev.add_argument("--fail-on-check", action="store_true", help="exit with status 1 if a masking check fails")

    demo = sub.add_parser("demo", help="standard training vs PGD-AT of LeNet-5 on MNIST-5k (under 10 CPU-minutes)")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a much shorter run, for smoke tests")

    ls = sub.add_parser("list", help="list the registered models, datasets, defenses and attacks, one line on each")
    ls.add_argument("what", nargs="?", choices=["models", "datasets", "defenses", "attacks"],
                    help="one kind only (default: all)")
    return parser


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def cmd_train(args: argparse.Namespace) -> int:
    from robustlab.experiment import load_config
    from robustlab.engine import Trainer

    _set_threads(args.threads)
    config = load_config(args.config, args.set)
    trainer = Trainer(config, resume=args.resume)
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: robustlab train --config {args.config} --resume"
              + "".join(f" --set {s}" for s in args.set), file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.dist.is_main:
        print(f"done: {result.run_dir} (evaluate with: robustlab eval --checkpoint {result.run_dir})")
    return 0


def metric_report(model, data, x, y, eps: float, cfg, roc_path: Path, device, subset: int = 0) -> dict:
    """``eval --metric``: :func:`robustlab.metric_analysis.analyse_metric` on clean and PGD inputs, printed and plotted."""
    from robustlab.attacks import PGD
    from robustlab.detection import plot_roc
    from robustlab.evaluation.outcome import attack_outcome
    from robustlab.metric_analysis import analyse_metric

    n = min(len(x), subset or cfg.subset or len(x), 1000)
    xs, ys = x[:n], y[:n]
    attack = PGD(eps, steps=cfg.pgd_steps, step_size=cfg.pgd_step_size or None)
    x_adv = attack_outcome(model, xs, ys, attack, batch_size=cfg.batch_size, device=device, keep=n).x_adv
    analysis = analyse_metric(model, xs, x_adv, ys, data.train_x, data.train_y, data.num_classes)
    plot_roc(analysis.curves, roc_path, title=f"Misclassification detection (clean ∪ PGD ε={eps:g}, {n} each)")
    print(f"\nLearned metric on {n} clean + {n} PGD (ε={eps:g}) test inputs: detection ROC-AUC "
          f"{100 * analysis.auc_softmax:.1f}% (max softmax), {100 * analysis.auc_centroid:.1f}% (centroid distance); "
          f"kNN@{analysis.k} precision {100 * analysis.knn_clean:.1f}% clean, {100 * analysis.knn_adv:.1f}% PGD; "
          f"ROC plot {roc_path}")
    return {**analysis.to_dict(), "examples": n, "eps": eps, "roc_plot": str(roc_path)}


def _output_location(out: str | None, default_dir: Path, stem: str) -> tuple[Path, str]:
    """``--out`` as (directory, file stem), checked for writability before any compute."""
    if out and out.endswith(".json"):
        out_dir, stem = Path(out).parent, Path(out).stem
    else:
        out_dir = Path(out) if out else default_dir
    from robustlab.checkpoint import refuse_dangling_link

    refuse_dangling_link(out_dir, "--out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".{stem}.{os.getpid()}.write-test"  # one per process: ranks probe at once
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write the evaluation's output to {out_dir}: {exc.strerror or exc}") from None
    return out_dir, stem


def cmd_eval(args: argparse.Namespace) -> int:
    import time

    import torch

    from robustlab.distributed import init_distributed
    from robustlab.engine import resolve_device

    t0 = time.perf_counter()
    _set_threads(args.threads)
    args.suite = args.suite or ("fast" if args.paper else "standard")
    if args.paper and args.suite != "fast":
        raise ConfigError(f"--paper sets the fast suite's attacks to the papers' settings; the {args.suite} suite "
                          f"already runs AutoAttack's")
    device = resolve_device(args.device)
    env = init_distributed(device.type)
    if env.enabled and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if args.model:
        from robustlab.data import load_dataset
        from robustlab.user_model import load_user_model

        if not args.dataset:
            raise ConfigError("--model needs --dataset (the test split to evaluate on)")
        if args.suite == "quick":
            raise ConfigError("--suite quick needs a --checkpoint (it runs the run's [eval] attacks)")
        model = load_user_model(args.model, args.weights).to(device)
        data = load_dataset(args.dataset, download=args.download)
        folder = Path("runs") / "eval" / args.model.replace(":", ".")
        loaded = {"model": model, "config": None, "data": data, "epoch": None, "name": args.model,
                  "default_dir": folder / Path(args.weights).stem if args.weights else folder}
    else:
        from robustlab.checkpoint import resolve_checkpoint
        from robustlab.runs import load_trained_model

        if args.weights or args.dataset or args.download:
            raise ConfigError("--weights, --dataset and --download go with --model; a checkpoint holds its own "
                              "(its data.download)")
        model, config, data, state = load_trained_model(args.checkpoint, device)
        ckpt = resolve_checkpoint(args.checkpoint)
        loaded = {"model": model, "config": config, "data": data, "epoch": state["epoch"], "checkpoint": ckpt,
                  "name": f"{config.model['name']} / {config.defense['name']} (epoch {state['epoch']})",
                  "default_dir": ckpt.parent.parent}
    precision = contextlib.nullcontext()
    if args.amp != "off":
        precision = torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[args.amp])
    try:
        with precision:
            code = _run_eval(args, loaded, device, env)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if env.is_main:
        print(f"({time.perf_counter() - t0:.0f} s in all)")
    return code


def eval_settings(args: argparse.Namespace, config):
    """The :class:`~robustlab.evaluation.settings.EvalSettings` of ``robustlab eval``: the flags, then the run's
    ``[eval]`` section (a checkpoint), then the suite's defaults."""
    from robustlab.evaluation import EvalSettings

    cfg = config.eval if config is not None else None
    if args.eps is not None:
        eps = [e for e in args.eps if e != 0]  # ε = 0 is the clean accuracy, measured anyway
    elif cfg is None:
        raise ConfigError("--model needs --eps (the radius of the threat model)")
    elif args.suite == "quick":
        eps = [e for e in cfg.eps if e > 0]
    elif args.suite == "fast":  # a curve with the clean point: ε/2 and ε of the run's largest
        eps = [round(max(cfg.eps) / 2, 6), max(cfg.eps)]
    else:
        eps = [max(cfg.eps)]
    if not eps:
        raise ConfigError("no ε > 0 to attack at (eval.eps or --eps)")
    options: dict = {"norm": args.norm, "eps": eps[0] if len(eps) == 1 else eps, "seed": args.seed, "eot": args.eot}
    if cfg is not None:
        options["batch_size"] = cfg.batch_size
    if args.suite == "quick":
        options.update(attacks=cfg.attacks, subset=cfg.subset, pgd_steps=cfg.pgd_steps,
                       pgd_step_size=cfg.pgd_step_size, pgd_restarts=cfg.pgd_restarts, eot_samples=cfg.eot_samples)
    elif args.suite == "fast":
        options["subset"] = 500
    else:
        options["subset"] = cfg.subset if cfg is not None else 500
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else None
    if attacks:
        if args.suite not in ("fast", "quick"):
            raise ConfigError(f"--attacks chooses the rows of --suite fast or quick, not of {args.suite}")
        options["attacks"] = attacks
    flags = {"subset": args.subset, "pgd_steps": args.pgd_steps, "eot_samples": args.eot_samples,
             "eps_l2": args.eps_l2, "minimal_subset": args.minimal_subset, "deepfool_subset": args.minimal_subset,
             "few_pixel_subset": args.few_pixel_subset}
    options.update({k: v for k, v in flags.items() if v is not None})
    try:
        return EvalSettings.paper(**options) if args.paper else EvalSettings(**options)
    except ConfigError as exc:
        raise ConfigError(f"eval: {exc}") from None


def report_stem(suite: str, settings) -> str:
    """``eval_<suite>_<norm>_<ε>``: each threat model of a checkpoint keeps its own report files."""
    return f"eval_{suite}_{settings.norm}_" + "_".join(f"{e:g}" for e in settings.eps_list)


def _run_eval(args: argparse.Namespace, loaded: dict, device, env) -> int:
    """``robustlab eval``: any suite, through the one runner, then the one report."""
    from robustlab.evaluation import evaluate
    from robustlab.evaluation.checks import any_failed
    from robustlab.evaluation.report import NOT_A_CLAIM, markdown, write_report

    config, data = loaded["config"], loaded["data"]
    x, y = data.test_x, data.test_y
    settings = eval_settings(args, config)
    if args.transfer_source and args.suite != "fast":
        raise ConfigError("--transfer-source needs the transfer row: use --suite fast")
    if args.transfer_source and settings.attacks and "transfer" not in settings.attacks:
        raise ConfigError("--transfer-source needs the transfer row: add 'transfer' to --attacks")
    stem = report_stem(args.suite, settings)
    out_dir, stem = _output_location(args.out, loaded["default_dir"], stem)
    source = None
    if args.transfer_source:
        from robustlab.runs import load_source_model

        source = load_source_model(args.transfer_source, device)
    state_dir = out_dir / "eval_state"
    n = min(settings.subset, len(x)) if settings.subset else len(x)
    if env.is_main:
        eps = ", ".join(f"{e:g}" for e in settings.eps_list)
        print(f"{loaded['name']} on {data.name}: {args.suite} suite at {settings.norm} ε={eps} on {n} test examples "
              f"({torch_threads()} torch threads, {device}"
              + (f", {env.world_size} processes" if env.enabled else "") + f"); state under {state_dir}")
        if args.suite in ("fast", "quick"):
            print(NOT_A_CLAIM.format(suite=args.suite).replace("**", ""))
    result = evaluate(loaded["model"], x, y, settings, suite=args.suite, num_classes=data.num_classes, device=device,
                      state_dir=state_dir, env=env, log=print if env.is_main else None, transfer_source=source,
                      fresh=args.fresh)
    if not env.is_main:
        return 0
    print()
    print(markdown(result, title=loaded["name"]))
    extra = {"model": loaded["name"], "dataset": data.name, "epoch": loaded["epoch"], "device": str(device),
             "amp": args.amp, "processes": env.world_size}
    if "checkpoint" in loaded:
        extra.update(checkpoint=str(loaded["checkpoint"]), defense=config.defense, eval=config.eval.model_dump())
    if args.metric:
        if config is None:
            raise ConfigError("--metric needs a --checkpoint (it uses the run's training data and [eval] section)")
        first = next(e for e in (args.eps or config.eval.eps) if e > 0)  # the first ε asked for
        extra["metric"] = metric_report(loaded["model"], data, x, y, first, config.eval, out_dir / f"{stem}_roc.png",
                                        device, subset=settings.subset)
    files = write_report(result, out_dir, stem=stem, title=loaded["name"], extra=extra,
                         class_names=getattr(data, "class_names", None))
    print(f"wrote {files['json']} and {', '.join(p.name for k, p in files.items() if k != 'json')}")
    return 1 if args.fail_on_check and any_failed(result.checks) else 0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def cmd_demo(args: argparse.Namespace) -> int:
    from robustlab.demo import run_demo

    if args.quick:
        run_demo(args.out, epochs_scale=0.1, eval_subset=200, standard_subset=100, pgd_steps=10, pgd_step_size=0.0)
    else:
        run_demo(args.out)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Each registered model, dataset, defense and attack with one line from its docstring; the suites."""
    from robustlab.attacks.registry import ATTACKS
    from robustlab.data.registry import DATASETS
    from robustlab.defenses.base import DEFENSES
    from robustlab.evaluation.suites import available_suites, fast_row_names
    from robustlab.models.registry import MODELS

    import robustlab.attacks  # noqa: F401  (each package registers its implementations on import)
    import robustlab.defenses  # noqa: F401
    import robustlab.models  # noqa: F401

    kinds = {"models": (MODELS, "[model] name"), "datasets": (DATASETS, "[data] name, eval --dataset"),
             "defenses": (DEFENSES, "[defense] name"),
             "attacks": (ATTACKS, "robustlab.attacks.build_attack; eval --suite quick --attacks")}
    for what in [args.what] if args.what else list(kinds):
        registry, where = kinds[what]
        width = max(map(len, registry.names()))
        print(f"{what} ({where}):")
        print("\n".join(f"  {name:<{width}}  {registry.summary(name)}" for name in registry.names()))
        if what == "attacks":
            print(f"rows of the fast suite (--suite fast --attacks): {', '.join(fast_row_names())}")
            print(f"suites (--suite): {', '.join(available_suites())}")
    return 0


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}"
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"train": cmd_train, "eval": cmd_eval, "demo": cmd_demo, "list": cmd_list}[args.command]
    try:
        return handler(args)
    except (RobustlabError, ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
        if args.debug:
            raise
        print(f"robustlab: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        again = " (rerun the same command: it continues from the saved state)" if args.command == "eval" else ""
        print(f"\nrobustlab: interrupted{again}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
