"""Shared fixtures: tiny offline pipelines and a fixed reference image."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Inductor's kernel cache per CPU capability: a kernel compiled by a run at this CPU's own level, loaded by a run
# under ATEN_CPU_CAPABILITY=avx2, aborted the process (seen with the compiled score path).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / (
    f"torchinductor_attnsteer_{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}")))

# Under pytest-xdist (pyproject's addopts) every worker has a core of its own: one torch thread each, for the tests
# and for the commands they start (two threads per worker contend, and tiny models run faster on one anyway).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))  # tests/dense_reference.py


# The longest test modules, longest first (seconds of test time on a 2-core AMD EPYC, stop 34: 75, 68, 48, 47, 42,
# 27, 26, 24, 23, 21, 21, 19). pyproject's `--dist loadfile --no-loadscope-reorder` hands whole modules to the two
# workers in collection order; started first, none of them runs alone at the end while the other worker idles.
LONGEST_FIRST = ("test_toy.py", "test_docs.py", "test_distributed.py", "test_compile.py", "test_families.py",
                 "test_guard.py", "test_memory.py", "test_demo.py", "test_cli.py", "test_backend_calls.py",
                 "test_recipe_defaults.py", "test_backends.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Collect the longest modules first (a stable sort: each module keeps its own order, the others theirs)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run several times faster on one thread; two contend badly on a shared 2-core CPU.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def image() -> Image.Image:
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(64, 64, 3) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def wan_pipe():
    from attnsteer.testing.tiny import tiny_wan

    return tiny_wan()


@pytest.fixture
def run_wan(wan_pipe, image):
    """Run the tiny Wan I2V pipeline with a fixed seed; keyword arguments override the defaults."""
    from attnsteer.testing.tiny import wan_call_kwargs

    def run(**overrides):
        kwargs = wan_call_kwargs(**overrides)
        return wan_pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames[0]

    return run
