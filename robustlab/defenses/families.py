"""Imports every defense and term module so their registration decorators run (one line per module)."""

import robustlab.defenses.feature_discriminator  # noqa: F401
import robustlab.defenses.a3t  # noqa: F401
import robustlab.defenses.adversarial  # noqa: F401
import robustlab.defenses.standard  # noqa: F401
import robustlab.defenses.at2l  # noqa: F401
import robustlab.defenses.triplet_mining  # noqa: F401
import robustlab.defenses.pool_mining  # noqa: F401
import robustlab.defenses.triplet  # noqa: F401
import robustlab.defenses.critic  # noqa: F401
import robustlab.defenses.vat  # noqa: F401
import robustlab.defenses.margin  # noqa: F401
import robustlab.defenses.tla  # noqa: F401
import robustlab.defenses.alp  # noqa: F401
import robustlab.defenses.l2p  # noqa: F401
import robustlab.defenses.pni  # noqa: F401
import robustlab.defenses.trades  # noqa: F401
import robustlab.defenses.mart  # noqa: F401
import robustlab.defenses.fgsm_rs  # noqa: F401
import robustlab.defenses.awp  # noqa: F401
