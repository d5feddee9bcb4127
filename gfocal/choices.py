"""An option that names one of a fixed set of values (--amp's precisions, --tuning's speed
settings): checked in one place, with one message shape."""


def checked(value, choices, error, where, kind):
    """`value` if it is one of `choices`, else `error` (an exception class) naming `where`
    and what a value should be (`kind`: "a precision", ...)."""
    if value not in choices:
        raise error(f"{where} = {value!r} is not {kind} (choose {', '.join(choices)})")
    return value


def checked_list(text, check, where):
    """A comma-separated list (a pytest option), each item passed through check(item, where)."""
    return [check(item.strip(), where) for item in text.split(",") if item.strip()]
