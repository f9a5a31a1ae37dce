"""Suites as data: an ordered list of stages, the masking checks to run, and whether the number is a claim.

A :class:`Stage` names a registered attack (:func:`robustlab.attacks.build_attack`) and its options; the runner
(:mod:`robustlab.evaluation.runner`) builds it at each ε, so one stage serves a whole curve. A :class:`Suite` is the
stages plus how they combine: ``cascade`` (each stage attacks only the examples every stage before it left robust:
AutoAttack's worst case for the least work) or not (each stage attacks every clean-correct example, so that each
has its own accuracy; the worst case per example is the same). A preset is a function of the settings and of what
is known about the model (its classes, whether it is randomised, whether a transfer source is given); a new suite
is one more entry in :data:`PRESETS`, and a user may pass their own list of stages.

==================  ========================================================================================  =====
preset              stages                                                                                    claim
==================  ========================================================================================  =====
``standard``        AutoAttack's standard version (Croce & Hein 2020) at its settings: APGD-CE (100           yes
                    iterations), APGD-T (targeted DLR, 9 most likely other classes × 100), FAB-T (9 × 100),
                    Square (5,000 queries); cascade. A randomised model (two predictions of a batch
                    differ) gets ``rand``.
``rand``            AutoAttack's rand version: APGD-CE and APGD-DLR with EOT over 20 draws per gradient; each yes
                    final point predicted ``final_draws`` times (an example is robust in the fraction of draws
                    that classify it correctly); the second stage attacks every example still partly robust.
``adaptive``        APGD-CE; APGD-T toward the 3 classes nearest in a linearisation (MALT's ranking);         not
                    Square on a probe of the still-robust examples (smallest margins and a random share). If  yet
                    the probe fools any or a masking alarm rang: Square on all, then APGD-T (9) and FAB-T.
                    Being validated on the zoo (benchmarks/eval_zoo.py) before it may be a claim.
``adaptive_rand``   ``adaptive`` on a randomised model: APGD-CE with EOT over 2 draws on every example, then  not
                    ``rand``'s stages on the examples it left partly robust.                                  yet
``fast``            every attack of the library with cut budgets (FGSM, LL, I-FGSM, I-LL, PGD with restarts,  no
                    targeted PGD toward a random class, APGD-CE, APGD-DLR-T, PGD-L2, transfer, EOT-PGD; C&W,
                    DeepFool, the critic attack, few-pixel: ρ_adv), each on every example: curves and ρ
``quick``           the attacks of a run's ``[eval]`` section (FGSM and PGD), each on every example           no
==================  ========================================================================================  =====

Why the fast suite's C&W learning rate is 10× the paper's: in C&W's tanh space a pixel at exactly 0 or 1 sits at
w ≈ ±7.25, and Adam moves each w by about ``lr`` per iteration, so with 100 iterations at lr 0.01 the (mostly
black) MNIST pixels cannot move at all: on the demo's PGD-AT LeNet-5 that finds 10% of the examples, lr 0.1 finds
100% with a smaller ρ than DeepFool.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from robustlab.errors import ConfigError, unknown_name
from robustlab.evaluation.settings import EvalSettings

# The masking checks a suite may ask for (robustlab.evaluation.suite_checks runs them).
CHECK_NAMES = ("stable_predictions", "input_gradients", "iterative_vs_single", "blackbox_beats_whitebox",
               "whitebox_vs_blackbox", "large_eps", "monotone_in_eps", "noise_weaker")


@dataclass(frozen=True)
class Stage:
    """One attack of a suite.

    ``attack``/``options``: :func:`~robustlab.attacks.build_attack`'s name and keywords (the evaluation's ε, and its
    norm where the attack takes one, are added by the runner). ``kind``: "bounded" (ε-ball) or "minimal" (no ε:
    accuracy, success and ρ_adv). ``radii``: a bounded stage in its own ``norm`` at these radii instead of the
    evaluation's (PGD-L2 in the fast suite); it is not part of the worst case. ``subset``: at most this many
    examples (0: every example of the evaluation). ``transfer``: crafted on the transfer source model, judged on
    the evaluated one. Target classes are the attack's own options (``target``, ``top_targets``:
    :mod:`robustlab.attacks.targets`).
    ``worst_case``: counts in the robust accuracy. ``step_rule``: a step size that follows ε along a curve.
    ``probe`` p < 1, probe and escalate: the stage first attacks a probe, the p/2 share of its examples with the
    smallest logit margin seen so far and a random p/2 share of the others; if the probe fools any example, it
    attacks the rest too and the suite is escalated: its ``when="escalated"`` stages run. A masking alarm before
    the suite (randomised predictions, zero input gradients) escalates it from the start (no probing).
    ``probe_options``: options that the probe's attack adds to ``options`` (a cheaper probe, e.g. Square's
    discarding); on escalation the probe's examples it left robust are attacked again with ``options`` alone, so
    an escalated stage is as strong as without them.
    """

    name: str
    attack: str
    options: dict = field(default_factory=dict)
    kind: str = "bounded"
    settings: str = ""
    radii: tuple[float, ...] = ()
    norm: str | None = None
    subset: int = 0
    transfer: bool = False
    worst_case: bool = True
    step_rule: tuple[float, float] | None = None  # (cap, fraction): step_size = min(cap, fraction × ε) at each ε
    probe: float = 1.0  # < 1: probe and escalate
    when: str = "always"  # "escalated": only after a probe fooled an example or a masking alarm rang
    probe_options: dict = field(default_factory=dict)  # added to ``options`` in the probe only

    def __post_init__(self):
        if self.kind not in ("bounded", "minimal"):
            raise ConfigError(f"stage {self.name!r}: kind must be 'bounded' or 'minimal', got {self.kind!r}")
        if not 0 < self.probe <= 1:
            raise ConfigError(f"stage {self.name!r}: probe must be in (0, 1], got {self.probe}")
        if self.when not in ("always", "escalated"):
            raise ConfigError(f"stage {self.name!r}: when must be 'always' or 'escalated', got {self.when!r}")
        if self.probe_options and self.probe == 1:
            raise ConfigError(f"stage {self.name!r}: probe_options need a probe (probe < 1)")

    @property
    def in_worst_case(self) -> bool:
        return self.kind == "bounded" and self.worst_case and not self.radii

    def to_dict(self) -> dict:
        spec = dataclasses.asdict(self)
        if not self.probe_options:  # a stage without them keeps the identity (and saved state) it always had
            del spec["probe_options"]
        return spec


@dataclass(frozen=True)
class Suite:
    """An ordered list of stages, how they combine, the checks, and whether the result is a robustness claim."""

    name: str
    stages: tuple[Stage, ...]
    cascade: bool = True
    claim: bool = False
    checks: tuple[str, ...] = CHECK_NAMES
    final_draws: int = 1            # predictions of each final point (> 1 for a randomised model)
    if_randomised: str | None = None  # the preset to run instead on a randomised model

    def __post_init__(self):
        names = [s.name for s in self.stages]
        if not names:
            raise ConfigError(f"suite {self.name!r} has no stage")
        if len(set(names)) != len(names):
            raise ConfigError(f"suite {self.name!r}: stage names must be unique, got {names}")
        unknown = [c for c in self.checks if c not in CHECK_NAMES]
        if unknown:
            raise unknown_name("masking check", unknown[0], CHECK_NAMES)

    def to_dict(self) -> dict:
        return {"name": self.name, "cascade": self.cascade, "claim": self.claim, "checks": list(self.checks),
                "final_draws": self.final_draws, "stages": [s.to_dict() for s in self.stages]}


@dataclass(frozen=True)
class ModelFacts:
    """What a preset may depend on besides the settings: the model's classes and input shape, whether its
    predictions are randomised (two passes differ), whether a transfer source model is given."""

    num_classes: int
    in_shape: tuple[int, ...]
    randomised: bool = False
    has_transfer_source: bool = False


AA_CHECKS = ("stable_predictions", "input_gradients", "iterative_vs_single", "blackbox_beats_whitebox", "large_eps",
             "noise_weaker")


def standard(s: EvalSettings, m: ModelFacts) -> Suite:
    """AutoAttack's standard version at its settings (APGD-T needs 4 classes: the targeted DLR loss)."""
    targets = min(s.targets, m.num_classes - 1)
    stages = [Stage("apgd_ce", "apgd_ce", {"steps": s.steps}, settings=f"{s.steps} iterations")]
    if m.num_classes >= 4:
        stages.append(Stage("apgd_t", "apgd_dlr", {"steps": s.steps, "top_targets": targets,
                                                   "batched": s.batched_targets},
                            settings=f"targeted DLR, {targets} target classes × {s.steps} iterations"))
    stages.append(Stage("fab_t", "fab", {"steps": s.steps, "top_targets": targets, "batched": s.batched_targets},
                        settings=f"{targets} target classes × {s.steps} iterations"))
    stages.append(Stage("square", "square", {"queries": s.square_queries},
                        settings=f"{s.square_queries} queries, margin loss"))
    return Suite("standard", tuple(stages), cascade=True, claim=True, checks=AA_CHECKS, if_randomised="rand")


def adaptive(s: EvalSettings, m: ModelFacts) -> Suite:
    """AutoAttack's strength for a fraction of its compute, when nothing says the gradients mislead: APGD-CE;
    APGD-T toward the ``adaptive_targets`` classes nearest in a linearisation of the model (MALT's ranking) instead
    of the 9 most likely; Square on a probe of the examples still robust (:class:`Stage`'s ``probe``), where an
    example whose margin has stalled stops early (``probe_give_up``: Square's online discarding,
    :mod:`robustlab.attacks.square`). When the probe fools an example, or a masking alarm rang before the suite,
    every shortcut is dropped: Square at its full budget attacks every example still robust (the probe's too), then
    AutoAttack's own APGD-T (9 most likely classes) and FAB-T (unless ``escalate_fab`` is off) run on what is left.
    ``square_give_up`` (off by default; it overrides ``probe_give_up``): the discarding everywhere, the escalated
    Square too (weaker on the zoo's MART model).

    Not a robustness claim until the validation zoo (``benchmarks/eval_zoo.py``) shows it never weaker than
    ``standard``: its number is printed as a cut-down suite's."""
    targets9 = min(s.targets, m.num_classes - 1)
    stages = [Stage("apgd_ce", "apgd_ce", {"steps": s.steps}, settings=f"{s.steps} iterations")]
    if m.num_classes >= 4:
        targets = min(s.adaptive_targets, m.num_classes - 1)
        stages.append(Stage("apgd_t", "apgd_dlr", {"steps": s.steps, "top_targets": targets,
                                                   "target_order": "linear", "batched": s.batched_targets},
                            settings=f"targeted DLR, the {targets} classes nearest in a linearisation × "
                                     f"{s.steps} iterations"))
    give_up = {"give_up": [list(c) for c in s.square_give_up]} if s.square_give_up else {}
    probe_checkpoints = [list(c) for c in s.probe_give_up if c[0] < s.square_queries]  # those within the budget
    probe_give_up = ({"give_up": probe_checkpoints}
                     if probe_checkpoints and not s.square_give_up and s.square_probe < 1 else {})
    stopping = "; an example stops at " + _give_up_text(s.square_give_up) if s.square_give_up else ""
    if probe_give_up:
        stopping = ("; in the probe an example stops at " + _give_up_text(probe_checkpoints)
                    + " (escalated: those meet the full budget again)")
    stages.append(Stage("square", "square", {"queries": s.square_queries, **give_up}, probe=s.square_probe,
                        probe_options=probe_give_up,
                        settings=f"{s.square_queries} queries, margin loss; a {100 * s.square_probe:g}% probe first, "
                                 f"every example when it fools any{stopping}"))
    if m.num_classes >= 4:
        stages.append(Stage("apgd_t9", "apgd_dlr", {"steps": s.steps, "top_targets": targets9,
                                                    "batched": s.batched_targets}, when="escalated",
                            settings=f"escalation: targeted DLR, {targets9} most likely classes × {s.steps} "
                                     f"iterations"))
    if s.escalate_fab or m.num_classes < 4:
        stages.append(Stage("fab_t", "fab", {"steps": s.steps, "top_targets": targets9, "batched": s.batched_targets},
                            when="escalated" if m.num_classes >= 4 else "always",
                            settings=f"{'escalation: ' if m.num_classes >= 4 else ''}{targets9} target classes × "
                                     f"{s.steps} iterations"))
    return Suite("adaptive", tuple(stages), cascade=True, claim=False, checks=AA_CHECKS,
                 if_randomised="adaptive_rand")


def _give_up_text(checkpoints: list[list[float]]) -> str:
    return ", ".join(f"{q:g} queries if its margin is above {r:g}× its first" for q, r in checkpoints)


def adaptive_rand(s: EvalSettings, m: ModelFacts) -> Suite:
    """``adaptive`` on a randomised model: APGD-CE with EOT over ``adaptive_eot_samples`` draws per gradient on
    every example first, then AutoAttack's ``rand`` stages (EOT over ``eot_samples`` draws) on the examples it left
    partly robust. Each example still meets every stage of ``rand``, unless the cheap pass already fooled it in all
    ``final_draws`` predictions."""
    cheap = Stage("apgd_ce_eot_cheap", "apgd_ce", {"steps": s.steps, "eot_samples": s.adaptive_eot_samples},
                  settings=f"{s.steps} iterations, EOT over {s.adaptive_eot_samples} draws")
    full = rand(s, m)
    return Suite("adaptive_rand", (cheap, *full.stages), cascade=True, claim=False, checks=full.checks,
                 final_draws=s.final_draws)


def rand(s: EvalSettings, m: ModelFacts) -> Suite:
    """AutoAttack's rand version: APGD-CE and APGD-DLR with EOT, each final point predicted ``final_draws`` times."""
    stages = tuple(Stage(f"apgd_{loss}_eot", f"apgd_{loss}", {"steps": s.steps, "eot_samples": s.eot_samples},
                         settings=f"{s.steps} iterations, EOT over {s.eot_samples} draws")
                   for loss in ("ce", "dlr"))
    checks = tuple(c for c in AA_CHECKS if c != "blackbox_beats_whitebox")
    return Suite("rand", stages, cascade=True, claim=True, checks=checks, final_draws=s.final_draws)


def _pgd_options(s: EvalSettings, restarts: int) -> tuple[dict, str]:
    alpha = s.pgd_step_size if s.pgd_step_size > 0 else None  # None: the attacks' 2.5·ε/steps
    alpha_text = f"α {s.pgd_step_size:g}" if alpha else f"α 2.5ε/{s.pgd_steps}"
    return ({"steps": s.pgd_steps, "step_size": alpha, "restarts": restarts},
            f"{s.pgd_steps} steps, {alpha_text}, random start, {restarts} restart(s)")


def _eot_pgd(s: EvalSettings) -> Stage:
    options, text = _pgd_options(s, 1)
    del options["restarts"]
    return Stage("eot_pgd", "eot_pgd", {**options, "eot_samples": s.eot_samples},
                 settings=f"{s.eot_samples} EOT samples per gradient, {text}")


def quick(s: EvalSettings, m: ModelFacts) -> Suite:
    """The attacks of a run's ``[eval]`` section (``attacks``; FGSM and PGD by default), each on every example."""
    stages = []
    for name in s.attacks or ["fgsm", "pgd"]:
        if name == "pgd":
            options, text = _pgd_options(s, s.pgd_restarts)
            stages.append(Stage("pgd", "pgd", options, settings=text))
        else:
            stages.append(Stage(name, name, settings="defaults"))
    if (m.randomised or s.eot) and "eot_pgd" not in (s.attacks or []):
        stages.append(_eot_pgd(s))
    return Suite("quick", tuple(stages), cascade=False, claim=False,
                 checks=tuple(c for c in CHECK_NAMES if c != "blackbox_beats_whitebox"))


FEW_PIXEL_PREFIX = "few_pixel_"


def fast(s: EvalSettings, m: ModelFacts) -> Suite:
    """Every attack of the library with cut budgets (``EvalSettings.paper()``: the papers'), each on every example."""
    ifgsm = {"steps": s.ifgsm_steps}
    pgd, pgd_text = _pgd_options(s, s.pgd_restarts)
    pgd1, pgd1_text = _pgd_options(s, 1)
    stages = [
        Stage("fgsm", "fgsm", settings="1 step of ε"),
        Stage("ll", "ll", settings="1 step of ε toward the least likely class"),
        Stage("ifgsm", "ifgsm", ifgsm, step_rule=(0.03, 0.25), settings=f"{s.ifgsm_steps} steps of min(0.03, ε/4)"),
        Stage("ill", "ill", ifgsm, step_rule=(0.03, 0.25),
              settings=f"{s.ifgsm_steps} steps of min(0.03, ε/4) toward the least likely class"),
        Stage("pgd", "pgd", pgd, settings=pgd_text),
        Stage("pgd_targeted", "pgd", {**pgd1, "target": "random"},
              settings=f"toward a random other class, {pgd1_text}"),
        Stage("apgd_ce", "apgd_ce", {"steps": s.apgd_steps}, settings=f"{s.apgd_steps} steps"),
    ]
    if m.num_classes >= 4:
        targets = min(s.apgd_targets, m.num_classes - 1)
        stages.append(Stage("apgd_dlr_t", "apgd_dlr", {"steps": s.apgd_steps, "top_targets": targets},
                            settings=f"{s.apgd_steps} steps × {targets} target classes"))
    stages.append(Stage("pgd_l2", "pgd_l2", {"steps": s.pgd_steps}, norm="l2", radii=tuple(s.l2_eps(m.in_shape)),
                        settings=f"{s.pgd_steps} steps, α 2.5ε/{s.pgd_steps}, random start"))
    if m.has_transfer_source:
        stages.append(Stage("transfer", "pgd", pgd, transfer=True, settings=f"PGD ({pgd_text}) on the source"))
    if m.randomised or s.eot:
        stages.append(_eot_pgd(s))
    stages += [
        Stage("cw_l2", "cw_l2", {"max_iter": s.cw_iterations, "binary_search_steps": s.cw_binary_steps,
                                 "initial_const": s.cw_initial_const, "lr": s.cw_lr},
              kind="minimal", subset=s.minimal_subset,
              settings=f"{s.cw_iterations} iterations × {s.cw_binary_steps} binary steps, c₀ {s.cw_initial_const:g}, "
                       f"lr {s.cw_lr:g}, κ 0"),
        Stage("deepfool", "deepfool", {"max_iter": s.deepfool_iterations, "max_step": s.deepfool_max_step},
              kind="minimal", subset=s.deepfool_subset,
              settings=f"{s.deepfool_iterations} iterations, overshoot 0.02"
                       + (f", steps clipped to {s.deepfool_max_step:g}" if s.deepfool_max_step else "")),
        Stage("critic_hc", "critic_hc", {"max_iter": s.critic_iterations}, kind="minimal", subset=s.minimal_subset,
              settings=f"{s.critic_iterations} iterations, steps clipped to 0.1, C = clean confidence"),
    ]
    for k in s.few_pixel_pixels:
        stages.append(Stage(f"{FEW_PIXEL_PREFIX}{k}", "few_pixel",
                            {"pixels": k, "population": s.few_pixel_population,
                             "iterations": s.few_pixel_iterations, "seed": s.seed},
                            kind="minimal", norm="l0", subset=s.few_pixel_subset,
                            settings=f"{k} pixel(s), population {s.few_pixel_population} × "
                                     f"{s.few_pixel_iterations} generations"))
    if s.attacks:
        known = [st.name for st in stages]
        unknown = sorted(set(s.attacks) - set(known))
        if unknown:
            raise ConfigError(f"unknown suite row(s) {unknown}; rows: {', '.join(known)}")
        stages = [st for st in stages if st.name in s.attacks]
    return Suite("fast", tuple(stages), cascade=False, claim=False,
                 checks=tuple(c for c in CHECK_NAMES if c != "blackbox_beats_whitebox"))


def fast_row_names() -> list[str]:
    """Every row of the fast suite (what ``--suite fast --attacks`` accepts), in the order they run: the transfer
    row needs a transfer source and EOT-PGD a randomised model or ``eot``."""
    facts = ModelFacts(10, (1, 28, 28), randomised=True, has_transfer_source=True)
    return [st.name for st in fast(EvalSettings(), facts).stages]


Preset = Callable[[EvalSettings, ModelFacts], Suite]
PRESETS: dict[str, Preset] = {"standard": standard, "adaptive": adaptive, "adaptive_rand": adaptive_rand, "rand": rand,
                               "fast": fast, "quick": quick}


def available_suites() -> list[str]:
    return list(PRESETS)


StageSpec = Stage | str | tuple[str, dict]


def custom_suite(stages: Sequence[StageSpec], *, cascade: bool = True) -> Suite:
    """A user's own list: ``Stage`` objects, attack names, or ``(attack name, options)`` pairs, run in order.
    Not a robustness claim (its budget is the user's); the AutoAttack checks run with it."""
    built = []
    for spec in stages:
        if isinstance(spec, Stage):
            built.append(spec)
        elif isinstance(spec, str):
            built.append(Stage(spec, spec, settings="defaults"))
        elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
            built.append(Stage(spec[0], spec[0], dict(spec[1]),
                               settings=", ".join(f"{k} {v}" for k, v in spec[1].items()) or "defaults"))
        else:
            raise ConfigError(f"a stage is a Stage, an attack name or an (attack name, options) pair, got {spec!r}")
    checks = AA_CHECKS if any(s.attack == "square" for s in built) else tuple(
        c for c in AA_CHECKS if c != "blackbox_beats_whitebox")
    return Suite("custom", tuple(built), cascade=cascade, claim=False, checks=checks)


def resolve_suite(suite: str | Suite | Sequence[StageSpec], settings: EvalSettings, facts: ModelFacts) -> Suite:
    """The suite to run: a preset by name (its randomised alternative on a randomised model), a Suite, or a list."""
    if isinstance(suite, Suite):
        return suite
    if isinstance(suite, str):
        if suite not in PRESETS:
            raise unknown_name("suite", suite, PRESETS)
        built = PRESETS[suite](settings, facts)
        if facts.randomised and built.if_randomised:
            return PRESETS[built.if_randomised](settings, facts)
        return built
    return custom_suite(suite)
