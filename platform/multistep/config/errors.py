"""Config errors: ConfigError (one line, exit 2) and the one-line description of a pydantic ValidationError."""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError


class ConfigError(ValueError):
    """Bad user input; the CLI prints str(e) on one line and exits 2."""


def sub_field_error(field: str, value, msg: str) -> ValidationError:
    """An error at a field of the model being validated (e.g. method.guidance), raised from the enclosing model."""
    return ValidationError.from_exception_data(
        "field",
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", msg.replace("{", "(").replace("}", ")")),
                loc=(field,),
                input=value,
            )
        ],
    )


_UNION_TAGS = (
    "constant",
    "loglinear",
    "cm_sqrt",
    "ict_doubling",
    "unet",
    "mlp",
)  # discriminator values pydantic puts in locations


def describe(err: ValidationError, prefix: str = "") -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"] if not (isinstance(x, str) and (x in _UNION_TAGS or x == "[key]")))
    loc = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(top level)"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in e and e["type"] not in ("missing", "value_error") and not isinstance(e["input"], (dict, list)):
        msg += f" (got {e['input']!r})"
    return f"{loc}: {msg}"


def first_line(e: Exception, limit: int = 300) -> str:
    """An exception as one short line: its message's first line (or its type's name), without a final full stop."""
    text = str(e).strip()
    return (text.splitlines()[0][:limit] if text else type(e).__name__).rstrip(".")
