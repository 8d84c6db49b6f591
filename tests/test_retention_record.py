"""The retention log's record (dagnats/runtime/retention.py `PurgedRun`): its
`history_last_seq` is the last history sequence purged, stored under the key the record had
from the start (`history_messages`, a name that said a count), so records already in
`DAGNATS_RETENTION` read as they did and new ones are read by older code; the CLI shows it by
its name (`dagnats run delete --json`, `dagnats run list --purged --json`)."""

from __future__ import annotations

import msgspec

from dagnats.runtime.retention import PurgedRun

STORED = (
    b'{"run_id":"r1","workflow":"quick","status":"completed","started_at_ms":1000,'
    b'"ended_at_ms":3000,"purged_at_ms":9000,"history_messages":42,"reason":"run delete"}'
)  # (a record as the retention log held it before the field was renamed)


def test_a_stored_record_reads_its_last_sequence_and_is_stored_under_the_same_key() -> None:
    record = msgspec.json.decode(STORED, type=PurgedRun)
    assert record.history_last_seq == 42
    assert msgspec.json.encode(record) == STORED
    assert msgspec.json.decode(msgspec.json.encode(record), type=PurgedRun) == record


def test_the_record_is_shown_by_its_fields_names() -> None:
    shown = msgspec.json.decode(STORED, type=PurgedRun).as_json()
    assert shown["history_last_seq"] == 42, shown
    assert "history_messages" not in shown, shown
    assert shown["ended_at_ms"] == 3000 and shown["reason"] == "run delete", shown
