"""Building an object from a ``_target_`` config, with its arguments' simple types checked first
and any failure one ConfigError naming the config key (``instantiate_setting``).

Hydra's ``instantiate`` checks nothing before it calls the class; a wrong type then fails deep
inside it, with a message that names no key.
"""

from __future__ import annotations

from vaelab.errors import ConfigError, require

TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def simple_types(annotation) -> set[type] | None:
    """{int, NoneType} for ``int | None`` and the like; None when the annotation is anything else."""
    import types
    import typing

    parts = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    return set(parts) if parts and all(part in TYPE_NAMES for part in parts) else None


def check_argument_types(target: str, values: dict, key: str) -> None:
    """Raise ConfigError naming ``key.<argument>`` when a value does not have the simple type
    (bool, int, float, str, or null) that the target's signature annotates for it."""
    import typing

    from hydra.utils import get_object

    try:
        found = get_object(target)
        hints = typing.get_type_hints(found.__init__ if isinstance(found, type) else found)
    except Exception:  # noqa: BLE001 - no usable annotations: the target checks its own arguments
        return
    for name, value in values.items():
        allowed = simple_types(hints.get(name)) if name in hints else None
        if allowed is None:
            continue
        if isinstance(value, bool):
            ok = bool in allowed
        elif isinstance(value, int):
            ok = int in allowed or float in allowed
        else:
            ok = type(value) in allowed
        ordered = [TYPE_NAMES[t] for t in TYPE_NAMES if t in allowed]
        require(ok, f"{key}.{name}", value, " or ".join(ordered))


def instantiate_setting(config, key: str, **kwargs):
    """``hydra.utils.instantiate(config, **kwargs)`` with its arguments' simple types checked
    first; an error raised while building it becomes a ConfigError naming ``key`` (e.g.
    ``trainer``, ``callbacks.image_panels``) and its cause."""
    from hydra.utils import instantiate

    from vaelab.errors import find_user_error, first_line

    target = config.get("_target_")
    if isinstance(target, str):
        values = {}
        for name in config:
            if name.startswith("_") or name in kwargs:
                continue
            try:
                values[name] = config[name]  # resolves this value only
            except Exception:  # noqa: BLE001 - instantiate reports a failing interpolation itself
                continue
        check_argument_types(target, values, key)
    try:
        return instantiate(config, **kwargs)
    except Exception as error:  # noqa: BLE001 - whatever the object refused, the user fixes ``key``
        user_error = find_user_error(error)
        if user_error is not None:
            raise user_error from None
        cause = error.__cause__ or error
        raise ConfigError(f"{key}: {first_line(cause)}") from error
