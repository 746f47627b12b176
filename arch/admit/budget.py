"""Budget windows: a key's spend is counted per calendar day, ISO week or month (UTC)."""
import datetime as dt


def budget_window(per, now):
    """(window name, reset time as a UNIX timestamp) for the window `now` falls in."""
    day = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if per == "day":
        start, end = day, day + dt.timedelta(days=1)
    elif per == "week":
        start = day - dt.timedelta(days=day.weekday())
        end = start + dt.timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    return f"{per}{start:%Y%m%d}", end.timestamp()
