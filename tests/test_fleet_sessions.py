"""The checks of the scale test and benchmark, on Dovecot logs made up here: two sessions of
one mailbox at once are found, the peak is counted right, and lines that two Dovecot
processes wrote out of order still make whole sessions."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fleet import Session, overlapping, peak_concurrent, sessions

T0 = datetime(2026, 12, 5, 0, 0, 0)


def stamp(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S.%f")


def login(at: float, user: str, sid: str, port: int = 40000) -> str:
    return (f"{stamp(at)} pop3-login: Info: Login: user=<{user}>, method=PLAIN, rip=127.0.0.1, "
            f"rport={port}, lip=127.0.0.1, mpid=1, TLS, session=<{sid}>")


def logout(at: float, user: str, sid: str, reason: str = "Logged out") -> str:
    return (f"{stamp(at)} pop3({user})<1><{sid}>: Info: Disconnected: {reason} top=0/0, "
            "retr=0/0, del=0/0, size=0")


def test_a_session_is_an_interval_with_its_port_and_reason():
    log = "\n".join([login(1.0, "u1", "a", 4242), logout(2.5, "u1", "a", "Connection closed")])
    [session] = sessions(log)
    assert (session.user, session.port, session.reason) == ("u1", 4242, "Connection closed")
    assert session.end - session.start == 2.5 - 1.0


def test_two_sessions_of_one_mailbox_at_once_are_found_and_one_after_the_other_are_not():
    at_once = "\n".join([login(1, "u1", "a"), login(2, "u1", "b"), logout(3, "u1", "a"),
                         logout(4, "u1", "b")])
    assert [(x.id, y.id) for x, y in overlapping(sessions(at_once))] == [("a", "b")]
    in_turn = "\n".join([login(1, "u1", "a"), logout(2, "u1", "a"), login(2.1, "u1", "b"),
                         logout(3, "u1", "b"), login(1.5, "u2", "c"), logout(2.5, "u2", "c")])
    assert overlapping(sessions(in_turn)) == []
    assert peak_concurrent(sessions(in_turn)) == 2


def test_a_session_still_open_overlaps_the_next_one():
    log = "\n".join([login(1, "u1", "a"), login(5, "u1", "b"), logout(6, "u1", "b")])
    found = sessions(log)
    assert found[0].end is None
    assert len(overlapping(found)) == 1


def test_a_logout_written_before_its_login_still_closes_the_session():
    log = "\n".join([logout(1.000001, "u1", "a"), login(1.000002, "u1", "a")])
    [session] = sessions(log)
    assert session.end == session.start and session.reason == "Logged out"


def test_other_users_can_be_left_out():
    log = "\n".join([login(1, "u1", "a"), logout(2, "u1", "a"), login(1, "u2", "b")])
    assert [s.user for s in sessions(log, {"u1"})] == ["u1"]


intervals = st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]),
                               st.integers(0, 50), st.integers(1, 20)), max_size=25)


@settings(max_examples=200, deadline=None)
@given(intervals)
def test_overlaps_and_peak_agree_with_counting_every_moment(spans):
    found = [Session(user, start / 10, 0, end=(start + length) / 10, id=str(i))
             for i, (user, start, length) in enumerate(spans)]
    moments = [t / 20 for t in range(0, 1500)]  # half-steps between the starts and ends

    def open_at(t, user=None):
        return [s for s in found if s.start <= t < s.end and (user is None or s.user == user)]

    assert peak_concurrent(found) == max((len(open_at(t)) for t in moments), default=0)
    users_twice = any(len(open_at(t, user)) > 1 for t in moments for user in ("u1", "u2", "u3"))
    assert bool(overlapping(found)) == users_twice
