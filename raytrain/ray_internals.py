"""Every private Ray API raytrain relies on (Ray is pinned to 2.60.0), why, and what runs when it is gone.

raytrain uses Ray's public APIs except for these; each use falls back to the public behaviour when the internal is
missing, so a Ray upgrade that removes or changes one costs speed or console quietness, not results.
``tests/unit/test_ray_internals.py`` imports each and fails naming the first one a Ray upgrade removed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Internal:
    module: str
    names: tuple[str, ...]  # attributes of the module; "Class.method" for a method
    user: str  # the raytrain module that uses it
    why: str
    fallback: str


INTERNALS = (
    Internal("ray.train.v2.torch.torch_trainer",
             ("TorchTrainer._create_default_callbacks", "TorchTrainer._initialize_and_run_controller"),
             "raytrain.train.lean",
             "a local run's trainer drops the helper actors only a cluster uses (about 5 s of a 2-worker start)",
             "the stock TorchTrainer, helpers and all"),
    Internal("ray.train.v2._internal.callbacks.datasets", ("DatasetsCallback",), "raytrain.train.lean",
             "no dataset manager actor when the run passes no Ray Dataset", "the stock TorchTrainer"),
    Internal("ray.train.v2._internal.callbacks.placement_group_callback", ("PlacementGroupCleanerCallback",),
             "raytrain.train.lean", "no detached placement-group cleaner actor on a local Ray",
             "the stock TorchTrainer"),
    Internal("ray.train.v2._internal.execution.scaling_policy",
             ("FixedScalingPolicy", "FixedScalingPolicy.after_controller_start",
              "FixedScalingPolicy._maybe_send_resource_request", "FixedScalingPolicy._send_resource_request",
              "FixedScalingPolicy._cancel_resource_request"),
             "raytrain.train.lean", "no autoscaling coordinator actor (there is no autoscaler on a local Ray)",
             "the stock TorchTrainer"),
    Internal("ray._private.worker", ("global_worker_stdstream_dispatcher",), "raytrain.console",
             "worker output goes through raytrain's console filter instead of Ray's printer",
             "Ray's own printer (every worker line on the console)"),
    Internal("ray._private.authentication.authentication_token_setup", (), "raytrain.console",
             "the logger whose token-authentication notice is demoted to the run's log",
             "the notice stays on the console"),
    Internal("ray.train.v2._internal.constants", ("ENV_VARS_TO_PROPAGATE", "DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE"),
             "raytrain.warm_workers", "the runtime env a run's Ray Train actors get, which warm processes must share",
             "no warm worker processes (a logged warning; runs start at a cold worker's speed)"),
    Internal("ray._common.constants", ("RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR",), "raytrain.warm_workers",
             "the variable Ray Train's controller sets in its runtime env", "no warm worker processes"),
    Internal("ray._private.grpc_utils", ("init_grpc_channel",), "raytrain.warm_workers",
             "a gRPC channel to the raylet with the cluster's token", "no warm worker processes"),
    Internal("ray._private.utils", ("get_runtime_env_info",), "raytrain.warm_workers",
             "the runtime env, serialized as Ray's raylet hashes it", "no warm worker processes"),
    Internal("ray.core.generated.node_manager_pb2", ("PrestartWorkersRequest",), "raytrain.warm_workers",
             "the raylet's PrestartWorkers call: idle worker processes started ahead of a run", "no warm worker processes"),
    Internal("ray.core.generated.node_manager_pb2_grpc", ("NodeManagerServiceStub",), "raytrain.warm_workers",
             "the raylet's gRPC service", "no warm worker processes"),
)


def missing() -> list[str]:
    """Each internal this Ray lacks, named with its user and fallback; empty on the pinned Ray."""
    out = []
    for it in INTERNALS:
        try:
            module = importlib.import_module(it.module)
        except ImportError as e:
            out.append(f"{it.module}: not importable ({e}); {it.user} falls back to {it.fallback}")
            continue
        for name in it.names:
            obj: object = module
            for part in name.split("."):
                obj = getattr(obj, part, None)
                if obj is None:
                    break
            if obj is None:
                out.append(f"{it.module}.{name}: gone; {it.user} falls back to {it.fallback}")
    return out
