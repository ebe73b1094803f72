"""README's "Coming from oxidicom" table (issue 9, item 22): it maps the variables of every
oxidicom release users run (``CHRIS_*`` of 1.x/2.x, ``OXIDICOM_*`` of 3.x), and every oxidip
variable it names exists."""

import re
from pathlib import Path

from oxidip.config import VARIABLES

README = Path(__file__).resolve().parent.parent / "README.md"

#: oxidicom 3's settings (src/settings.rs, read with the OXIDICOM_ prefix; scp.* nested) and
#: those of 1.x/2.x (src/run_from_env.rs and README), plus the broker variable users name.
OXIDICOM_VARIABLES = (
    "OXIDICOM_AMQP_ADDRESS",
    "OXIDICOM_CELERY_BROKER",
    "OXIDICOM_FILES_ROOT",
    "OXIDICOM_QUEUE_NAME",
    "OXIDICOM_NATS_ADDRESS",
    "OXIDICOM_PROGRESS_INTERVAL",
    "OXIDICOM_SCP_AET",
    "OXIDICOM_SCP_STRICT",
    "OXIDICOM_SCP_UNCOMPRESSED_ONLY",
    "OXIDICOM_SCP_PROMISCUOUS",
    "OXIDICOM_SCP_MAX_PDU_LENGTH",
    "OXIDICOM_LISTENER_THREADS",
    "OXIDICOM_LISTENER_PORT",
    "OXIDICOM_DEV_SLEEP",
    "OXIDICOM_ROOT_SUBJECT",
    "CHRIS_URL",
    "CHRIS_USERNAME",
    "CHRIS_PASSWORD",
    "CHRIS_FILES_ROOT",
    "CHRIS_HTTP_RETRIES",
    "CHRIS_SCP_AET",
    "CHRIS_SCP_STRICT",
    "CHRIS_SCP_MAX_PDU_LENGTH",
    "CHRIS_SCP_UNCOMPRESSED_ONLY",
    "CHRIS_PACS_ADDRESS",
    "CHRIS_LISTENER_THREADS",
    "CHRIS_PUSHER_THREADS",
    "CHRIS_DB_CONNECTION",
    "CHRIS_DB_POOL",
    "CHRIS_VERBOSE",
    "PORT",
)


def table_rows() -> list[tuple[str, str]]:
    text = README.read_text()
    section = text.split("### Coming from oxidicom\n", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("oxidicom", "---"):
            rows.append((cells[0], cells[1]))
    return rows


def test_every_oxidicom_variable_has_a_row() -> None:
    rows = table_rows()
    named = {name for left, _ in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", left)}
    assert [name for name in OXIDICOM_VARIABLES if name not in named] == []
    # A variable is in one row only, and every row says what to do instead.
    all_names = [name for left, _ in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", left)]
    assert len(all_names) == len(set(all_names))
    assert all(right for _, right in rows)


def test_every_oxidip_variable_of_the_table_exists() -> None:
    known = {variable.name for variable in VARIABLES}
    mentioned = {
        name for _, right in table_rows() for name in re.findall(r"OXIDIP_[A-Z0-9_]+", right)
    }
    assert mentioned, "the table names oxidip variables"
    assert sorted(mentioned - known) == []
