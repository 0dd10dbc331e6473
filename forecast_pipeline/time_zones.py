"""Time zone names as every setting and schedule takes them: IANA zones, the same on every host."""

from __future__ import annotations

import zoneinfo

# Names the tz database files carry that are not zones to schedule by: localtime is the evaluating
# host's own zone (the CLI's and the daemon's can differ), Factory has no offset of its own,
# posixrules is a template; right/ zones count leap seconds (27 s off), posix/ repeats the names.
NOT_ZONES = ("localtime", "Factory", "posixrules")
NOT_ZONE_PREFIXES = ("right/", "posix/")


def iana_zone(name: str) -> zoneinfo.ZoneInfo:
    """The zone called ``name``; ValueError if it is not one."""
    if name in NOT_ZONES or name.startswith(NOT_ZONE_PREFIXES):
        raise ValueError(f"{name!r} is not an IANA time zone")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:  # "Europe" is a directory: OSError
        raise ValueError(f"{name!r} is not an IANA time zone") from exc
