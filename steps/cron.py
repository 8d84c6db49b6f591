"""Cron expressions, for the step types: the grammar lives in `kernel.cron` (the workflow
format's triggers read it too); this module gives the step types its names."""

from __future__ import annotations

from kernel.cron import (
    CRON_PARTS_PER_FIELD_MAX,
    CRON_TEXT_LENGTH_MAX,
    FIELDS,
    MINUTES_PER_DAY,
    MS_PER_MINUTE,
    SYNTAX,
    CronSchedule,
    next_fire_ms,
    parse_cron,
)

__all__ = [
    "CRON_PARTS_PER_FIELD_MAX",
    "CRON_TEXT_LENGTH_MAX",
    "FIELDS",
    "MINUTES_PER_DAY",
    "MS_PER_MINUTE",
    "SYNTAX",
    "CronSchedule",
    "next_fire_ms",
    "parse_cron",
]
