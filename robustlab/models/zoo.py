"""Imports every model family so that their ``@register_model`` decorators run."""

from robustlab.models import lenet, mlp, mnist_models, resnet_v1, resnet_v2, tla_cnn  # noqa: F401
from robustlab.models import randomization  # noqa: F401
from robustlab.models import noise  # noqa: F401
