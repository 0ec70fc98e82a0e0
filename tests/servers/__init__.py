"""The real servers the tests start, and the check that keeps their markers complete.

Each server's start calls :func:`started`: while a test runs, it fails that test unless the
test carries one of the server's markers (pyproject.toml lists them), so ``make test-fast``,
which leaves every marked test out, never starts a real server. The fixtures that hand out
a running server are checked the same way, before any test runs (tests/conftest.py).
"""

from __future__ import annotations

#: The test running now (set by tests/conftest.py), or None outside pytest (bench/).
current_test = None
#: Tests caught starting a server without its marker: the run fails even if one of them
#: swallowed the error.
unmarked: list[str] = []


class MarkerMissing(Exception):
    """A test starts a real server but does not carry the server's marker."""


def missing_marker(node, server: str, markers: tuple[str, ...]) -> str | None:
    """Why ``node`` (a test) may not use ``server``, or None when it carries a marker of it."""
    if node is None or any(node.get_closest_marker(marker) for marker in markers):
        return None
    wanted = " or ".join(f"@pytest.mark.{marker}" for marker in markers)
    return (f"{node.nodeid} uses {server} but is not marked {wanted}: mark it, so that "
            "`make test-fast` leaves it out")


def require_marker(node, server: str, *markers: str) -> None:
    """Fail ``node`` unless it carries one of ``markers`` (by default the server's name)."""
    if problem := missing_marker(node, server, markers or (server,)):
        unmarked.append(problem)
        raise MarkerMissing(problem)


def started(server: str, *markers: str) -> None:
    """Called by each real server as it starts: the running test must carry its marker."""
    require_marker(current_test, server, *markers)
