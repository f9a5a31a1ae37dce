"""The exploratory attack suites ``fast`` and ``quick``: every attack of the library, cut-down budgets, curves and ρ.

These are **not robustness claims** (their budgets are cut, and they overstate robust accuracy): the headline
number comes from the AutoAttack-strength ``standard`` suite of :mod:`robustlab.standard`. ``robustlab eval
--suite quick`` runs the attacks of the run's ``[eval]`` section (FGSM and PGD) at its ε list; ``--suite fast``
runs every attack of the library, sized so that LeNet-5 on MNIST-5k takes a few CPU minutes (``SuiteSettings``
field in brackets; ``SuiteSettings.paper()`` / ``--paper`` gives the papers' settings):

==================  ===========================================================================  ================
row                 attack, suite setting (paper setting)                                        examples
==================  ===========================================================================  ================
``fgsm``            FGSM, one step of ε                                                          subset (500)
``ll``              least-likely class step, one step of ε                                       subset
``ifgsm``           I-FGSM, [ifgsm_steps] 10 steps of min(0.03, ε/4)                             subset
``ill``             iterative least-likely class, as I-FGSM                                      subset
``pgd``             PGD-L∞, [pgd_steps] 20 (40) steps of 2.5ε/steps, random start,               subset
                    [pgd_restarts] 2 restarts (the second only on examples still robust)
``pgd_targeted``    targeted PGD-L∞ toward a random other class (seeded), as PGD, one restart    subset
``apgd_ce``         APGD-CE, [apgd_steps] 20 (100) steps                                         subset
``apgd_dlr_t``      APGD-DLR targeted, [apgd_targets] 3 (9) most likely other classes            subset
``pgd_l2``          PGD-L2 at its own ε list [eps_l2] (default ε·√d/4: 0.3 → 2.1 on 28×28)       subset
``transfer``        PGD crafted on the ``--transfer-source`` model (only with a source)          subset
``eot_pgd``         EOT-PGD, [eot_samples] 10 (80) gradients per step; added for a randomised    subset
                    model (failed stability check) or with ``--eot``
``worst_case``      per ε, the worst case per example over the L∞ rows (AutoAttack-style)        subset
``cw_l2``           C&W-L2, [cw_iterations] 100 (1000) iterations × [cw_binary_steps] 5 (9)      [minimal_subset]
                    binary steps from c₀ 0.1 (1e-3), Adam lr 0.1 (0.01)                          50
``deepfool``        DeepFool-L2, [deepfool_iterations] 50 (500, steps clipped to 0.1)            [deepfool_subset]
                                                                                                 100
``critic_hc``       the adversary-critic high-confidence attack, 100 (500) iterations            minimal_subset
``few_pixel_k``     few-pixel differential evolution, k ∈ [few_pixel_pixels] (1, 3), population  [few_pixel_subset]
                    40 (400) × 10 (75) generations                                               20
==================  ===========================================================================  ================

Why C&W's learning rate is 10× the paper's: in C&W's tanh space a pixel at exactly 0 or 1 sits at w ≈ ±7.25, and
Adam moves each w by about ``lr`` per iteration, so with 100 iterations at lr 0.01 the (mostly black) MNIST pixels
cannot move at all: on the demo's PGD-AT LeNet-5 that finds 10% of the examples, lr 0.1 finds 100% with a smaller
ρ than DeepFool.

The default L∞ ε list of the fast suite (``robustlab eval``) is ε/2 and ε of the run's largest ``eval.eps``.
Each row draws its randomness from its own seed (the suite's seed, the row and ε), so a row's result does not
depend on which rows ran before it. Every subset is a prefix of the same test examples (a minimal or few-pixel
row's prefix may be longer than ``subset``: ``--minimal-subset 10000`` attacks 10,000 images), so the per-example
outcomes of two rows can be compared on the examples they share. ε-bounded rows report accuracy (and error) per ε; minimal rows report accuracy, success rate
and ρ_adv with and without failures. The masking checks of :mod:`robustlab.checks` run with every suite; when the
model's predictions are not repeatable (a randomised model) the suite adds EOT-PGD and uses it for the large-ε
check.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from robustlab import checks as masking
from robustlab.attacks import Attack, build_attack
from robustlab.attacks.transfer import TransferAttack
from robustlab.evaluate import (CurvePoint, MinimalSummary, Outcome, attack_outcome, minimal_attack_outcome,
                                worst_case_ensemble)
from robustlab.rng import derived_seed, seeded

SUITES = ("quick", "fast")
FEW_PIXEL_PREFIX = "few_pixel_"

# Paper-scale settings (spec and the attacks' papers): slow on a CPU.
PAPER_SETTINGS = dict(pgd_steps=40, pgd_restarts=1, apgd_steps=100, apgd_targets=9, cw_iterations=1000,
                      cw_binary_steps=9, cw_initial_const=1e-3, cw_lr=1e-2, deepfool_iterations=500,
                      deepfool_max_step=0.1, critic_iterations=500, few_pixel_population=400, few_pixel_iterations=75,
                      eot_samples=80)


@dataclass
class SuiteSettings:
    """Everything a suite needs besides the model and the data; the defaults size ``--suite fast`` for a CPU."""

    suite: str = "fast"
    eps: list[float] = field(default_factory=lambda: [0.15, 0.3])
    eps_l2: list[float] | None = None          # None: ε·√d/4 for each L∞ ε
    attacks: list[str] | None = None           # quick: the attacks to run; fast: only these rows (None: all)
    subset: int = 500                          # ε-bounded attacks, noise and gradient checks
    minimal_subset: int = 50                   # C&W, critic_hc
    deepfool_subset: int = 100
    few_pixel_subset: int = 20
    check_subset: int = 200                    # PGD at the large ε
    batch_size: int = 500
    pgd_steps: int = 20
    pgd_step_size: float = 0.0                 # 0: 2.5·ε/steps
    pgd_restarts: int = 2
    ifgsm_steps: int = 10
    apgd_steps: int = 20
    apgd_targets: int = 3
    cw_iterations: int = 100
    cw_binary_steps: int = 5
    cw_initial_const: float = 0.1
    cw_lr: float = 0.1                         # 10× the paper's 0.01 for 10× fewer iterations (see below)
    deepfool_iterations: int = 50
    deepfool_max_step: float | None = None
    critic_iterations: int = 100
    few_pixel_pixels: list[int] = field(default_factory=lambda: [1, 3])
    few_pixel_population: int = 40
    few_pixel_iterations: int = 10
    eot: bool = False                          # add EOT-PGD even for a deterministic model
    eot_samples: int = 10
    large_eps: float = 1.0
    large_eps_max_accuracy: float = 0.05
    max_zero_gradients: float = 0.01
    tol: float = masking.DEFAULT_TOL
    gallery: int = 6                           # examples kept per attack for the gallery plot
    seed: int = 0

    def __post_init__(self):
        if self.suite not in SUITES:
            raise ValueError(f"suite must be one of {SUITES}, got {self.suite!r}")
        if not self.eps or any(not math.isfinite(e) or not 0 < e <= 1 for e in self.eps):
            raise ValueError(f"eps must be a non-empty list of L∞ radii in (0, 1], got {self.eps}")
        for f in dataclasses.fields(self):  # counts: a negative one would be a Python slice, not a size
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value}")
        for key in ("batch_size", "pgd_steps", "pgd_restarts", "ifgsm_steps", "apgd_steps", "apgd_targets",
                    "eot_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")

    @classmethod
    def paper(cls, **overrides) -> "SuiteSettings":
        """The papers' settings (PGD-40, APGD-100 with 9 targets, C&W 1000 × 9 from c₀ 1e-3, DeepFool 500, ...)."""
        return cls(**{**PAPER_SETTINGS, **overrides})

    def l2_eps(self, in_shape: tuple[int, ...]) -> list[float]:
        if self.eps_l2:
            return list(self.eps_l2)
        scale = math.sqrt(math.prod(in_shape)) / 4
        return [round(e * scale, 3) for e in self.eps]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class RandomTargetAttack(Attack):
    """Run a targeted ``attack`` toward a random class ≠ the true label (seeded per call); ``y`` stays the truth."""

    def __init__(self, attack: Attack, num_classes: int, seed: int = 0):
        super().__init__(model_mode="keep")
        if num_classes < 2:
            raise ValueError("a targeted attack needs at least 2 classes")
        self.attack, self.num_classes, self.seed = attack, int(num_classes), int(seed)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        offset = torch.randint(1, self.num_classes, (len(y),), generator=gen).to(y.device)
        return self.attack(model, x, (y + offset) % self.num_classes)


@dataclass
class SuiteEntry:
    """One row family of a suite: ``build(eps)`` makes the attack (``eps`` None for a minimal attack)."""

    label: str
    kind: str                                   # "bounded" or "minimal"
    norm: str                                   # "linf", "l2", "l0"
    build: Callable[[float | None], Attack]
    eps: list[float]
    subset: int
    settings: str
    ensemble: bool = False                      # part of the L∞ worst case

    def describe(self, n: int) -> dict:
        return {"kind": self.kind, "norm": self.norm, "eps": self.eps, "examples": n, "settings": self.settings}


def build_suite(settings: SuiteSettings, *, num_classes: int, in_shape: tuple[int, ...], randomised: bool = False,
                transfer_source: nn.Module | None = None) -> list[SuiteEntry]:
    """The rows of the suite (see the module docstring), in the order they run."""
    s = settings
    eps = sorted(set(float(e) for e in s.eps))

    alpha = s.pgd_step_size if s.pgd_step_size > 0 else None  # None: the attacks' 2.5·ε/steps

    alpha_text = f"α {s.pgd_step_size:g}" if s.pgd_step_size > 0 else f"α 2.5ε/{s.pgd_steps}"
    pgd_text = f"{s.pgd_steps} steps, {alpha_text}, random start, {s.pgd_restarts} restart(s)"

    def pgd(e, restarts=s.pgd_restarts, **kw):
        return build_attack("pgd", e, steps=s.pgd_steps, step_size=alpha, restarts=restarts, **kw)

    entries: list[SuiteEntry] = []
    bounded = lambda label, build, text, norm="linf", eps_list=eps, ensemble=True: entries.append(  # noqa: E731
        SuiteEntry(label, "bounded", norm, build, eps_list, s.subset, text, ensemble and norm == "linf"))

    if s.suite == "quick":
        for name in s.attacks or ["fgsm", "pgd"]:
            if name == "pgd":
                bounded("pgd", lambda e: pgd(e), pgd_text)
            else:
                bounded(name, lambda e, name=name: build_attack(name, e), "defaults")
    else:
        ifgsm_alpha = lambda e: min(0.03, e / 4)  # noqa: E731
        bounded("fgsm", lambda e: build_attack("fgsm", e), "1 step of ε")
        bounded("ll", lambda e: build_attack("ll", e), "1 step of ε toward the least likely class")
        bounded("ifgsm", lambda e: build_attack("ifgsm", e, steps=s.ifgsm_steps, step_size=ifgsm_alpha(e)),
                f"{s.ifgsm_steps} steps of min(0.03, ε/4)")
        bounded("ill", lambda e: build_attack("ill", e, steps=s.ifgsm_steps, step_size=ifgsm_alpha(e)),
                f"{s.ifgsm_steps} steps of min(0.03, ε/4) toward the least likely class")
        bounded("pgd", lambda e: pgd(e), pgd_text)
        bounded("pgd_targeted", lambda e: RandomTargetAttack(pgd(e, restarts=1, targeted=True), num_classes,
                                                             s.seed),
                f"toward a random other class (seed {s.seed}), {s.pgd_steps} steps, {alpha_text}")
        bounded("apgd_ce", lambda e: build_attack("apgd_ce", e, steps=s.apgd_steps), f"{s.apgd_steps} steps")
        if num_classes >= 4:
            targets = min(s.apgd_targets, num_classes - 1)
            bounded("apgd_dlr_t", lambda e: build_attack("apgd_dlr", e, steps=s.apgd_steps, top_targets=targets),
                    f"{s.apgd_steps} steps × {targets} target classes")
        bounded("pgd_l2", lambda e: build_attack("pgd_l2", e, steps=s.pgd_steps),
                f"{s.pgd_steps} steps, α 2.5ε/{s.pgd_steps}, random start", norm="l2",
                eps_list=s.l2_eps(in_shape))
    if transfer_source is not None:
        bounded("transfer", lambda e: TransferAttack(transfer_source, pgd(e)), f"PGD ({pgd_text}) on the source")
    if randomised or s.eot:
        bounded("eot_pgd", lambda e: build_attack("eot_pgd", e, eot_samples=s.eot_samples, steps=s.pgd_steps,
                                                  step_size=alpha),
                f"{s.eot_samples} EOT samples per gradient, {s.pgd_steps} steps, {alpha_text}")
    if s.suite == "fast":
        minimal = lambda label, build, subset, text, norm="l2": entries.append(  # noqa: E731
            SuiteEntry(label, "minimal", norm, build, [], subset, text))
        minimal("cw_l2", lambda _: build_attack("cw_l2", max_iter=s.cw_iterations,
                                                binary_search_steps=s.cw_binary_steps,
                                                initial_const=s.cw_initial_const, lr=s.cw_lr),
                s.minimal_subset, f"{s.cw_iterations} iterations × {s.cw_binary_steps} binary steps, "
                                  f"c₀ {s.cw_initial_const:g}, lr {s.cw_lr:g}, κ 0")
        minimal("deepfool", lambda _: build_attack("deepfool", max_iter=s.deepfool_iterations,
                                                   max_step=s.deepfool_max_step),
                s.deepfool_subset, f"{s.deepfool_iterations} iterations, overshoot 0.02"
                + (f", steps clipped to {s.deepfool_max_step:g}" if s.deepfool_max_step else ""))
        minimal("critic_hc", lambda _: build_attack("critic_hc", max_iter=s.critic_iterations),
                s.minimal_subset, f"{s.critic_iterations} iterations, steps clipped to 0.1, C = clean confidence")
        for k in s.few_pixel_pixels:
            minimal(f"{FEW_PIXEL_PREFIX}{k}", lambda _, k=k: build_attack(
                "few_pixel", pixels=k, population=s.few_pixel_population, iterations=s.few_pixel_iterations,
                seed=s.seed), s.few_pixel_subset,
                f"{k} pixel(s), population {s.few_pixel_population} × {s.few_pixel_iterations} generations",
                norm="l0")
    if s.attacks and s.suite == "fast":
        wanted = set(s.attacks)
        unknown = wanted - {e.label for e in entries}
        if unknown:
            raise ValueError(f"unknown suite row(s) {sorted(unknown)}; rows: {', '.join(e.label for e in entries)}")
        entries = [e for e in entries if e.label in wanted]
    return entries


@dataclass
class SuiteResult:
    """What a suite measured; :meth:`to_dict` is the JSON written by ``robustlab eval``."""

    suite: str
    n: int
    clean: float
    points: list[CurvePoint]
    minimal: list[MinimalSummary]
    ensemble: list[dict]
    checks: list[masking.Check]
    attacks: dict[str, dict]
    randomised: bool
    settings: SuiteSettings
    seconds: float = 0.0
    masks: dict[tuple[str, float | None], torch.Tensor] = field(default_factory=dict, repr=False)
    gallery: dict[str, Outcome] = field(default_factory=dict, repr=False)
    clean_outcome: Outcome | None = field(default=None, repr=False)
    labels: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "suite": self.suite, "examples": self.n, "clean": self.clean, "clean_error": 1.0 - self.clean,
            "curve": [{**vars(p), "error": p.error} for p in self.points],
            "ensemble": self.ensemble,
            "minimal": [m.to_dict() for m in self.minimal],
            "checks": [c.to_dict() for c in self.checks],
            "checks_passed": not masking.any_failed(self.checks),
            "randomised": self.randomised,
            "attacks": self.attacks,
            "settings": self.settings.to_dict(),
            "seconds": self.seconds,
        }


def evaluate_suite(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: SuiteSettings, *,
                   num_classes: int | None = None, transfer_source: nn.Module | None = None,
                   device: torch.device | str | None = None, log: Callable[[str], None] | None = None
                   ) -> SuiteResult:
    """Run the suite on the first ``settings.subset`` of ``(x, y)``, then the ensemble and the masking checks."""
    log = log or (lambda _msg: None)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    return _evaluate_suite(model, x, y, settings, num_classes=num_classes, transfer_source=transfer_source,
                           device=device, dev=dev, log=log)


def _evaluate_suite(model, x, y, settings, *, num_classes, transfer_source, device, dev, log) -> SuiteResult:
    s = settings
    t_start = time.perf_counter()
    if device is not None:
        model = model.to(device)
    n = min(s.subset, len(x)) if s.subset else len(x)
    x_all, y_all = x, y  # the minimal and few-pixel rows take their own prefix, which may exceed ``subset``
    x, y = x[:n], y[:n]
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model(x[:1].to(next(model.parameters()).device)).shape[1])
    kw = dict(batch_size=s.batch_size, device=device)

    stability = masking.stable_predictions(model, x[: s.batch_size], batch_size=s.batch_size)
    randomised = not stability.passed
    if randomised:
        log("the model's predictions are not repeatable: randomised model, adding EOT-PGD")
    clean_out = attack_outcome(model, x, y, keep=s.gallery, **kw)
    clean = clean_out.accuracy
    log(f"clean accuracy {100 * clean:.1f}% on {n} examples")

    entries = build_suite(s, num_classes=num_classes, in_shape=tuple(x.shape[1:]), randomised=randomised,
                          transfer_source=transfer_source)
    points: list[CurvePoint] = []
    minimal: list[MinimalSummary] = []
    masks: dict[tuple[str, float | None], torch.Tensor] = {}
    gallery: dict[str, Outcome] = {}
    attacks: dict[str, dict] = {}
    for entry in entries:
        m = min(entry.subset, n) if entry.kind == "bounded" else min(entry.subset or len(x_all), len(x_all))
        xs, ys = (x[:m], y[:m]) if entry.kind == "bounded" else (x_all[:m], y_all[:m])
        t0 = time.perf_counter()
        if entry.kind == "bounded":
            for e in entry.eps:
                keep = s.gallery if e == max(entry.eps) else 0
                with seeded(derived_seed(s.seed, entry.label, e), dev):  # a row's own seed
                    out = attack_outcome(model, xs, ys, entry.build(e), keep=keep, **kw)
                masks[(entry.label, e)] = out.correct
                points.append(CurvePoint(entry.label, e, out.accuracy, n=m, norm=entry.norm))
                if keep:
                    gallery[entry.label] = out
                log(f"{entry.label:>13} ε={e:<6g} accuracy {100 * out.accuracy:5.1f}% on {m} ({out.seconds:.1f} s)")
        else:
            with seeded(derived_seed(s.seed, entry.label), dev):
                summary, out = minimal_attack_outcome(model, xs, ys, entry.build(None), name=entry.label,
                                                      keep=s.gallery, **kw)
            masks[(entry.label, None)] = out.correct
            minimal.append(summary)
            gallery[entry.label] = out
            log(f"{entry.label:>13} accuracy {100 * summary.accuracy:5.1f}%, "
                f"success {100 * summary.success_rate:.1f}%, ρ {summary.rho:.3f} / {summary.rho_with_failures:.3f} "
                f"on {m} ({out.seconds:.1f} s)")
        attacks[entry.label] = {**entry.describe(m), "seconds": round(time.perf_counter() - t0, 3)}

    # The worst case per example over the L∞ rows, at each ε: every outcome is known, so nothing is re-attacked.
    ensemble = []
    members = [e for e in entries if e.ensemble]
    for e in sorted({eps for entry in members for eps in entry.eps}):
        names = [entry.label for entry in members if e in entry.eps and min(entry.subset, n) == n]
        if len(names) < 2:
            continue
        res = worst_case_ensemble(model, x, y, dict.fromkeys(names), known={name: masks[(name, e)] for name in names},
                                  **kw)
        masks[("worst_case", e)] = res.robust
        ensemble.append({"eps": e, "norm": "linf", "attacks": names, **res.to_dict()})
        log(f"{'worst_case':>13} ε={e:<6g} accuracy {100 * res.accuracy:5.1f}% on {n} (worst of {len(names)} attacks)")

    result = SuiteResult(s.suite, n, clean, points, minimal, ensemble, [], attacks, randomised, s,
                         masks=masks, gallery=gallery, clean_outcome=clean_out, labels=y[: s.gallery].cpu())
    t0 = time.perf_counter()
    with seeded(derived_seed(s.seed, "checks"), dev):
        result.checks = run_checks(model, x, y, result, stability=stability, **kw)
    log(f"masking checks ({time.perf_counter() - t0:.1f} s): " + masking.summary_line(result.checks))
    result.seconds = time.perf_counter() - t_start
    return result


def curve_of(result: SuiteResult, attack: str) -> dict[float, float]:
    return {p.eps: p.accuracy for p in result.points if p.attack == attack}


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result: SuiteResult, *,
               stability: masking.Check | None = None, batch_size: int = 500,
               device: torch.device | str | None = None) -> list[masking.Check]:
    """All masking checks of :mod:`robustlab.checks` for a suite result on ``(x, y)`` (its first ``n``)."""
    s = result.settings
    n = result.n
    x, y = x[:n], y[:n]
    out = [stability or masking.stable_predictions(model, x[:batch_size], batch_size=batch_size)]
    out.append(masking.input_gradients(model, x, y, batch_size=batch_size, max_fraction=s.max_zero_gradients))

    pgd, fgsm = curve_of(result, "pgd"), curve_of(result, "fgsm")
    out.append(masking.iterative_vs_single(pgd, fgsm, n=n, tol=s.tol))

    few_pixel = {name: mask for (name, _), mask in result.masks.items() if name.startswith(FEW_PIXEL_PREFIX)}
    white_min = [result.masks[(name, None)] for name in ("cw_l2", "deepfool") if (name, None) in result.masks]
    out.append(masking.whitebox_vs_blackbox(whitebox=pgd, transfer=curve_of(result, "transfer"), n=n,
                                            minimal_whitebox=white_min, few_pixel=few_pixel, tol=s.tol))

    m = min(s.check_subset, n) if s.check_subset else n
    steps = max(s.pgd_steps, 10)
    if result.randomised:
        big = build_attack("eot_pgd", s.large_eps, eot_samples=s.eot_samples, steps=steps)
    else:
        big = build_attack("pgd", s.large_eps, steps=steps)
    out.append(masking.large_eps(model, x[:m], y[:m], big, eps=s.large_eps, max_accuracy=s.large_eps_max_accuracy,
                                 batch_size=batch_size))

    curves: dict[str, dict[float, float]] = {}
    for p in result.points:
        curves.setdefault(p.attack, {})[p.eps] = p.accuracy
    for row in result.ensemble:
        curves.setdefault("worst_case", {})[row["eps"]] = row["accuracy"]
    out.append(masking.monotone_in_eps(curves, result.clean, n=n, tol=s.tol))

    strongest = dict(pgd)
    for e, acc in curve_of(result, "eot_pgd").items():
        strongest[e] = min(acc, strongest.get(e, acc))
    label = "pgd" if not result.randomised else "pgd/eot_pgd"
    out.append(masking.noise_weaker(model, x, y, strongest, attack=label, tol=s.tol, batch_size=batch_size,
                                    seed=s.seed))
    return out


def suite_row_names() -> list[str]:
    """Every row of the fast suite (what ``--suite fast --attacks`` accepts), in the order the rows run: the
    transfer row needs ``--transfer-source`` and EOT-PGD a randomised model or ``--eot``."""
    entries = build_suite(SuiteSettings(), num_classes=10, in_shape=(1, 28, 28), randomised=True,
                          transfer_source=nn.Identity())
    return [e.label for e in entries]
