"""The per-call options of the receiving tasks and flows, each defined once.

A per-call option is a keyword parameter that overrides, for one call, what the
configuration says (or narrows what a call takes). Each is one field of :class:`CallOptions`
below: its name, type, default and help, written here only. Everything else draws on it:

- :func:`takes` gives a task or flow the options it accepts as real keyword parameters: its
  signature (Prefect builds the run form and checks parameters from it) and the ``Args:``
  lines of its docstring (the form's help). The function itself takes ``**options`` and
  reads them with :meth:`CallOptions.of`, once, at its boundary.
- the ``pop3mail`` command builds its flags from the fields (:func:`cli_flag`);
- the README's table of options is :func:`options_table` (a test compares them).

Defaults are plain values that say "as the configuration says" (``"as configured"`` for a
yes/no, ``""`` for a text, ``0`` for a limit), so Prefect's form shows a plain field, never a
"type / null" switch. ``None`` is still accepted from Python and means the same. No Prefect
import here: the console command reads this module before it decides to load Prefect.
"""

from __future__ import annotations

import enum
import functools
import inspect
import re
from collections.abc import Callable, Collection, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUseDefault

from prefect_pop3mail.tasks.pop3.errors import ConfigurationError
from prefect_pop3mail.tasks.pop3.models import HeaderFilter

F = TypeVar("F", bound=Callable[..., Any])


class Switch(enum.StrEnum):
    """Yes, no, or as the configuration says. Python's True, False and None are accepted."""

    AS_CONFIGURED = "as configured"
    YES = "yes"
    NO = "no"

    @classmethod
    def _missing_(cls, value: object) -> Switch | None:
        if value is None:
            return cls.AS_CONFIGURED
        if isinstance(value, bool):
            return cls.YES if value else cls.NO
        if isinstance(value, str):
            return next((m for m in cls if m.value == value.strip().lower()), None)
        return None

    @property
    def override(self) -> bool | None:
        """The block's form of it: True, False, or None for "as the configuration says"."""
        return None if self is Switch.AS_CONFIGURED else self is Switch.YES


def _none_is_default(value: object) -> object:
    """None, as Python callers wrote before the plain defaults: the option's default."""
    if value is None:
        raise PydanticUseDefault()
    return value


_Default = BeforeValidator(_none_is_default)
# Inlined values: Prefect's forms title a $ref'd enum with the class's name and docstring.
YesNo = Annotated[Switch, WithJsonSchema({"type": "string", "enum": [m.value for m in Switch]})]
Text = Annotated[str, _Default]
Count = Annotated[int, Field(ge=0), _Default]
OnOff = Annotated[bool, _Default]


def _header_filter(header: str) -> Any:
    return Field(default="", description=f"Only messages whose {header} matches this regular "
                 "expression, ignoring case (empty: all).", json_schema_extra={"metavar": "REGEX"})


class CallOptions(BaseModel):
    """Per-call options of the receiving tasks and flows (see the module's docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    save_mail_text: YesNo = Field(
        default=Switch.AS_CONFIGURED,
        description="Save the text and HTML bodies: yes, no, or as the configuration's "
        "Save mail text says.",
    )
    save_mail_attachments: YesNo = Field(
        default=Switch.AS_CONFIGURED,
        description="Save the attachments: yes, no, or as the configuration's Save mail "
        "attachments says.",
    )
    save_directory: Text = Field(
        default="",
        description="Save under this folder or storage URL instead (empty: the "
        "configuration's Save directory).",
        json_schema_extra={"metavar": "DIR"},
    )
    max_messages: Count = Field(
        default=0,
        description="Take at most this many messages in this run (0: the configuration's "
        "Maximum messages per run, where 0 means no limit).",
        json_schema_extra={"metavar": "N"},
    )
    sender_filter: Text = _header_filter("From")
    recipient_filter: Text = _header_filter("To or Cc")
    subject_filter: Text = _header_filter("Subject")
    pipelining: OnOff = Field(
        default=True,
        description="Send commands in batches when the server offers PIPELINING (RFC 2449). "
        "Turn off for a server that offers it but does not honour it.",
    )

    @field_validator("sender_filter", "recipient_filter", "subject_filter")
    @classmethod
    def _a_regular_expression(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return pattern

    @classmethod
    def of(cls, options: Mapping[str, Any], allowed: Collection[str],
           **fixed: Any) -> CallOptions:
        """The options a task or flow was called with (its ``**options``), checked: one it
        does not take (not in ``allowed``, the names given to :func:`takes`) raises
        TypeError, as Python does; a wrong value raises a ConfigurationError naming the
        option. ``fixed``: what the function itself sets (MAIL_RECEIVE takes one message)."""
        if unknown := sorted(set(options) - set(allowed)):
            raise TypeError(f"unexpected option(s) {', '.join(unknown)}; this call takes "
                            f"{', '.join(allowed)}")
        try:
            return cls.model_validate({**options, **fixed})
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            name = ".".join(str(part) for part in first["loc"]) or "options"
            raise ConfigurationError(name, first["msg"].removeprefix("Value error, ")) from None

    def pick(self, names: Collection[str]) -> dict[str, Any]:
        """The named options, as keyword arguments for a task."""
        return {name: getattr(self, name) for name in names}

    # --- what the configuration's methods take: the merge itself happens there, once -----

    def save_overrides(self) -> dict[str, Any]:
        return {
            "save_mail_text": self.save_mail_text.override,
            "save_mail_attachments": self.save_mail_attachments.override,
            "save_directory": self.save_directory or None,
        }

    def receive_overrides(self) -> dict[str, Any]:
        return {
            "max_messages": self.max_messages or None,
            "filters": HeaderFilter(sender=self.sender_filter or None,
                                    recipient=self.recipient_filter or None,
                                    subject=self.subject_filter or None),
            "pipelining": self.pipelining,
        }


OPTION_NAMES = tuple(CallOptions.model_fields)

#: Which options each task takes, and the flow that runs it: MAIL_RECEIVE (one message),
#: MAIL_RECEIVEALL (and ``pop3mail receive``), POP3_LIST (the dry run).
RECEIVE_ALL = OPTION_NAMES
RECEIVE_ONE = tuple(name for name in RECEIVE_ALL if name != "max_messages")
LIST = ("max_messages", "sender_filter", "recipient_filter", "subject_filter", "pipelining")
#: The many-mailboxes flow: a limit for each mailbox.
MANY = ("max_messages",)


def _field(name: str) -> FieldInfo:
    if name not in CallOptions.model_fields:
        raise ValueError(f"no per-call option named {name!r}; they are {', '.join(OPTION_NAMES)}")
    return CallOptions.model_fields[name]


def annotation(name: str) -> Any:
    """The option's type as a parameter: its constraints kept (Annotated), its help not (the
    docstring carries that, as for every other parameter)."""
    field = _field(name)
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


# --- tasks and flows --------------------------------------------------------------------


def takes(*names: str) -> Callable[[F], F]:
    """Give ``fn(configuration, **options)`` the named options as keyword-only parameters.

    Sets ``__signature__`` (what Prefect's run form, its parameter checks and ``help()``
    read) and adds each option to the ``Args:`` section of the docstring. The function
    itself still receives ``**options``: it reads them with :meth:`CallOptions.of`.
    """
    ordered = [name for name in OPTION_NAMES if name in names]
    if len(ordered) != len(names):
        unknown = sorted(set(names) - set(OPTION_NAMES))
        raise ValueError(f"unknown or repeated per-call options: {unknown or names}")

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        fixed = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                   default=_field(name).default, annotation=annotation(name))
                 for name in ordered]
        fn.__signature__ = signature.replace(parameters=fixed + added)  # type: ignore[attr-defined]
        # Older Prefect (3.4) checks a flow with pydantic.v1, which reads the annotations.
        fn.__annotations__.update({p.name: p.annotation for p in added})
        fn.__doc__ = _with_args(inspect.getdoc(fn) or "", ordered)
        return fn

    return decorate


def _with_args(doc: str, names: list[str]) -> str:
    """The docstring with an ``Args:`` entry per option after the ones written out."""
    lines = doc.splitlines()
    try:
        at = lines.index("Args:") + 1
    except ValueError:
        raise ValueError("a function that takes per-call options needs an Args: section") \
            from None
    while at < len(lines) and lines[at].startswith(" "):
        at += 1
    # One line each: Prefect keeps a wrapped entry's line breaks in the form's help.
    entries = [f"    {name}: {_field(name).description}" for name in names]
    return "\n".join(lines[:at] + entries + lines[at:])


# --- the console command ------------------------------------------------------------------


def cli_flag(name: str) -> tuple[str, dict[str, Any]]:
    """The ``pop3mail`` flag of an option and argparse's keywords for it; ``dest`` is the
    option's name and the value stays unset (None) unless given."""
    field = _field(name)
    flag = "--" + name.replace("_", "-")
    keywords: dict[str, Any] = {"dest": name, "help": _cli_help(field.description or "")}
    if field.annotation is Switch:
        keywords.update(choices=[Switch.YES.value, Switch.NO.value])
    elif field.annotation is bool:
        flag = ("--no-" if field.default else "--") + name.replace("_", "-")
        keywords.update(action="store_const", const=not field.default)
    else:
        keywords.update(type=functools.partial(_parsed, name), metavar=_metavar(field))
    return flag, keywords


def _cli_help(description: str) -> str:
    # argparse expands %: "100%" in a help text would break --help.
    return description.replace("%", "%%")


def _metavar(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    return str(extra.get("metavar", "VALUE")) if isinstance(extra, dict) else "VALUE"


def _parsed(name: str, text: str) -> Any:
    """A flag's text as the option's value, checked as the model checks it; argparse turns
    the error into a usage error."""
    import argparse

    try:
        return getattr(CallOptions.model_validate({name: text}), name)
    except ValidationError as exc:
        message = exc.errors(include_url=False, include_input=False)[0]["msg"]
        raise argparse.ArgumentTypeError(message.removeprefix("Value error, ")) from None


# --- the README ---------------------------------------------------------------------------


def options_table() -> str:
    """The README's table of options (``python -m prefect_pop3mail.tasks.options``)."""
    rows = ["| option | default | `pop3mail receive` | meaning |", "|---|---|---|---|"]
    for name, field in CallOptions.model_fields.items():
        default = field.default.value if isinstance(field.default, Switch) else field.default
        flag, keywords = cli_flag(name)
        if "choices" in keywords:
            flag += " " + "/".join(keywords["choices"])
        elif "metavar" in keywords:
            flag += " " + keywords["metavar"]
        rows.append(f"| `{name}` | `{default!r}` | `{flag}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(options_table())
