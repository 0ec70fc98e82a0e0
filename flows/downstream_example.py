"""An example downstream step, run by the ``pop3mail.message.received`` event trigger in
``deployments/prefect.yaml``: it takes the saved paths from the event and records what
arrived - each saved file's size and SHA-256 - in a manifest beside the message and in a
table artifact. Replace its body with your own processing (parse the CSV, file the PDF...).

It is idempotent by the message's id (``ReceivedMail.id``, the event's ``id``): a message
can be announced again (``replay_saved_mail`` marks those events ``replay: true``, and a
run that could not confirm its events announces them again), so the step records the id
with what it did, and a message whose id it has recorded already is not processed twice.
Keep such a record wherever your step's effect is (here the manifest beside the message; a
database's unique key on the id, an "already filed" table...), and check it first.

An event's paths are not trusted: anyone who may emit events could name any file. The flow
loads the configuration the event names and reads and writes only inside a message folder
under that configuration's save directory (symbolic links resolved, the hidden state
folder excluded).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from prefect_pop3mail.tasks.activities import resolve_configuration
from prefect_pop3mail.tasks.artifacts import artifact_key
from prefect_pop3mail.tasks.pop3.errors import ConfigurationError
from prefect_pop3mail.tasks.pop3.locations import is_remote, local_path

MANIFEST_NAME = "received-files.json"


def _describe(path: Path, role: str) -> dict:
    """Size and SHA-256 of one saved file, read in chunks (attachments can be large)."""
    if not path.is_file():
        raise FileNotFoundError(f"{role}: the saved file {path} is missing")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"role": role, "name": path.name, "path": str(path), "size": path.stat().st_size,
            "sha256": digest.hexdigest()}


def _save_directory(configuration: str) -> Path:
    """The configuration's save directory, resolved: the only place this flow touches."""
    if not configuration.strip():
        raise ConfigurationError(
            "configuration", "required: the POP3 Mail Configuration that saved the message"
        )
    directory = resolve_configuration(configuration).save_directory
    if not directory:
        raise ConfigurationError("save_directory", f"{configuration!r} has no save directory")
    if is_remote(directory):
        raise ConfigurationError("save_directory", "this example reads a local save directory")
    return local_path(directory).resolve()


def _inside(parent: Path, path: str, name: str, configuration: str) -> Path:
    """``path`` resolved, refused unless it lies strictly within ``parent`` and outside
    hidden folders (the journal's state folder, partial files)."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_relative_to(parent) or resolved == parent or any(
        part.startswith(".") for part in resolved.relative_to(parent).parts
    ):
        raise ValueError(
            f"{name}: {path} is not in a message folder under the save directory of "
            f"{configuration!r} ({parent}); refusing to read it"
        )
    return resolved


def _recorded(manifest_path: Path, mail_id: str) -> dict | None:
    """The manifest recorded for the message ``mail_id`` already, if any (a message
    without an id is recorded every time)."""
    if not mail_id:
        return None
    try:
        recorded = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # none yet, or torn: record it (again)
    return recorded if isinstance(recorded, dict) and recorded.get("id") == mail_id else None


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


@flow(name="record-received-mail", log_prints=True)
def record_received_mail(
    folder: str,
    original_path: str | None = None,
    text_path: str | None = None,
    html_path: str | None = None,
    attachments: list[str] | None = None,
    configuration: str = "",
    subject: str = "",
    mail_id: str = "",
    replay: bool = False,
) -> dict:
    """Record the files saved for one received message.

    Args:
        folder: The message's folder (event payload ``folder``).
        original_path: The saved original message.eml, if kept.
        text_path: The saved text body, if any.
        html_path: The saved HTML body, if any.
        attachments: The saved attachments' paths.
        configuration: The POP3 Mail Configuration the message came from (event payload
            ``configuration``). Only paths under its save directory are read.
        subject: The message's subject, for the record.
        mail_id: The message's id (event payload ``id``): what makes the step idempotent.
        replay: True when the event is a replay's (event payload ``replay``).

    Returns:
        The manifest: configuration, subject, folder, the message's id and one entry per
        saved file. It is also written to ``received-files.json`` in the message's folder.
        For a message recorded already (the same id), the manifest as recorded then, with
        ``already_recorded``: True.
    """
    message_folder = _inside(_save_directory(configuration), folder, "folder", configuration)
    manifest_path = message_folder / MANIFEST_NAME
    if recorded := _recorded(manifest_path, mail_id):  # idempotent: once per message id
        get_run_logger().info("%s: message %s was recorded already%s; nothing to do",
                              subject or "(no subject)", mail_id,
                              " (a replay)" if replay else "")
        return {**recorded, "already_recorded": True}
    named = [(original_path, "original", "original_path"), (text_path, "text", "text_path"),
             (html_path, "html", "html_path")]
    named += [(path, "attachment", "attachments") for path in attachments or []]
    files = [_describe(_inside(message_folder, path, field, configuration), role)
             for path, role, field in named if path]
    if any(Path(f["path"]) == manifest_path for f in files):
        # Never overwrite received mail with our record.
        raise ValueError(f"folder: an attachment is named {MANIFEST_NAME}; not overwriting it")
    manifest = {
        "configuration": configuration,
        "subject": subject,
        "folder": str(message_folder),
        "id": mail_id,
        "attachment_count": sum(f["role"] == "attachment" for f in files),
        "attachment_bytes": sum(f["size"] for f in files if f["role"] == "attachment"),
        "files": files,
    }
    _write_atomically(manifest_path, json.dumps(manifest, indent=2))
    create_table_artifact(
        key=artifact_key(configuration or "unknown", "downstream"),
        table=[{k: f[k] for k in ("role", "name", "size", "sha256")} for f in files],
        description=f"Files saved for {subject or '(no subject)'} from {configuration}",
    )
    get_run_logger().info(
        "%s: %d attachment(s), %d bytes, manifest %s",
        subject or "(no subject)",
        manifest["attachment_count"],
        manifest["attachment_bytes"],
        manifest_path,
    )
    return manifest
