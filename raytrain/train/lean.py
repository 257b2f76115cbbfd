"""Ray Train on the local Ray raytrain starts itself, without the helper actors that Ray never uses.

For every run Ray Train V2 starts, besides its controller and the workers, an autoscaling coordinator (it asks a
cluster's autoscaler for the workers' resources), a placement-group cleaner (a detached actor that removes the
worker group's placement group if the controller dies without doing so) and a dataset manager (it serves Ray
Datasets passed to the trainer). Each is a Python process importing Ray, started one after another while the
workers start. On raytrain's own local Ray none of them has work: there is no autoscaler, the whole Ray ends with
the driver (a controller that dies before it does takes its placement group with it, Ray's lifetime rule for a
non-detached creator, and a tune run releases its trials' placement groups itself, `tune/resources.py`), and
raytrain never passes Ray Datasets (each worker streams its own row groups). Leaving them out took a do-nothing
2-worker ``TorchTrainer.fit()`` from 15-16 s to 9.5-10 s on 2 cores (``benchmarks/startup.py``).

The hooks are Ray Train internals of the pinned Ray (2.60), listed in ``raytrain.ray_internals``: where they are
not found the stock ``TorchTrainer`` runs, helpers and all, as it does on any Ray raytrain did not start
(``RAYTRAIN_LOCAL_RAY`` unset; a user's "0" keeps the helpers on a local Ray too).
"""

from __future__ import annotations

import os

from ..log import get_logger
from .resources import LOCAL_RAY_ENV

log = get_logger(__name__)

try:
    import ray.train.torch
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    _HOOKS = ray.train.torch.TorchTrainer is TorchTrainer and all(  # Ray Train V2 (RAY_TRAIN_V2_ENABLED) and its hooks
        hasattr(TorchTrainer, m) for m in ("_create_default_callbacks", "_initialize_and_run_controller"))
except ImportError:  # another Ray than the pinned one
    _HOOKS = False


if _HOOKS:
    class _LocalFixedScalingPolicy(FixedScalingPolicy):
        """A fixed-size worker group that asks no autoscaler for resources (the coordinator actor is never made)."""

        def after_controller_start(self, train_run_context) -> None:
            pass

        def _maybe_send_resource_request(self) -> None:
            pass

        def _send_resource_request(self) -> None:
            pass

        def _cancel_resource_request(self) -> None:
            pass

    class LocalTorchTrainer(TorchTrainer):
        """``TorchTrainer`` without the autoscaling coordinator, the placement-group cleaner and, when no Ray Dataset
        is passed, the dataset manager."""

        def _create_default_callbacks(self):
            drop: tuple[type, ...] = (PlacementGroupCleanerCallback,) + (() if self.datasets else (DatasetsCallback,))
            return [cb for cb in super()._create_default_callbacks() if type(cb) not in drop]

        def _initialize_and_run_controller(self, **kwargs):
            policy = kwargs.get("scaling_policy")
            if type(policy) is FixedScalingPolicy:
                kwargs["scaling_policy"] = _LocalFixedScalingPolicy(policy.scaling_config)
            return super()._initialize_and_run_controller(**kwargs)


def trainer_class() -> type:
    """The TorchTrainer class for a run in this process: the lean one on raytrain's own local Ray."""
    from ray.train.torch import TorchTrainer as Stock

    if os.environ.get(LOCAL_RAY_ENV) != "1":
        return Stock
    if not _HOOKS:
        log.debug("Ray Train's internals differ from the pinned Ray's: its helper actors stay on")
        return Stock
    return LocalTorchTrainer
