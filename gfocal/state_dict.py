"""Framework-neutral checks on state dicts given as {name: numpy array}."""


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message lists every offending key."""


def diff_state_dicts(expected_shapes, given, source):
    """Raise CheckpointError naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected_shapes) - set(given))
    unexpected = sorted(set(given) - set(expected_shapes))
    misshaped = sorted(f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(s)}"
                       for k, s in expected_shapes.items()
                       if k in given and tuple(given[k].shape) != tuple(s))
    if missing or unexpected or misshaped:
        parts = [f"{source} does not fit the model:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected),
                            ("mis-shaped", misshaped)):
            if keys:
                parts.append(f"  {len(keys)} {title}: " + ", ".join(keys))
        raise CheckpointError("\n".join(parts))
