import pytest

from tests.core.cloning.tiny import ARCHS_NORMS


@pytest.fixture(params=ARCHS_NORMS, ids=lambda p: f"{p[0]}-{p[1]}")
def arch_norm(request):
    """Every architecture with every norm it supports."""
    return request.param
