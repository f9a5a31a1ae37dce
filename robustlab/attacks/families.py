"""Imports every attack module so that their ``@register_attack`` decorators run (one line per family)."""

import robustlab.attacks.fgsm  # noqa: F401
import robustlab.attacks.pgd  # noqa: F401
import robustlab.attacks.apgd  # noqa: F401
import robustlab.attacks.eot  # noqa: F401
import robustlab.attacks.cw  # noqa: F401
import robustlab.attacks.deepfool  # noqa: F401
import robustlab.attacks.critic_attack  # noqa: F401
import robustlab.attacks.few_pixel  # noqa: F401
import robustlab.attacks.square  # noqa: F401
import robustlab.attacks.fab  # noqa: F401
import robustlab.attacks.kl  # noqa: F401
