"""The ``robustlab`` command: ``train``, ``eval``, ``demo`` and ``list``.

Errors the user can fix (bad config, missing dataset file, corrupt checkpoint, refused input, unwritable or
unreadable file) are printed as one line ``robustlab: error: ...`` with exit status 2 (``robustlab --debug ...``
shows the traceback instead); an interrupted run says how to continue (exit 130).
"""

from __future__ import annotations

import argparse
import contextlib
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
                                    "(chosen automatically); fast: every attack of the library with cut budgets "
                                    "(ρ_adv, curves; not a robustness claim); quick: the run's [eval] attacks. "
                                    "Interrupted standard/rand evaluations continue from the state in --out.")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run directory or checkpoints/epoch-* directory")
    source.add_argument("--model", metavar="MODULE:FUNCTION",
                        help="your own model: package.module:function returning an nn.Module on [0,1] inputs "
                             "(needs --dataset)")
    ev.add_argument("--weights", help="--model: a safetensors file of weights to load into it")
    ev.add_argument("--dataset", help="--model: the dataset whose test split to evaluate on (robustlab list datasets)")
    ev.add_argument("--suite", choices=["standard", "rand", "fast", "quick", "full"],
                    help="standard (default; fast with --paper), rand, fast or quick; 'full' is the old name of fast")
    ev.add_argument("--norm", choices=["linf", "l2"], default="linf", help="standard/rand: the threat model")
    ev.add_argument("--fresh", action="store_true",
                    help="standard/rand: discard the saved state of an interrupted evaluation in --out")
    ev.add_argument("--eps", type=_parse_floats,
                    help="standard/rand: one ε (default: the run's largest eval.eps); fast/quick: a comma-separated L∞ "
                         "ε list (default: the run's eval.eps; fast: ε/2 and ε of its largest)")
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
    ev.add_argument("--eot-samples", type=int, help="gradients averaged per EOT-PGD step (default 10; --paper 80)")
    ev.add_argument("--seed", type=int, default=0, help="seed of random starts and targets (default 0)")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                    help="run the attacks under torch.autocast in this precision (faster on GPUs; default off: "
                         "fp32, the reference for published numbers)")
    ev.add_argument("--threads", type=int,
                    help="torch CPU threads (default: torch's, one per core; 1 is faster on a busy machine)")
    ev.add_argument("--out", help="output directory (default: the run directory); a path ending in .json names the "
                                  "JSON file, the other files go beside it")
    ev.add_argument("--metric", action="store_true",
                    help="also analyse the learned metric (TLA): misclassification-detection ROC-AUC from the max "
                         "softmax and from the distance to class centroids, and kNN retrieval precision, on clean and "
                         "PGD inputs (the first ε, the run's PGD settings, up to 1000 examples); writes a ROC plot")
    ev.add_argument("--fail-on-check", action="store_true", help="exit with status 1 if a masking check fails")

    demo = sub.add_parser("demo", help="standard training vs PGD-AT of LeNet-5 on MNIST-5k (a few CPU minutes)")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a much shorter run, for smoke tests")

    ls = sub.add_parser("list", help="list the registered models, datasets, defenses or attacks")
    ls.add_argument("what", choices=["models", "datasets", "defenses", "attacks"])
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


def _fast_suite_eps(eps: list[float]) -> list[float]:
    """The fast suite's default ε list from a run's: ε/2 and ε of its largest (a curve with the clean point)."""
    top = max(eps)
    return [round(top / 2, 6), top]


def metric_report(model, data, x, y, eps: float, cfg, roc_path: Path, device) -> dict:
    """``eval --metric``: :func:`robustlab.metric_analysis.analyse_metric` on clean and PGD inputs, printed and plotted."""
    from robustlab.attacks import PGD
    from robustlab.detection import plot_roc
    from robustlab.evaluate import attack_outcome
    from robustlab.metric_analysis import analyse_metric

    n = min(len(x), cfg.subset or len(x), 1000)
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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".{stem}.write-test"
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
    if args.suite == "full":
        print("note: --suite full is now called fast", file=sys.stderr)
        args.suite = "fast"
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
        if args.suite not in ("standard", "rand"):
            raise ConfigError(f"--suite {args.suite} needs a --checkpoint (it uses the run's [eval] section)")
        model = load_user_model(args.model, args.weights).to(device)
        data = load_dataset(args.dataset)
        loaded = {"model": model, "config": None, "data": data, "epoch": None, "name": args.model,
                  "default_dir": Path("runs") / "eval" / args.model.replace(":", ".")}
    else:
        from robustlab.checkpoint import resolve_checkpoint
        from robustlab.runs import load_trained_model

        if args.weights or args.dataset:
            raise ConfigError("--weights and --dataset go with --model; a checkpoint holds its own")
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
            if args.suite in ("standard", "rand"):
                code = _eval_standard(args, loaded, device, env)
            else:
                code = _eval_fast(args, loaded, device)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if env.is_main:
        print(f"({time.perf_counter() - t0:.0f} s in all)")
    return code


def _eval_standard(args: argparse.Namespace, loaded: dict, device, env) -> int:
    """``eval --suite standard|rand``: the AutoAttack-strength headline (robustlab/standard.py)."""
    import shutil

    from robustlab.checks import any_failed
    from robustlab.report import standard_markdown, write_standard_report
    from robustlab.standard import StandardSettings, evaluate_standard

    config, data = loaded["config"], loaded["data"]
    if args.eps is not None:
        eps = args.eps
    elif config is not None:
        eps = [max(config.eval.eps)]
    else:
        raise ConfigError("--model needs --eps (the radius of the threat model)")
    if len(eps) != 1:
        raise ConfigError(f"the {args.suite} suite runs at one ε (use --suite fast for a curve), got {eps}")
    subset = args.subset if args.subset is not None else (config.eval.subset if config is not None else 500)
    try:
        settings = StandardSettings(suite=args.suite, norm=args.norm, eps=eps[0], subset=subset,
                                    batch_size=config.eval.batch_size if config is not None else 500, seed=args.seed,
                                    **({"eot_samples": args.eot_samples} if args.eot_samples is not None else {}))
    except ConfigError as exc:
        raise ConfigError(f"eval: {exc}") from None
    out_dir, stem = _output_location(args.out, loaded["default_dir"], f"eval_{args.suite}")
    state_dir = out_dir / f"{stem}_state"
    if args.fresh and state_dir.exists() and env.is_main:
        shutil.rmtree(state_dir)
    x, y = data.test_x, data.test_y
    log = print if env.is_main else None
    if env.is_main:
        n = min(subset, len(x)) if subset else len(x)
        print(f"{loaded['name']} on {data.name}: {args.suite} suite at {args.norm} ε={eps[0]:g} on {n} test examples "
              f"({torch_threads()} torch threads, {device}"
              + (f", {env.world_size} processes" if env.enabled else "") + f"); state in {state_dir}")
    result = evaluate_standard(loaded["model"], x, y, settings, num_classes=data.num_classes, device=device,
                               state_dir=state_dir, env=env, log=log)
    if not env.is_main:
        return 0
    print()
    print(standard_markdown(result, title=loaded["name"]))
    extra = {"model": loaded["name"], "dataset": data.name, "epoch": loaded["epoch"], "device": str(device),
             "amp": args.amp, "processes": env.world_size}
    if "checkpoint" in loaded:
        extra["checkpoint"] = str(loaded["checkpoint"])
    files = write_standard_report(result, out_dir, stem=stem, title=loaded["name"], extra=extra)
    print(f"wrote {files['json']} and {files['markdown'].name}")
    return 1 if args.fail_on_check and any_failed(result.checks) else 0


def _eval_fast(args: argparse.Namespace, loaded: dict, device) -> int:
    """``eval --suite fast|quick``: every attack of the library / the run's [eval] attacks (robustlab/suite.py)."""
    from robustlab.checks import any_failed, summary_line
    from robustlab.experiment import config_from_dict
    from robustlab.report import NOT_A_CLAIM, checks_table, markdown_table, suite_markdown, write_suite_report
    from robustlab.suite import SuiteSettings, evaluate_suite

    model, config, data, name = loaded["model"], loaded["config"], loaded["data"], loaded["name"]
    overrides = config.to_dict()
    if args.eps is not None:
        overrides["eval"]["eps"] = args.eps
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else None
    if attacks and args.suite == "quick":
        overrides["eval"]["attacks"] = attacks
    if args.subset is not None:
        overrides["eval"]["subset"] = args.subset
    if args.pgd_steps is not None:
        overrides["eval"]["pgd_steps"] = args.pgd_steps
    cfg = config_from_dict(overrides).eval
    eps = [e for e in cfg.eps if e > 0]
    if not eps:
        raise ConfigError("eval.eps holds no ε > 0 to attack at")
    x, y = data.test_x, data.test_y
    common = dict(eot=args.eot, seed=args.seed)
    if args.eot_samples is not None:
        common["eot_samples"] = args.eot_samples
    if args.suite == "quick":
        settings = SuiteSettings(suite="quick", eps=eps, attacks=cfg.attacks, subset=cfg.subset or len(x),
                                 batch_size=cfg.batch_size, pgd_steps=cfg.pgd_steps, pgd_step_size=cfg.pgd_step_size,
                                 pgd_restarts=cfg.pgd_restarts, **common)
    else:
        fast = dict(eps=eps if args.eps is not None else _fast_suite_eps(eps), eps_l2=args.eps_l2, attacks=attacks,
                    batch_size=cfg.batch_size, **common)
        for key in ("subset", "minimal_subset", "few_pixel_subset", "pgd_steps"):
            if getattr(args, key) is not None:
                fast[key] = getattr(args, key)
        if args.minimal_subset is not None:
            fast["deepfool_subset"] = args.minimal_subset
        try:
            settings = SuiteSettings.paper(**fast) if args.paper else SuiteSettings(**fast)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    out_dir, stem = _output_location(args.out, loaded["default_dir"], f"eval_{args.suite}")
    source = None
    if args.transfer_source and (args.suite == "quick" or (attacks and "transfer" not in attacks)):
        raise ConfigError("--transfer-source needs the transfer row: use --suite fast (with 'transfer' in "
                          "--attacks if you list them)")
    if args.transfer_source:
        from robustlab.runs import load_source_model

        source = load_source_model(args.transfer_source, device)
    print(f"{name} on {config.data.name}: {args.suite} suite on {min(settings.subset, len(x))} test examples "
          f"({torch_threads()} torch threads, {device})")
    print(NOT_A_CLAIM.format(suite=args.suite).replace("**", ""))
    try:
        result = evaluate_suite(model, x, y, settings, num_classes=data.num_classes, transfer_source=source,
                                device=device, log=print)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    print()
    if args.suite == "quick":
        print(f"{result.n} test examples of {config.data.name}; PGD: {cfg.pgd_steps} steps, "
              f"{cfg.pgd_restarts} restart(s)")
        print(markdown_table({name: (result.clean, result.points)}))
        for row in result.ensemble:
            print(f"worst case over {', '.join(a.upper() for a in row['attacks'])} at ε={row['eps']:g}: "
                  f"{100 * row['accuracy']:.1f}%")
        print("\nMasking checks\n\n" + checks_table(result.checks) + summary_line(result.checks))
    else:
        print(suite_markdown(result, title=name))

    extra = {"checkpoint": str(loaded["checkpoint"]), "model": config.model, "defense": config.defense,
             "dataset": config.data.name, "epoch": loaded["epoch"], "device": str(device), "amp": args.amp,
             "eval": cfg.model_dump()}
    if args.metric:
        extra["metric"] = metric_report(model, data, x, y, eps[0], cfg, out_dir / f"{stem}_roc.png", device)
    files = write_suite_report(result, out_dir, stem=stem, title=name, extra=extra)
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
    if args.what == "models":
        from robustlab.models import available_models as names
    elif args.what == "datasets":
        from robustlab.data import available_datasets as names
    elif args.what == "defenses":
        from robustlab.defenses import available_defenses as names
    else:
        from robustlab.attacks import available_attacks
        from robustlab.standard import AA_SUITES
        from robustlab.suite import suite_row_names

        print("attacks (robustlab.attacks.build_attack; --suite quick --attacks):")
        print("\n".join(f"  {name}" for name in available_attacks()))
        print("rows of the fast suite (--suite fast --attacks):")
        print("\n".join(f"  {name}" for name in suite_row_names()))
        print(f"suites (--suite): {', '.join(AA_SUITES)}, fast, quick")
        return 0
    print("\n".join(names()))
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
