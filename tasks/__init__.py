"""The activities: MAIL_RECEIVE and MAIL_RECEIVEALL as Prefect tasks.

The engine in ``tasks.pop3`` never imports Prefect; importing it alone stays light.
"""

from __future__ import annotations

__all__ = ["mail_receive", "mail_receive_all", "mail_list", "check_connection"]


def __getattr__(name: str):
    if name in __all__:
        from prefect_pop3mail.tasks import activities as module

        return getattr(module, name)
    raise AttributeError(name)
