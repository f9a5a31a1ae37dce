"""The ``robustlab`` command: ``train``, ``eval``, ``demo`` and ``list``.

Errors the user can fix (bad config, missing dataset file, corrupt checkpoint) are printed as one line
``robustlab: error: ...`` with exit status 2; an interrupted training run says how to resume (exit 130).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from robustlab.errors import RobustlabError


def _parse_floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model with a defense from a TOML config")
    train.add_argument("--config", required=True, help="TOML file (see configs/)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set data.batch_size=64 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue the run in run.out_dir from its last checkpoint")

    ev = sub.add_parser("eval", help="evaluate a checkpoint: clean, FGSM and PGD accuracy")
    ev.add_argument("--checkpoint", required=True, help="run directory or checkpoints/epoch-* directory")
    ev.add_argument("--eps", type=_parse_floats, help="comma-separated ε list (default: the run's eval.eps)")
    ev.add_argument("--attacks", help="comma-separated attacks (default: the run's eval.attacks)")
    ev.add_argument("--subset", type=int, help="number of test examples (default: the run's eval.subset)")
    ev.add_argument("--pgd-steps", type=int, help="PGD iterations (default: the run's eval.pgd_steps)")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.add_argument("--out", help="write the results as JSON here (default: <run>/eval.json)")

    demo = sub.add_parser("demo", help="standard training vs PGD-AT of LeNet-5 on MNIST-5k (a few CPU minutes)")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a much shorter run, for smoke tests")

    ls = sub.add_parser("list", help="list the registered models, datasets, defenses or attacks")
    ls.add_argument("what", choices=["models", "datasets", "defenses", "attacks"])
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from robustlab.config import load_config
    from robustlab.engine import Trainer

    config = load_config(args.config, args.set)
    trainer = Trainer(config, resume=args.resume)
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: robustlab train --config {args.config} --resume"
              + "".join(f" --set {s}" for s in args.set), file=sys.stderr)
        return 130
    print(f"done: {result.run_dir} (evaluate with: robustlab eval --checkpoint {result.run_dir})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from robustlab.checkpoint import atomic_write_text, resolve_checkpoint
    from robustlab.config import config_from_dict
    from robustlab.engine import resolve_device
    from robustlab.evaluate import attack_factories, load_trained_model, robustness_curve
    from robustlab.report import markdown_table

    device = resolve_device(args.device)
    model, config, data, state = load_trained_model(args.checkpoint, device)
    overrides = config.to_dict()
    if args.eps is not None:
        overrides["eval"]["eps"] = args.eps
    if args.attacks:
        overrides["eval"]["attacks"] = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if args.subset is not None:
        overrides["eval"]["subset"] = args.subset
    if args.pgd_steps is not None:
        overrides["eval"]["pgd_steps"] = args.pgd_steps
    cfg = config_from_dict(overrides).eval
    x, y = data.test_x, data.test_y
    if cfg.subset:
        x, y = x[: cfg.subset], y[: cfg.subset]
    clean, points = robustness_curve(model, x, y, attack_factories(cfg), cfg.eps, batch_size=cfg.batch_size,
                                     device=device, progress=True)
    name = f"{config.model['name']} / {config.defense['name']} (epoch {state['epoch']})"
    print(f"{len(x)} test examples of {config.data.name}; PGD: {cfg.pgd_steps} steps, {cfg.pgd_restarts} restart(s)")
    print(markdown_table({name: (clean, points)}))
    ckpt = resolve_checkpoint(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.parent.parent / "eval.json"
    atomic_write_text(out, json.dumps({"checkpoint": str(ckpt), "examples": len(x), "clean": clean,
                                       "eval": vars(cfg), "curve": [vars(p) for p in points]}, indent=2))
    print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from robustlab.demo import run_demo

    if args.quick:
        run_demo(args.out, epochs_scale=0.1, eval_subset=200, pgd_steps=10)
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
        from robustlab.attacks import available_attacks as names
    print("\n".join(names()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"train": cmd_train, "eval": cmd_eval, "demo": cmd_demo, "list": cmd_list}[args.command]
    try:
        return handler(args)
    except RobustlabError as exc:
        print(f"robustlab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
