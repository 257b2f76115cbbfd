import logging
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
# test peers installed beside the environment (scripts/install.sh: their declared dependencies conflict with it)
sys.path.append(str(Path(sys.prefix) / "peers"))
os.environ.setdefault("PYTHONWARNINGS", "ignore")
logging.getLogger("torchrec").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for every test that needs it (start-up costs ~10 s on 2 cores), set up as the local Ray
    raytrain starts itself (its Ray Train settings, the lean trainer)."""
    import ray

    from raytrain.train.runner import local_runtime_env

    if not ray.is_initialized():
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=True, runtime_env=local_runtime_env())
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def without_session_ray(ray_local):
    """The session's Ray stopped for a module whose runs start their own (as `raytrain run` does): one Ray at a
    time on these machines. The session's Ray is back afterwards."""
    from raytrain.train.runner import local_runtime_env

    ray_local.shutdown()
    yield
    ray_local.shutdown()
    ray_local.init(num_cpus=8, include_dashboard=False, log_to_driver=True, runtime_env=local_runtime_env())
