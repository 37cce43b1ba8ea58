"""The jobs' tests run their jobs on the session's Ray head (tests/conftest.py's ray_head)."""
import pytest

from tests.conftest import pids, wait_for


@pytest.fixture(autouse=True)
def quiet_head(ray_head):
    """Each test starts on a quiet head: the workers of its lane's jobs before it (killed ones too) are gone.
    Ray stops a finished job's workers, and vLLM's processes, a moment after its driver exits."""
    wait_for(lambda: not pids("MapBatches") and not pids("EngineCore"), 120)
